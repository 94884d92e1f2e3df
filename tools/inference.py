"""Face embeddings for image files from a PyTorch checkpoint or an ONNX model: compare two faces, embed a folder.

Inputs are aligned 112x112 face crops, images of any size with their 5 landmarks (left eye, right eye,
nose tip, left and right mouth corner, as (x, y) pixels), or, with --detect, photos whose faces and
landmarks the YuNet detector finds (`eval.detect`). Faces are aligned onto the ArcFace template by
`eval.align.align_face`; the network sees NCHW float32 RGB in [-1, 1].

    python -m tools.inference --network vit_s_dp005_mask_0 --weights model.pt --compare a.jpg b.jpg
    python -m tools.inference --network vit_s_dp005_mask_0 --weights model.pt --detect --compare a.jpg b.jpg
    python -m tools.inference --onnx model.onnx --folder faces/ --output emb.npy --flip --normalize
    python -m tools.inference --folder photos/ --detect --save-aligned aligned/
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backbones import load_backbone
from eval.align import align_face, check_landmarks
from eval.detect import (
    DETECTOR_ENV,
    ZOO_FILE,
    Face,
    FaceDetector,
    align_faces,
    load_detector,
    read_photo,
)
from eval.guard import check_embeddings, check_model_output, unit_rows
from eval.onnx_backbone import load_onnx_backbone
from utils.decode import read_image, split_image_files, warn_skipped
from utils.distributed import pick_device
from utils.errors import UserError, entry_point
from utils.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_regular_file,
    make_folder,
    read_text,
)
from utils.images import IMAGE_EXTENSIONS, IMAGE_SIZE, normalize
from utils.opencv import cv2

NUM_LANDMARK_VALUES = 10  # 5 points, (x, y) each
# A landmarks line with a name: the name (any text, spaces too), then the 10 numbers.
_NAMED_LINE = re.compile(rf"(?P<name>.+?)[,\s]+(?P<points>(?:[^,\s]+[,\s]+){{{NUM_LANDMARK_VALUES - 1}}}[^,\s]+)")
LANDMARKS_FILE = "landmarks.txt"  # written by --save-aligned

# float32 [B, 3, 112, 112] -> float32 [B, D]
Embedder = Callable[[np.ndarray], np.ndarray]


def parse_landmarks(text: str, source: str) -> np.ndarray:
    """Ten numbers x1,y1,...,x5,y5 separated by commas or spaces -> [5, 2] float32."""
    fields = [field for field in re.split(r"[,\s]+", text.strip()) if field]
    try:
        values = [float(field) for field in fields]
    except ValueError:
        values = []
    if len(values) != NUM_LANDMARK_VALUES:
        raise UserError(f"{source}: expected 10 numbers x1,y1,...,x5,y5 (eyes, nose, mouth corners), got "
                        f"'{text.strip()}'.")
    return np.array(values, dtype=np.float32).reshape(5, 2)  # [5, (x, y)]


def read_landmarks_file(path: str | Path, names: Sequence[str]) -> list[np.ndarray | None]:
    """Landmarks per image from a text file: one line per image in order (10 numbers), or lines
    `name x1 y1 ... x5 y5` matched by image name, where images without a line count as aligned. The name
    is everything before the last 10 numbers (it may hold spaces), escaped as in the names file
    (`escape_name`, which --save-aligned writes)."""
    path = Path(path)
    lines = [line.strip() for line in read_text(path, "landmarks file").splitlines() if line.strip()]
    named_lines = [_NAMED_LINE.fullmatch(line) for line in lines]
    num_named = sum(match is not None and not _is_number(match["name"]) for match in named_lines)
    if num_named == 0:
        if len(lines) != len(names):
            raise UserError(f"landmarks file '{path}' has {len(lines)} lines for {len(names)} images; give "
                            "one line per image in order, or start each line with the image name.")
        return [parse_landmarks(line, f"{path} line {n}") for n, line in enumerate(lines, start=1)]
    if num_named != len(lines):
        raise UserError(f"landmarks file '{path}' mixes lines with and without an image name; start every "
                        "line with the image name or none.")
    given = [unescape_name(match["name"]) for match in named_lines]
    repeated = sorted(name for name, count in Counter(given).items() if count > 1)
    if repeated:
        raise UserError(f"landmarks file '{path}' has several lines for {', '.join(repeated[:5])}; keep one "
                        "line per image (a file written with --all-faces lists every face of a photo).")
    named = {name: parse_landmarks(match["points"], f"{path} line {n}")
             for n, (name, match) in enumerate(zip(given, named_lines), start=1)}
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise UserError(f"landmarks file '{path}' names images that are not inputs: {', '.join(unknown[:5])}; "
                        "use the names as given on the command line or relative to --folder.")
    return [named.get(name) for name in names]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_face(path: str | Path, landmarks: np.ndarray | None = None) -> np.ndarray:
    """An aligned face, 112x112x3 uint8 RGB: the image itself, or its warp onto the template when
    `landmarks` [5, 2] are given."""
    image = read_image(path)  # [H, W, 3] RGB
    if landmarks is not None:
        image = align_face(image, landmarks, IMAGE_SIZE)
    elif image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = image.shape[:2]
        raise UserError(f"image '{path}' is {width}x{height}, not an aligned {IMAGE_SIZE}x{IMAGE_SIZE} face; "
                        "give its 5 landmarks with --landmarks or --landmarks-file to align it.")
    return image


def to_input(faces: np.ndarray) -> np.ndarray:
    """uint8 RGB faces [B, 112, 112, 3] -> network input float32 [B, 3, 112, 112] in [-1, 1]."""
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
    return normalize(pixels).numpy()


def torch_embedder(model: torch.nn.Module, device: torch.device) -> Embedder:
    model = model.eval().to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = check_model_output(model(torch.from_numpy(batch).to(device)), len(batch),
                                        source=type(model).__name__, width=getattr(model, "num_features", None))
            return output.float().cpu().numpy()  # [B, D]

    return run


def onnx_embedder(path: str | Path) -> Embedder:
    """ONNX Runtime (CUDA provider when installed, else CPU) on a face model, as eval.onnx_backbone loads it."""
    return load_onnx_backbone(path).embed


def embed_faces(embedder: Embedder, faces: np.ndarray, flip: bool = False) -> np.ndarray:
    """Embeddings [B, D] of uint8 RGB faces [B, 112, 112, 3]; with `flip`, plus those of the mirrored faces."""
    batch = to_input(faces)  # [B, 3, H, W]
    embeddings = embedder(batch)
    if flip:
        embeddings = embeddings + embedder(np.ascontiguousarray(batch[..., ::-1]))  # mirror along W
    return embeddings


def embed_files(embedder: Embedder, paths: Sequence[Path], landmarks: Sequence[np.ndarray | None],
                batch_size: int = 64, flip: bool = False, normalize: bool = False) -> np.ndarray:
    """Embeddings [N, D] float32 of image files, read `batch_size` at a time; non-finite ones raise
    eval.guard.NonFiniteEmbeddings."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        faces = np.stack([load_face(path, points) for path, points in
                          zip(paths[start:start + batch_size], landmarks[start:start + batch_size])])
        chunks.append(embed_faces(embedder, faces, flip))
    embeddings = np.concatenate(chunks).astype(np.float32)
    check_embeddings(embeddings, source="the inputs", describe=lambda row: f"'{paths[row]}'")
    if normalize:
        embeddings = unit_rows(embeddings, source="the inputs", describe=lambda row: f"'{paths[row]}'")
    return embeddings


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder '{folder}' does not exist; pass a directory of face images.")
    paths, others = split_image_files(sorted(path for path in folder.rglob("*") if not path.is_dir()))
    warn_skipped(others, folder)
    for path in paths:
        check_regular_file(path, "image", f"remove it from '{folder}'")  # a FIFO named x.jpg would block
    if not paths:
        raise UserError(f"folder '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return paths


def build_embedder(args: argparse.Namespace) -> Embedder:
    if args.onnx:
        if args.network or args.weights:
            raise UserError("give either --onnx or --network with --weights, not both.")
        return onnx_embedder(args.onnx)
    if not (args.network and args.weights):
        raise UserError("no model given; pass --network NAME --weights model.pt, or --onnx model.onnx.")
    device = pick_device(0, args.device)
    return torch_embedder(load_backbone(args.network, args.weights), device)


def collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Image paths and their names (the path as given, or relative to --folder)."""
    modes = [bool(args.images), bool(args.compare), bool(args.folder)]
    if sum(modes) != 1:
        raise UserError("give exactly one of: image files, --compare A B, or --folder DIR.")
    if args.folder:
        paths = list_images(args.folder)
        return paths, [path.relative_to(args.folder).as_posix() for path in paths]
    given = args.compare or args.images
    return [Path(item) for item in given], list(given)


def collect_landmarks(args: argparse.Namespace, names: Sequence[str]) -> list[np.ndarray | None]:
    if args.landmarks and args.landmarks_file:
        raise UserError("give either --landmarks or --landmarks-file, not both.")
    if args.landmarks_file:
        landmarks = read_landmarks_file(args.landmarks_file, names)
        source = f"landmarks file '{args.landmarks_file}'"
    elif args.landmarks:
        if len(args.landmarks) != len(names):
            raise UserError(f"--landmarks was given {len(args.landmarks)} times for {len(names)} images; give it "
                            "once per image, in order.")
        landmarks = [parse_landmarks(text, f"--landmarks for '{name}'") for text, name in zip(args.landmarks, names)]
        source = "--landmarks"
    else:
        return [None] * len(names)
    given = [(points, name) for points, name in zip(landmarks, names) if points is not None]
    if given:
        check_landmarks(np.stack([points for points, _ in given]), [name for _, name in given], source)
    return landmarks


_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
# Backslash, what str.splitlines splits on, and the surrogates by which Python keeps non-UTF-8 bytes of names.
_ESCAPED = re.compile("[\\\\\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\udc80-\udcff]")


def escape_name(name: str) -> str:
    """A file name as one line of the names file, whatever it holds: a backslash is written `\\\\`, a newline
    `\\n`, a carriage return `\\r`, every other character that ends a line for `str.splitlines` (form feed,
    U+2028, ...) `\\uXXXX`, and a byte that is not UTF-8 (kept by Python as a surrogate escape) `\\xNN`, so
    the file is UTF-8 and a reader splitting it into lines gets one name a line (undo with `unescape_name`)."""
    return _ESCAPED.sub(_escape_char, name)


def _escape_char(match: re.Match) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def unescape_name(line: str) -> str:
    """The file name of one line of the names file (see `escape_name`); `os.fsencode` of it gives the
    name's bytes, a non-UTF-8 one included."""
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)", _unescape_match, line)


