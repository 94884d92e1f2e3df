"""The benchmarks of a face-recognition paper's table, each read in its published layout: readers and registry.

Members (`BENCHMARKS`, at the end): insightface's `.bin` pair sets, LFW's `pairs.txt` over an image folder,
RFW (four race groups in LFW's pair format), IJB-B / IJB-C in insightface's `IJB_release` layout and
TinyFace's `Testing_Set`. Each member finds its data under the suite's `--data-root` (`find`) and turns
embeddings into numbers with the project's metric code (`eval.verification`, `eval/ijb.py`); what they
share (reading LFW-style pair lines, 5-point landmark files, loading faces from files) lives here once,
above the registry. Layouts and sources: docs/evaluation.md. Legend: N images, P pairs, D embedding size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from eval.align import align_face, check_landmarks
from utils.decode import check_image_size, decode_image
from utils.errors import UserError
from utils.files import check_regular_file, read_bytes, read_text
from utils.images import IMAGE_SIZE

BIN_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")
RFW_RACES = ("African", "Asian", "Caucasian", "Indian")
TINYFACE_RANKS = (1, 5, 20)
# AdaFace's aligned copy of TinyFace (validation_lq/validate_tinyface.py), used when it is present.
TINYFACE_ALIGNED = "aligned_pad_0.1_pad_high"
TINYFACE_PARTS = ("Probe", "Gallery_Match", "Gallery_Distractor")
NUM_LANDMARK_VALUES = 10


# ---- faces from image files ----

@dataclass(frozen=True)
class FaceFiles:
    """The images one benchmark embeds: paths [N] and 5-point landmarks [N, 5, 2] (NaN rows: none known).

    Alignment rule per image: landmarks -> warped onto the ArcFace template (eval.align); no landmarks and
    already 112x112 -> used as it is (an aligned set); otherwise a centred crop: the largest centred square,
    resized to 112x112 (counted and reported, it is not an alignment).
    """

    paths: list[Path]
    landmarks: np.ndarray

    @classmethod
    def unaligned(cls, paths: list[Path]) -> FaceFiles:
        return cls(paths, np.full((len(paths), 5, 2), np.nan, dtype=np.float32))


def centred_crop(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The largest centred square of an H x W x C image, resized to size x size (bilinear)."""
    from utils.opencv import cv2

    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


class FaceDataset(Dataset):
    """(uint8 RGB [3, 112, 112], index, ok, centred) per image of a FaceFiles; `ok` False when the file
    cannot be read or decoded (the caller names it), `centred` True when the centred-crop rule was used."""

    def __init__(self, faces: FaceFiles):
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool, bool]:
        blank = torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        try:
            data = read_bytes(self.faces.paths[index], "image")
            check_image_size(data, "image")
            image = decode_image(data)  # [H, W, 3] RGB
        except (UserError, ValueError):
            return blank, index, False, False
        points = self.faces.landmarks[index]
        centred = False
        if np.isfinite(points).all():
            image = align_face(image, points)
        elif image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            image, centred = centred_crop(image), True
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), index, True, centred  # [3, S, S]


def collate_faces(batch):
    """(images [B, 3, 112, 112] uint8, indices [B], ok [B], centred [B])."""
    images, indices, ok, centred = zip(*batch)
    return (torch.from_numpy(np.stack([image.numpy() for image in images])), torch.tensor(indices),
            torch.tensor(ok), torch.tensor(centred))


# ---- LFW-style pair lines and landmark files (LFW, RFW) ----

@dataclass(frozen=True)
class PairList:
    """Pairs of images named as in LFW: image `(name, number)` is `<name>/<name>_<number:04d>.jpg`.

    first, second: [P] indices into `images`; issame [P]; num_folds: consecutive folds of the protocol.
    """

    images: list[tuple[str, int]]
    first: np.ndarray
    second: np.ndarray
    issame: np.ndarray
    num_folds: int


def lfw_image_path(folder: Path, name: str, number: int) -> Path:
    """LFW's naming, also RFW's: `<folder>/<name>/<name>_<number padded to 4 digits>.jpg`."""
    return folder / name / f"{name}_{number:04d}.jpg"


def _pair_of(fields: list[str], path: Path, number: int) -> tuple[tuple[str, int], tuple[str, int], bool]:
    """One pair line: `name n1 n2` (same person) or `name1 n1 name2 n2` (two people)."""
    try:
        if len(fields) == 3:
            return (fields[0], int(fields[1])), (fields[0], int(fields[2])), True
        if len(fields) == 4:
            return (fields[0], int(fields[1])), (fields[2], int(fields[3])), False
    except ValueError:
        pass
    raise UserError(f"{path}, line {number}: expected 'name n1 n2' or 'name1 n1 name2 n2', got "
                    f"{' '.join(fields)[:80]!r}; fix or re-download the pair list.")


