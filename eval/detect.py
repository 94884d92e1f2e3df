"""Faces and their five landmarks in photos (OpenCV's YuNet detector), and the aligned 112x112 crops.

The detector runs through OpenCV's own API, `cv2.FaceDetectorYN`, on a YuNet ONNX model from OpenCV's model
zoo (`face_detection_yunet_2023mar.onnx`, MIT licence). Its five landmarks come in the order of the ArcFace
template (the eye, then the mouth corner, on the image's left first), so `eval.align.align_face` takes them
as they are.

The model file is found, in this order: a path given by the caller (`--detector-model`), the environment
variable TRANSFACE_DETECTOR_MODEL, or the copy that `download_detector_model` put in the cache folder
(`$XDG_CACHE_HOME/transface`, else `~/.cache/transface`) after checking its pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.align import align_face
from utils.decode import read_image
from utils.errors import UserError
from utils.files import atomic_write_bytes, cache_folder, check_regular_file
from utils.images import IMAGE_SIZE
from utils.opencv import cv2

DETECTOR_ENV = "TRANSFACE_DETECTOR_MODEL"
ZOO_PAGE = "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet"
ZOO_FILE = "face_detection_yunet_2023mar.onnx"
ZOO_URL = f"https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/{ZOO_FILE}"
ZOO_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"  # the zoo's Git LFS pointer
DOWNLOAD_TIMEOUT_S = 30
SCORE_THRESHOLD = 0.7
MAX_SIDE = 1280  # larger photos are detected on a downscaled copy (landmarks are mapped back)
PROBE_SIDE = 64  # the blank image a loaded detector must run on, so another ONNX model fails at load


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the photo it was found in."""

    box: np.ndarray  # [4] float32: x, y (top-left corner), width, height
    landmarks: np.ndarray  # [5, 2] float32 (x, y): eyes, nose tip, mouth corners, image-left first
    score: float  # detector confidence in [0, 1]

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    def describe(self) -> str:
        x, y, width, height = (round(float(value)) for value in self.box)
        return f"face at x={x} y={y} w={width} h={height} (score {self.score:.2f})"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_model_message() -> str:
    return (f"no face detector model given; download {ZOO_FILE} from OpenCV's model zoo ({ZOO_PAGE}) and pass "
            f"--detector-model PATH (or set {DETECTOR_ENV}=PATH), or add --download-detector to fetch it into "
            f"{cache_folder()}.")


def find_detector_model(path: str | os.PathLike | None = None) -> Path:
    """The YuNet model file: `path`, else $TRANSFACE_DETECTOR_MODEL, else the verified cached download.

    Raises UserError when a given file does not exist, or when there is none, saying where to get it.
    """
    given = path or os.environ.get(DETECTOR_ENV)
    if given:
        return check_regular_file(given, "face detector model", f"download {ZOO_FILE} from {ZOO_PAGE} and pass "
                                  "its path")
    cached = cache_folder() / ZOO_FILE
    if cached.is_file() and sha256_of(cached) == ZOO_SHA256:
        return cached
    raise UserError(missing_model_message())


def download_detector_model(url: str = ZOO_URL, sha256: str = ZOO_SHA256,
                            folder: str | os.PathLike | None = None) -> Path:
    """Fetch the model at `url` into `folder` (default: the cache folder) unless a verified copy is there.

    The bytes must have the SHA-256 `sha256`; the file is written atomically. Raises UserError when the
    download fails (offline) or the checksum differs. Returns the file's path.
    """
    folder = Path(folder) if folder is not None else cache_folder()
    target = folder / url.rsplit("/", 1)[-1]
    if target.is_file() and sha256_of(target) == sha256:
        return target
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"could not download {url} ({reason}); on a machine without internet access, download "
                        f"{ZOO_FILE} elsewhere and pass --detector-model PATH.") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{url} has SHA-256 {digest}, not the pinned {sha256}; the download is damaged or the "
                        "file changed: download it by hand and pass --detector-model PATH.")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target