def _unescape_match(match: re.Match) -> str:
    code = match.group(1)
    if code[0] in "xu" and len(code) > 1:
        return chr(int(code[1:], 16) + (0xDC00 if code[0] == "x" else 0))
    return {"n": "\n", "r": "\r"}.get(code, code)


def write_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str]) -> Path:
    """Save [N, D] embeddings to `path` (.npy) and the image names, one a line (`escape_name`), beside it
    (.txt): line i names row i."""
    path = Path(path)
    if path.suffix != ".npy":
        raise UserError(f"--output '{path}' must end in .npy.")
    make_folder(path.parent)
    atomic_write(path, lambda stream: np.save(stream, embeddings))
    names_path = path.with_suffix(".txt")
    atomic_write_text(names_path, "".join(f"{escape_name(name)}\n" for name in names))
    return names_path


@dataclass(frozen=True)
class DetectedFace:
    """One face found by --detect: its name (the photo's, plus `#k` with --all-faces), detection and crop."""

    name: str
    photo: str
    photo_index: int  # position of the photo among the inputs
    face: Face
    crop: np.ndarray  # [112, 112, 3] uint8 RGB, aligned


def detect_faces(detector: FaceDetector, paths: Sequence[Path], names: Sequence[str], all_faces: bool,
                 missing: list[str]) -> Iterator[DetectedFace]:
    """The largest face of each photo (every face with `all_faces`, largest first); the names of photos
    without a face are appended to `missing`."""
    for photo_index, (path, name) in enumerate(zip(paths, names)):
        photo = read_photo(path)
        faces = detector.detect(photo)
        if not faces:
            missing.append(name)
        faces = faces if all_faces else faces[:1]
        for index, (face, crop) in enumerate(zip(faces, align_faces(photo, faces))):
            yield DetectedFace(f"{name}#{index}" if all_faces else name, name, photo_index, face, crop)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def aligned_path(detected: DetectedFace, all_faces: bool, from_folder: bool) -> Path:
    """Where --save-aligned puts a crop: the photo's path relative to --folder (its file name otherwise),
    as .png, with `_k` after the stem for the k-th face with --all-faces."""
    relative = Path(detected.photo) if from_folder else Path(Path(detected.photo).name)
    stem = f"{relative.stem}_{detected.name.rsplit('#', 1)[1]}" if all_faces else relative.stem
    return relative.with_name(f"{stem}.png")


