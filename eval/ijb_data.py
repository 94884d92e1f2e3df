"""IJB-B / IJB-C inputs: the meta files (parsed with file and line in every error) and the aligned-image loader.

Layout under `--image-path` (insightface's `IJB_release/IJBC`, see docs/evaluation.md):
`loose_crop/<name>` images and `meta/` with `<p>_name_5pts_score.txt` (name, 5 landmarks x y,
faceness), `<p>_face_tid_mid.txt` (name, template id, media id) in the same image order,
`<p>_template_pair_label.txt` (template 1, template 2, label) and, for 1:N, the NIST csv files
`<p>_1N_probe_mixed.csv` and two galleries. `<p>` is `ijbc` or `ijbb`.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eval.align import align_face
from utils.decode import decode_image
from utils.errors import UserError
from utils.files import check_regular_file, read_bytes
from utils.images import check_image_size

TARGETS = ("IJBC", "IJBB")
# Gallery names of the NIST 1:N protocols.
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
NUM_LANDMARK_VALUES = 10


def meta_prefix(target: str) -> str:
    if target not in TARGETS:
        raise UserError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}.")
    return target.lower()


@dataclass(frozen=True)
class MetaPaths:
    """Where the meta files of one target live."""

    landmarks: Path
    media: Path
    pairs: Path
    probes: Path
    galleries: dict[str, Path]

    @classmethod
    def of(cls, image_path: str | Path, target: str) -> MetaPaths:
        prefix = meta_prefix(target)
        meta = Path(image_path) / "meta"
        return cls(
            landmarks=meta / f"{prefix}_name_5pts_score.txt",
            media=meta / f"{prefix}_face_tid_mid.txt",
            pairs=meta / f"{prefix}_template_pair_label.txt",
            probes=meta / f"{prefix}_1N_probe_mixed.csv",
            galleries={name: meta / f"{prefix}_1N_gallery_{name}.csv" for name in GALLERIES[target]},
        )

    def has_identification(self) -> bool:
        return self.probes.is_file() and all(path.is_file() for path in self.galleries.values())


def _require_file(path: Path, what: str) -> None:
    check_regular_file(path, what, "--image-path must hold meta/ and loose_crop/ as described in "
                       "docs/evaluation.md")


def _data_lines(path: Path):
    """(line number, stripped text) of the non-empty lines of a text file."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if text:
                yield number, text


def _bad_line(path: Path, number: int, text: str, expected: str) -> UserError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return UserError(f"{path}, line {number}: expected {expected}, got {shown!r}; fix or re-download the "
                     "meta file.")