class FaceDetector:
    """YuNet through `cv2.FaceDetectorYN`: RGB photo -> faces, largest first.

    Args:
        model_path: the YuNet ONNX file (see `find_detector_model`).
        score_threshold: faces scored below it are dropped.
        max_side: photos whose longer side exceeds it are detected on a copy downscaled to it.
    """

    def __init__(self, model_path: str | os.PathLike, score_threshold: float = SCORE_THRESHOLD,
                 max_side: int = MAX_SIDE):
        self.max_side = max_side
        logging = cv2.utils.logging
        level = logging.getLogLevel()
        # OpenCV 5 warns on every creation that its new engine ignores the (default) target; say nothing.
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)
        try:
            self.net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold)
            self.detect(np.zeros((PROBE_SIDE, PROBE_SIDE, 3), np.uint8))  # another ONNX model fails here
        except (cv2.error, IndexError, ValueError) as exc:
            raise UserError(f"'{model_path}' is not a YuNet face detector model OpenCV can load and run; "
                            f"download {ZOO_FILE} from {ZOO_PAGE}.") from exc
        finally:
            logging.setLogLevel(level)

    def detect(self, photo: np.ndarray) -> list[Face]:
        """Faces in `photo` (H x W x 3 uint8 RGB), sorted by box area, largest first; [] when none."""
        height, width = photo.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        image = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)  # YuNet was trained on BGR
        if scale < 1.0:
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        self.net.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self.net.detect(image)  # [F, 15]: box (4), landmarks (10), score; None when F = 0
        if rows is None:
            return []
        faces = [Face(box=(row[:4] / scale).astype(np.float32),
                      landmarks=(row[4:14] / scale).reshape(5, 2).astype(np.float32),
                      score=float(row[14])) for row in rows]
        return sorted(faces, key=lambda face: face.area, reverse=True)


def load_detector(model_path: str | os.PathLike | None = None, download: bool = False) -> FaceDetector:
    """The detector on `model_path`, else on the file `find_detector_model` finds; with `download` and no
    path, on the cached download (fetched first when missing)."""
    if download and not model_path:
        return FaceDetector(download_detector_model())
    return FaceDetector(find_detector_model(model_path))


def read_photo(photo: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A photo as H x W x 3 uint8 RGB: a file (EXIF orientation applied) or an array passed through.

    Raises UserError for an unreadable file or an array that is not H x W x 3 uint8.
    """
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise UserError(f"a photo array must be H x W x 3 uint8 RGB, got shape {photo.shape} and dtype "
                            f"{photo.dtype}.")
        return photo
    return read_image(photo)


def align_largest(detector: FaceDetector, photo: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, Face]:
    """(aligned crop 112 x 112 x 3 uint8 RGB, detection) of the largest face of `photo` (a file or an
    RGB array, see `read_photo`). Raises UserError when it has no face."""
    image = read_photo(photo)
    faces = detector.detect(image)
    if not faces:
        name = "the photo array" if isinstance(photo, np.ndarray) else f"'{photo}'"
        raise UserError(f"no face found in {name}; use a photo where a face is clearly visible.")
    return align_faces(image, faces[:1])[0], faces[0]


def align_faces(photo: np.ndarray, faces: list[Face]) -> np.ndarray:
    """Aligned crops [F, 112, 112, 3] uint8 RGB of `faces` in `photo` (H x W x 3 RGB)."""
    crops = [align_face(photo, face.landmarks, IMAGE_SIZE) for face in faces]
    return np.stack(crops) if crops else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


__all__ = [
    "DETECTOR_ENV",
    "ZOO_FILE",
    "ZOO_SHA256",
    "ZOO_URL",
    "Face",
    "FaceDetector",
    "align_faces",
    "download_detector_model",
    "find_detector_model",
    "read_photo",
]