class AlignedWriter:
    """--save-aligned: each crop as a PNG under `root`, then `root/landmarks.txt` with one line
    `photo x1 y1 ... x5 y5` per face (the --landmarks-file format)."""

    def __init__(self, root: str | Path, all_faces: bool, from_folder: bool):
        self.root = Path(root)
        self.all_faces, self.from_folder = all_faces, from_folder
        self.lines: list[str] = []
        self.written: set[Path] = set()

    def add(self, detected: DetectedFace) -> None:
        relative = aligned_path(detected, self.all_faces, self.from_folder)
        if relative in self.written:
            raise UserError(f"two photos would both be saved as '{self.root / relative}'; give photos distinct "
                            "file names, or use --folder.")
        self.written.add(relative)
        path = self.root / relative
        make_folder(path.parent)
        _, png = cv2.imencode(".png", cv2.cvtColor(detected.crop, cv2.COLOR_RGB2BGR))
        atomic_write_bytes(path, png.tobytes())
        # 9 significant digits give the float32 landmarks back exactly.
        points = " ".join(f"{value:.9g}" for value in detected.face.landmarks.reshape(-1))
        self.lines.append(f"{escape_name(detected.photo)} {points}\n")

    def close(self) -> Path:
        make_folder(self.root)
        path = self.root / LANDMARKS_FILE
        atomic_write_text(path, "".join(self.lines))
        return path