def _pair_list(lines: list[tuple[int, list[str]]], path: Path, num_folds: int) -> PairList:
    index_of: dict[tuple[str, int], int] = {}
    first, second, issame = [], [], []
    for number, fields in lines:
        a, b, same = _pair_of(fields, path, number)
        first.append(index_of.setdefault(a, len(index_of)))
        second.append(index_of.setdefault(b, len(index_of)))
        issame.append(same)
    issame = np.asarray(issame, dtype=bool)
    if len(set(issame.tolist())) < 2:
        raise UserError(f"pair list '{path}' holds only {'same' if issame[0] else 'different'}-person pairs; "
                        "its accuracy would mean nothing: fix or re-download it.")
    return PairList(list(index_of), np.asarray(first), np.asarray(second), issame, num_folds)


def _numbered_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    text = read_text(check_regular_file(path, what, "see docs/evaluation.md for the layout"), what)
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_lfw_pairs(path: str | Path) -> PairList:
    """LFW's `pairs.txt` (View 2): a header `<folds> <n>`, then per fold n same-person lines `name n1 n2`
    followed by n different-person lines `name1 n1 name2 n2` (LFW README, section 3c).

    Raises UserError naming the line when the header, a line, or a fold's mix of pairs is wrong.
    """
    path = Path(path)
    lines = _numbered_lines(path, "LFW pair list")
    header = lines[0][1] if lines else []
    if len(header) != 2 or not all(value.isdigit() and int(value) > 0 for value in header):
        raise UserError(f"{path}, line 1: expected the header '<number of folds> <pairs of each kind per fold>' "
                        f"(e.g. '10 300'), got {' '.join(header)!r}; pass LFW's View 2 pairs.txt.")
    num_folds, per_kind = int(header[0]), int(header[1])
    body = lines[1:]
    if len(body) != num_folds * 2 * per_kind:
        raise UserError(f"{path}: the header announces {num_folds} folds x {2 * per_kind} pairs = "
                        f"{num_folds * 2 * per_kind} lines, the file has {len(body)}; fix or re-download it.")
    for position, (number, fields) in enumerate(body):
        expected_same = position % (2 * per_kind) < per_kind
        if (len(fields) == 3) != expected_same:
            kind = "same-person 'name n1 n2'" if expected_same else "different-person 'name1 n1 name2 n2'"
            raise UserError(f"{path}, line {number}: fold {position // (2 * per_kind) + 1} expects a {kind} "
                            f"line here, got {' '.join(fields)[:80]!r}; fix or re-download it.")
    return _pair_list(body, path, num_folds)


def read_rfw_pairs(path: str | Path, num_folds: int = 10) -> PairList:
    """RFW's `<race>_pairs.txt`: LFW's pair lines (tab-separated) without a header, in `num_folds`
    consecutive folds (RFW follows LFW's 10-fold protocol)."""
    path = Path(path)
    return _pair_list(_numbered_lines(path, "RFW pair list"), path, num_folds)


def read_landmark_file(path: str | Path) -> dict[str, np.ndarray]:
    """A 5-point landmark file: per line an image path, optional fields, then 10 numbers x1 y1 ... x5 y5
    (RFW's `<race>_lmk.txt` has the path, one more field, and the 10 numbers). Keyed by file name.

    Raises UserError naming the line when one has fewer than 10 numbers after the path or they are not finite.
    """
    path = Path(path)
    landmarks = {}
    for number, fields in _numbered_lines(path, "landmark file"):
        try:
            values = np.array([float(v) for v in fields[-NUM_LANDMARK_VALUES:]], dtype=np.float32)
        except ValueError:
            values = np.empty(0)
        if len(fields) < 1 + NUM_LANDMARK_VALUES or len(values) != NUM_LANDMARK_VALUES \
                or not np.isfinite(values).all():
            raise UserError(f"{path}, line {number}: expected an image path and 10 landmark numbers "
                            f"x1 y1 ... x5 y5, got {' '.join(fields)[:80]!r}; fix or re-download it.")
        landmarks[Path(fields[0]).name] = values.reshape(5, 2)  # [10] -> [5, 2] as (x, y)
    return landmarks


def pair_faces(pairs: PairList, folder: Path, landmarks: dict[str, np.ndarray] | None, source: str) -> FaceFiles:
    """FaceFiles of a pair list's images under `folder`; landmarks looked up by file name (UserError
    naming the first image without landmarks when a landmark file is given, or with unusable ones)."""
    paths = [lfw_image_path(folder, name, number) for name, number in pairs.images]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"image '{missing}' named by {source} does not exist; copy the complete image folder.")
    if landmarks is None:
        return FaceFiles.unaligned(paths)
    absent = next((p for p in paths if p.name not in landmarks), None)
    if absent is not None:
        raise UserError(f"the landmark file of {source} has no line for '{absent.name}'; use the landmark file "
                        "released with the images.")
    points = np.stack([landmarks[p.name] for p in paths])  # [N, 5, 2]
    check_landmarks(points, [p.name for p in paths], f"the landmark file of {source}")
    return FaceFiles(paths, points)