def read_landmarks(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`<p>_name_5pts_score.txt` -> (names, landmarks [N, 5, 2] float32, faceness [N] float32)."""
    path = Path(path)
    _require_file(path, "landmark file")
    expected = "an image name, 10 landmark numbers and a faceness score"
    names, values = [], []
    for number, text in _data_lines(path):
        fields = text.split()
        if len(fields) != 2 + NUM_LANDMARK_VALUES:
            raise _bad_line(path, number, text, expected)
        try:
            values.append([float(v) for v in fields[1:]])
        except ValueError:
            raise _bad_line(path, number, text, expected) from None
        names.append(fields[0])
    if not names:
        raise UserError(f"landmark file '{path}' lists no images; fix or re-download the meta file.")
    table = np.asarray(values, dtype=np.float32)  # [N, 11]
    landmarks = table[:, :NUM_LANDMARK_VALUES].reshape(-1, 5, 2)  # [N, 10] -> [N, 5, 2] as (x, y)
    return names, landmarks, table[:, NUM_LANDMARK_VALUES].copy()


def _parse_int_fields(path: Path, fields: list[str], number: int, text: str, expected: str) -> list[int]:
    try:
        return [int(v) for v in fields]
    except ValueError:
        raise _bad_line(path, number, text, expected) from None


def read_template_media(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`<p>_face_tid_mid.txt` -> (names, template ids [N] int64, media ids [N] int64)."""
    path = Path(path)
    _require_file(path, "template/media file")
    expected = "an image name, a template id and a media id (integers)"
    names, ids = [], []
    for number, text in _data_lines(path):
        fields = text.split()
        if len(fields) != 3:
            raise _bad_line(path, number, text, expected)
        ids.append(_parse_int_fields(path, fields[1:], number, text, expected))
        names.append(fields[0])
    if not names:
        raise UserError(f"template/media file '{path}' lists no images; fix or re-download the meta file.")
    table = np.asarray(ids, dtype=np.int64)  # [N, 2]
    return names, table[:, 0].copy(), table[:, 1].copy()


def _scan_pair_lines(path: Path) -> UserError:
    """Locate the first malformed line of a pair file (the slow path, only after the fast parse failed)."""
    expected = "three integers: template 1, template 2, label 0 or 1"
    for number, text in _data_lines(path):
        fields = text.split()
        if len(fields) != 3:
            return _bad_line(path, number, text, expected)
        values = _parse_int_fields(path, fields, number, text, expected)
        if values[2] not in (0, 1):
            return _bad_line(path, number, text, expected)
    return UserError(f"pair file '{path}' holds no readable pairs; fix or re-download the meta file.")


def read_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<p>_template_pair_label.txt` -> (template 1 [P], template 2 [P], label [P]) as int64.

    IJB-C has 15.7 M lines: numpy's C parser reads them; a Python scan only runs to name a bad line.
    """
    path = Path(path)
    _require_file(path, "pair file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file is reported below
            table = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)  # [P, 3]
    except ValueError:
        table = None
    if table is None or table.shape[1] != 3 or len(table) == 0 or not np.isin(table[:, 2], (0, 1)).all():
        raise _scan_pair_lines(path)
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def read_identification_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIST 1:N csv (TEMPLATE_ID,SUBJECT_ID,FILENAME,...; one row per image) -> one row per template:
    (template ids [T] int64, subject ids [T] int64) in order of first appearance."""
    path = Path(path)
    _require_file(path, "1:N file")
    subject_of: dict[int, int] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if [h.strip().upper() for h in header[:2]] != ["TEMPLATE_ID", "SUBJECT_ID"]:
            raise UserError(f"{path}, line 1: expected the header TEMPLATE_ID,SUBJECT_ID,FILENAME,..., got "
                            f"{','.join(header)[:80]!r}; fix or re-download the meta file.")
        for row in reader:
            number = reader.line_num
            if not row or not "".join(row).strip():
                continue
            text = ",".join(row)
            expected = "TEMPLATE_ID and SUBJECT_ID as integers"
            if len(row) < 2:
                raise _bad_line(path, number, text, expected)
            template, subject = _parse_int_fields(path, row[:2], number, text, expected)
            if subject_of.setdefault(template, subject) != subject:
                raise UserError(f"{path}, line {number}: template {template} belongs to subject "
                                f"{subject_of[template]} on an earlier line and to {subject} here; fix or "
                                "re-download the meta file.")
    if not subject_of:
        raise UserError(f"1:N file '{path}' lists no templates; fix or re-download the meta file.")
    return (np.fromiter(subject_of.keys(), dtype=np.int64, count=len(subject_of)),
            np.fromiter(subject_of.values(), dtype=np.int64, count=len(subject_of)))


@dataclass(frozen=True)
class ImageMeta:
    """One row per image: file name, landmarks, faceness, template and media ids."""

    names: list[str]
    landmarks: np.ndarray  # [N, 5, 2] float32
    faceness: np.ndarray  # [N] float32
    templates: np.ndarray  # [N] int64
    medias: np.ndarray  # [N] int64
    source: Path  # the landmark file, for error messages


def read_image_meta(paths: MetaPaths) -> ImageMeta:
    """Landmarks and template/media ids; both files must list the same images in the same order."""
    names, landmarks, faceness = read_landmarks(paths.landmarks)
    media_names, templates, medias = read_template_media(paths.media)
    if len(media_names) != len(names):
        raise UserError(f"'{paths.media}' lists {len(media_names)} images but '{paths.landmarks}' lists "
                        f"{len(names)}; both must describe the same images in the same order.")
    for row, (name, media_name) in enumerate(zip(names, media_names)):
        if name != media_name:
            raise UserError(f"image {row + 1} is '{media_name}' in '{paths.media}' but '{name}' in "
                            f"'{paths.landmarks}'; both files must list the same images in the same order.")
    return ImageMeta(names, landmarks, faceness, templates, medias, paths.landmarks)


def check_images_exist(image_dir: str | Path, meta: ImageMeta) -> None:
    """Fail before any inference when an image listed in the meta is missing."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise UserError(f"image folder '{image_dir}' does not exist; --image-path must hold loose_crop/.")
    present = set(os.listdir(image_dir))
    for row, name in enumerate(meta.names):
        if name not in present and not (image_dir / name).is_file():
            raise UserError(f"image '{image_dir / name}' listed on line {row + 1} of {meta.source} does not "
                            "exist; copy the complete loose_crop/ folder.")


class AlignedFaces(Dataset):
    """Reads an image (`utils.decode`), aligns it with its 5 landmarks and returns (uint8 RGB [3, S, S],
    index, ok).

    `ok` is False when the file cannot be decoded; the caller names the file, so a worker never raises.
    """

    def __init__(self, image_dir: str | Path, names: list[str], landmarks: np.ndarray, size: int = 112):
        self.image_dir = Path(image_dir)
        self.names = names
        self.landmarks = landmarks
        self.size = size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        try:
            data = read_bytes(self.image_dir / self.names[index], "image")
            check_image_size(data, "image")
            image = decode_image(data)  # [H, W, 3] RGB
        except (UserError, ValueError):  # not a regular file, a header claiming a bomb, or undecodable
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, False
        aligned = align_face(image, self.landmarks[index], self.size)  # [S, S, 3]
        return torch.from_numpy(np.ascontiguousarray(aligned.transpose(2, 0, 1))), index, True  # [3, S, S]


def _single_thread_opencv(_worker_id: int) -> None:
    """Each worker decodes one image at a time; OpenCV's own threads would only oversubscribe the cores."""
    cv2.setNumThreads(1)


def collate_aligned(batch: list[tuple[torch.Tensor, int, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, S, S] uint8, indices [B], ok [B]). Stacked by NumPy: torch.stack's threaded copy
    took 0.2 s per batch of 64 on a busy 2-core machine, 20x the decoding time."""
    images, indices, ok = zip(*batch)
    stacked = np.stack([image.numpy() for image in images])  # [B, 3, S, S]
    return torch.from_numpy(stacked), torch.tensor(indices), torch.tensor(ok)


def aligned_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches in file order; workers decode and align while the model runs on the previous batch.

    Workers are spawned, not forked: a child forked after the parent used OpenCV's thread pool can
    deadlock inside OpenCV (seen here in cv2.setNumThreads).
    """
    workers = dict(num_workers=num_workers, worker_init_fn=_single_thread_opencv, prefetch_factor=4,
                   multiprocessing_context="spawn") if num_workers else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=pin_memory,
                      collate_fn=collate_aligned, **workers)


__all__ = [
    "GALLERIES",
    "TARGETS",
    "AlignedFaces",
    "ImageMeta",
    "MetaPaths",
    "aligned_loader",
    "check_images_exist",
    "collate_aligned",
    "meta_prefix",
    "read_identification_csv",
    "read_image_meta",
    "read_landmarks",
    "read_pairs",
    "read_template_media",
]