def embed_detected(args: argparse.Namespace, paths: Sequence[Path],
                   names: Sequence[str]) -> tuple[np.ndarray | None, list[DetectedFace]]:
    """--detect: detect, align, optionally save the crops, and embed when a model is given.

    Returns (embeddings [F, D] float32 or None without a model, the F faces). Photos without a face are
    listed at the end, not fatal; none at all, or one of --compare without a face, is a UserError.
    """
    detector = load_detector(args.detector_model, args.download_detector)
    embedder = build_embedder(args) if has_model(args) else None
    writer = AlignedWriter(args.save_aligned, args.all_faces, bool(args.folder)) if args.save_aligned else None
    missing: list[str] = []
    found, chunks = [], []
    for batch in batched(detect_faces(detector, paths, names, args.all_faces, missing), args.batch_size):
        for detected in batch:
            print(f"{escape_name(detected.name)}: {detected.face.describe()}")
            if writer:
                writer.add(detected)
        if embedder:
            chunks.append(embed_faces(embedder, np.stack([detected.crop for detected in batch]), args.flip))
        found += batch
    if args.compare and missing:
        raise UserError(f"no face found in '{missing[0]}'; use a photo where a face is clearly visible.")
    if missing:
        print(f"no face found in {len(missing)} of {len(paths)} photos: {', '.join(map(escape_name, missing))}")
    if not found:
        raise UserError(f"no face found in any of the {len(paths)} photos.")
    if writer:
        print(f"wrote {len(found)} aligned faces under {writer.root} and their landmarks to {writer.close()}")
    if not embedder:
        return None, found
    embeddings = np.concatenate(chunks).astype(np.float32)
    check_embeddings(embeddings, source="the faces found", describe=lambda row: f"'{found[row].name}'")
    if args.normalize:
        embeddings = unit_rows(embeddings, source="the faces found", describe=lambda row: f"'{found[row].name}'")
    return embeddings, found