def pair_embeddings(plain: np.ndarray, mirrored: np.ndarray | None, pairs: PairList
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings [N, D] of the distinct images (and of their mirrors, or None) -> [2P, D] in .bin order
    (pair p is rows 2p and 2p+1), the input of eval.verification.accuracy_from_embeddings."""
    order = np.stack([pairs.first, pairs.second], axis=1).reshape(-1)  # [P, 2] -> [2P]
    return plain[order], None if mirrored is None else mirrored[order]


# ---- TinyFace ----

def read_tinyface_mat(path: str | Path, names_key: str, ids_key: str) -> tuple[list[str], np.ndarray]:
    """A TinyFace ID list (`probe_img_ID_pairs.mat`: probe_set, probe_ids; `gallery_match_img_ID_pairs.mat`:
    gallery_set, gallery_ids) -> (file names [N], identity ids [N] int64), read with scipy.io.loadmat."""
    from scipy.io import loadmat

    path = check_regular_file(path, "TinyFace ID list", "copy Testing_Set/ as released")
    try:
        content = loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise UserError(f"'{path}' is not a readable MATLAB file ({exc}); re-download TinyFace.") from None
    if names_key not in content or ids_key not in content:
        raise UserError(f"'{path}' has no '{names_key}' and '{ids_key}' (it holds "
                        f"{sorted(k for k in content if not k.startswith('__'))}); pass TinyFace's own ID list.")
    cells = np.asarray(content[names_key], dtype=object).reshape(-1)  # [N] cells, each an array of one str
    names = [str(np.asarray(cell).reshape(-1)[0]) for cell in cells]
    ids = np.asarray(content[ids_key]).reshape(-1)  # [N, 1] -> [N]
    if len(ids) != len(names) or not np.isfinite(ids.astype(np.float64)).all():
        raise UserError(f"'{path}' lists {len(names)} images but {len(ids)} finite ids; re-download TinyFace.")
    return names, ids.astype(np.int64)


def tinyface_files(testing_set: Path, part: str, names: list[str]) -> tuple[FaceFiles, int]:
    """(FaceFiles of `names` in one part, how many come from AdaFace's aligned copy): an aligned 112x112
    copy in `<tinyface>/aligned_pad_0.1_pad_high/<part>/` is used where present, else the released crop
    (centred crop by FaceDataset's rule)."""
    aligned = testing_set.parent / TINYFACE_ALIGNED / part
    paths, num_aligned = [], 0
    for name in names:
        candidate = aligned / name
        if candidate.is_file():
            paths.append(candidate)
            num_aligned += 1
        else:
            paths.append(testing_set / part / name)
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"TinyFace image '{missing}' does not exist; copy the complete Testing_Set/.")
    return FaceFiles.unaligned(paths), num_aligned


def image_names(folder: Path) -> list[str]:
    """Image files directly in `folder`, sorted (TinyFace's distractors are listed by no file)."""
    from utils.decode import is_image_file

    return sorted(p.name for p in folder.iterdir() if is_image_file(p))


# ---- the registry ----

@dataclass
class Found:
    """One benchmark instance found under the data root: its row name and where it lives."""

    name: str
    path: Path
    note: str = ""
    options: dict = field(default_factory=dict)


def find_bin_sets(root: Path) -> list[Found]:
    """`<root>/<name>.bin` or `<root>/<folder>/<name>.bin`: the published names first, in BIN_SETS order,
    then any other .bin, alphabetically (a .bin is insightface's pickled pair set)."""
    paths = sorted({*root.glob("*.bin"), *root.glob("*/*.bin")}, key=lambda p: (
        BIN_SETS.index(p.stem) if p.stem in BIN_SETS else len(BIN_SETS), p.stem, str(p)))
    return [Found(path.stem, path) for path in paths]


def find_lfw_folder(root: Path) -> list[Found]:
    """`<root>/lfw/pairs.txt` with the images in `<root>/lfw/<name>/` (or `<root>/lfw/lfw/<name>/`, as
    lfw.tgz unpacks), and optional landmarks `<root>/lfw/lfw_landmarks.txt`."""
    folder = root / "lfw"
    if not (folder / "pairs.txt").is_file():
        return []
    images = folder / "lfw" if (folder / "lfw").is_dir() else folder
    landmarks = folder / "lfw_landmarks.txt"
    note = ("5-point landmarks" if landmarks.is_file()
            else "no landmark file: 112x112 images used as given, others centred")
    return [Found("lfw_pairs", folder, note, {"images": images,
                                              "landmarks": landmarks if landmarks.is_file() else None})]


def rfw_paths(root: Path, race: str) -> tuple[Path, Path, Path]:
    """(image folder, pair list, landmark file) of one RFW race under `<root>/RFW/test/`."""
    test = root / "RFW" / "test"
    return test / "data" / race, test / "txts" / race / f"{race}_pairs.txt", test / "txts" / race / f"{race}_lmk.txt"


def find_rfw(root: Path) -> list[Found] | str:
    if not (root / "RFW" / "test").is_dir():
        return []
    for race in RFW_RACES:
        for path in rfw_paths(root, race):
            if not path.exists():
                return f"RFW/test is there but {path} is missing; RFW needs all four races"
    return [Found("rfw", root / "RFW" / "test", "4 races, 5-point landmarks")]


def find_ijb(target: str) -> Callable[[Path], list[Found] | str]:
    def find(root: Path) -> list[Found] | str:
        from eval.ijb_data import MetaPaths

        for folder in (root / "IJB_release" / target, root / target):
            if folder.is_dir():
                paths = MetaPaths.of(folder, target)
                missing = [p for p in (paths.landmarks, paths.media, paths.pairs) if not p.is_file()]
                if missing:
                    return f"{folder} lacks {missing[0].name}"
                note = "1:1 and 1:N" if paths.has_identification() else "1:1 only (no 1:N meta files)"
                return [Found(target.lower(), folder, note, {"target": target})]
        return []
    return find


def find_tinyface(root: Path) -> list[Found] | str:
    for folder in (root / "tinyface", root / "TinyFace"):
        testing = folder / "Testing_Set"
        if testing.is_dir():
            needed = [testing / p for p in TINYFACE_PARTS] + [testing / "probe_img_ID_pairs.mat",
                                                               testing / "gallery_match_img_ID_pairs.mat"]
            missing = next((p for p in needed if not p.exists()), None)
            if missing is not None:
                return f"{testing} lacks {missing.name}"
            aligned = (folder / TINYFACE_ALIGNED).is_dir()
            return [Found("tinyface", testing, f"aligned copy {TINYFACE_ALIGNED}/ used" if aligned
                          else "no aligned copy: released crops, centred")]
    return []


@dataclass(frozen=True)
class Benchmark:
    """A member of the registry: `find(root)` -> the instances present, or why the data is unusable."""

    key: str
    title: str
    layout: str
    protocol: str
    find: Callable[[Path], list[Found] | str]


BENCHMARKS = (
    Benchmark("bin", ".bin pair sets", "<root>/[<folder>/]<name>.bin (insightface's faces_emore etc.)",
              "10-fold accuracy +- std, flip test (eval.verification, insightface's verification.py)",
              find_bin_sets),
    Benchmark("lfw_pairs", "LFW pairs.txt", "<root>/lfw/pairs.txt, <root>/lfw/[lfw/]<name>/<name>_NNNN.jpg",
              "View 2: 10-fold accuracy over the header's folds, flip test (LFW README 3c)", find_lfw_folder),
    Benchmark("rfw", "RFW", "<root>/RFW/test/data/<race>/, test/txts/<race>/<race>_pairs.txt, _lmk.txt",
              "per race 10-fold accuracy, flip test; mean and std over the 4 races (Wang et al., ICCV 2019)",
              find_rfw),
    Benchmark("ijbb", "IJB-B", "<root>/[IJB_release/]IJBB/loose_crop, meta/ (insightface evaluation/IJB)",
              "1:1 TAR@FAR and 1:N rank/TPIR (eval_ijbc.py, eval/ijb.py)", find_ijb("IJBB")),
    Benchmark("ijbc", "IJB-C", "<root>/[IJB_release/]IJBC/loose_crop, meta/ (insightface evaluation/IJB)",
              "1:1 TAR@FAR and 1:N rank/TPIR (eval_ijbc.py, eval/ijb.py)", find_ijb("IJBC")),
    Benchmark("tinyface", "TinyFace",
              "<root>/tinyface/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}, *.mat",
              "closed-set identification, gallery = match + distractors, rank-1/5/20 (Cheng et al., ACCV 2018)",
              find_tinyface),
)
BENCHMARK_KEYS = tuple(b.key for b in BENCHMARKS)


__all__ = ["BENCHMARKS", "BENCHMARK_KEYS", "BIN_SETS", "RFW_RACES", "TINYFACE_RANKS", "Benchmark", "FaceDataset",
           "FaceFiles", "Found", "PairList", "centred_crop", "collate_faces", "image_names", "lfw_image_path",
           "pair_embeddings", "pair_faces", "read_landmark_file", "read_lfw_pairs", "read_rfw_pairs",
           "read_tinyface_mat", "rfw_paths", "tinyface_files"]