def has_model(args: argparse.Namespace) -> bool:
    return bool(args.onnx or args.network or args.weights)


def check_modes(args: argparse.Namespace) -> None:
    """Refuse flag combinations that mean nothing, naming the flag."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    if not args.detect:
        for flag, value in (("--all-faces", args.all_faces), ("--save-aligned", args.save_aligned),
                            ("--detector-model", args.detector_model),
                            ("--download-detector", args.download_detector)):
            if value:
                raise UserError(f"{flag} works with --detect; add --detect.")
    elif args.landmarks or args.landmarks_file:
        raise UserError("--detect finds the landmarks itself; drop --landmarks / --landmarks-file, or --detect.")
    if not has_model(args) and not (args.save_aligned and not args.compare and not args.output):
        raise UserError("no model given; pass --network NAME --weights model.pt, or --onnx model.onnx.")


def report(args: argparse.Namespace, embeddings: np.ndarray, names: Sequence[str], num_first: int = 1) -> None:
    """Print the similarity (--compare; with --all-faces each of the `num_first` faces of A against each
    face of B), write --output, or print each embedding's size and norm."""
    if args.compare:
        units = unit_rows(embeddings, source="the inputs", describe=lambda row: f"'{names[row]}'").astype(np.float64)
        for a in range(num_first):
            for b in range(num_first, len(names)):
                pair = f" ({escape_name(names[a])}, {escape_name(names[b])})" if len(names) > 2 else ""
                print(f"cosine similarity: {units[a] @ units[b]:.6f}{pair}")
    if args.output:
        names_path = write_embeddings(args.output, embeddings, names)
        print(f"wrote {args.output} {tuple(embeddings.shape)} and {names_path}")
    elif not args.compare:
        for name, embedding in zip(names, embeddings):
            print(f"{escape_name(name)}: {embedding.shape[0]}-d embedding, L2 norm {np.linalg.norm(embedding):.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.inference", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", help="image files: aligned 112x112 faces, or with landmarks")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the cosine similarity of two faces")
    parser.add_argument("--folder", help="embed every image under this directory (recursively, sorted)")
    parser.add_argument("--network", help="backbone name, for example vit_s_dp005_mask_0")
    parser.add_argument("--weights", help="backbone state_dict (.pt) for --network")
    parser.add_argument("--onnx", help="ONNX model from tools.export_onnx, run with ONNX Runtime")
    parser.add_argument("--device", help="PyTorch device (default: cuda if available, else cpu)")
    parser.add_argument("--landmarks", action="append", metavar="X1,Y1,...,X5,Y5",
                        help="5 landmarks of one image, once per image in order; the image is aligned")
    parser.add_argument("--landmarks-file", help="one line of 10 numbers per image, or 'name x1 y1 ... y5'")
    parser.add_argument("--detect", action="store_true",
                        help="find the faces and their landmarks in photos with the YuNet detector")
    parser.add_argument("--all-faces", action="store_true",
                        help="with --detect: embed every face (named photo#k, largest first), not only the largest")
    parser.add_argument("--save-aligned", metavar="DIR",
                        help="with --detect: write the aligned crops (.png) and DIR/landmarks.txt; works without "
                             "a model")
    parser.add_argument("--detector-model", metavar="PATH",
                        help=f"YuNet ONNX file ({ZOO_FILE}); default ${DETECTOR_ENV}, then the cached download")
    parser.add_argument("--download-detector", action="store_true",
                        help="download the YuNet model into the cache folder when it is not there (SHA-256 checked)")
    parser.add_argument("--output", help="write embeddings [N, D] to this .npy and the names to a .txt beside it")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--flip", action="store_true", help="add the embedding of the mirrored face")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_modes(args)
    paths, names = collect_inputs(args)
    if args.detect:
        embeddings, found = embed_detected(args, paths, names)
        if embeddings is not None:
            num_first = sum(detected.photo_index == 0 for detected in found)
            report(args, embeddings, [detected.name for detected in found], num_first)
    else:
        landmarks = collect_landmarks(args, names)
        embedder = build_embedder(args)
        report(args, embed_files(embedder, paths, landmarks, args.batch_size, args.flip, args.normalize), names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
