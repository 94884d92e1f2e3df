"""IJB-B / IJB-C meta files: parsed by pandas' C reader, with file and line in every error.

Layout under `--image-path` (insightface's `IJB_release/IJBC`, see docs/evaluation.md):
`loose_crop/<name>` images and `meta/` with `<p>_name_5pts_score.txt` (name, 5 landmarks x y,
faceness), `<p>_face_tid_mid.txt` (name, template id, media id) in the same image order,
`<p>_template_pair_label.txt` (template 1, template 2, label) and, for 1:N, the NIST csv files
`<p>_1N_probe_mixed.csv` and two galleries. `<p>` is `ijbc` or `ijbb`. The images themselves are read by
eval/ijb_images.py.

A well-formed file is read in one vectorised pass (IJB-C: 469,375 image lines, 15,658,489 pair lines);
only when that fails does a line-by-line scan run, to name the first malformed line.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eval.align import check_landmarks
from utils.errors import UserError
from utils.files import check_regular_file

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


def _read_table(path: Path, dtypes: tuple) -> list[np.ndarray] | None:
    """The columns of a whitespace-separated file whose every line has len(dtypes) fields of those types;
    None when the file is not like that (or empty), so that the caller scans it for the bad line."""
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=dict(enumerate(dtypes)), engine="c",
                            keep_default_na=False, quoting=csv.QUOTE_NONE, encoding_errors="replace")
    except ValueError:  # pandas' parser, type and empty-file errors all derive from it
        return None
    if table.shape[1] != len(dtypes):
        return None
    return [table[column].to_numpy() for column in table.columns]


def _first_bad_line(path: Path, expected: str, valid: Callable[[list[str]], bool], what: str) -> UserError:
    """The error naming the first non-empty line whose fields `valid` rejects (the slow path), or saying
    that the file has no such lines; `what` is "<kind of file> <kind of row>", e.g. "pair file pairs"."""
    for number, text in _data_lines(path):
        if not valid(text.split()):
            return _bad_line(path, number, text, expected)
    kind, rows = what.rsplit(" ", 1)
    return UserError(f"{kind} '{path}' holds no readable {rows} (each line: {expected}); fix or re-download "
                     "the meta file.")


def _are_numbers(fields: list[str], parse: Callable[[str], float]) -> bool:
    try:
        return all(math.isfinite(parse(field)) for field in fields)
    except ValueError:
        return False


def _parse_int_fields(path: Path, fields: list[str], number: int, text: str, expected: str) -> list[int]:
    try:
        return [int(v) for v in fields]
    except ValueError:
        raise _bad_line(path, number, text, expected) from None


def read_landmarks(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`<p>_name_5pts_score.txt` -> (names, landmarks [N, 5, 2] float32, faceness [N] float32).

    Raises UserError naming the file and line of the first malformed or non-finite entry.
    """
    path = Path(path)
    _require_file(path, "landmark file")
    num_fields = 2 + NUM_LANDMARK_VALUES
    columns = _read_table(path, (object,) + (np.float32,) * (num_fields - 1))
    values = None if columns is None else np.stack(columns[1:], axis=1)  # [N, 11]
    if values is None or not np.isfinite(values).all():
        raise _first_bad_line(path, "an image name, 10 landmark numbers and a faceness score",
                              lambda fields: len(fields) == num_fields and _are_numbers(fields[1:], float),
                              "landmark file images")
    landmarks = values[:, :NUM_LANDMARK_VALUES].reshape(-1, 5, 2)  # [N, 10] -> [N, 5, 2] as (x, y)
    return columns[0].tolist(), landmarks, values[:, NUM_LANDMARK_VALUES].copy()


def read_template_media(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`<p>_face_tid_mid.txt` -> (names, template ids [N] int64, media ids [N] int64)."""
    path = Path(path)
    _require_file(path, "template/media file")
    columns = _read_table(path, (object, np.int64, np.int64))
    if columns is None:
        raise _first_bad_line(path, "an image name, a template id and a media id (integers)",
                              lambda fields: len(fields) == 3 and _are_numbers(fields[1:], int),
                              "template/media file images")
    return columns[0].tolist(), columns[1], columns[2]


def read_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<p>_template_pair_label.txt` -> (template 1 [P], template 2 [P], label [P]) as int64."""
    path = Path(path)
    _require_file(path, "pair file")
    columns = _read_table(path, (np.int64, np.int64, np.int64))
    if columns is None or not np.isin(columns[2], (0, 1)).all():
        raise _first_bad_line(path, "three integers: template 1, template 2, label 0 or 1",
                              lambda fields: len(fields) == 3 and _are_numbers(fields, int)
                              and int(fields[2]) in (0, 1),
                              "pair file pairs")
    if len(np.unique(columns[2])) < 2:  # TAR or FAR would divide by zero
        kind = "genuine (1)" if columns[2][0] == 1 else "impostor (0)"
        raise UserError(f"pair file '{path}' holds only {kind} pairs; TAR@FAR needs both genuine and impostor "
                        "pairs: fix or re-download the meta file.")
    return columns[0], columns[1], columns[2]


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
    differ = np.flatnonzero(np.asarray(names, dtype=object) != np.asarray(media_names, dtype=object))
    if len(differ):
        row = int(differ[0])
        raise UserError(f"image {row + 1} is '{media_names[row]}' in '{paths.media}' but '{names[row]}' in "
                        f"'{paths.landmarks}'; both files must list the same images in the same order.")
    check_landmarks(landmarks, names, str(paths.landmarks))
    check_faceness(faceness, names, str(paths.landmarks))
    return ImageMeta(names, landmarks, faceness, templates, medias, paths.landmarks)


def check_faceness(faceness: np.ndarray, names: list[str], source: str) -> None:
    """UserError naming the first image whose faceness score [N] is outside [0, 1] or NaN: the score
    weights its image in the template, and a NaN would silently zero the whole template."""
    bad = ~((faceness >= 0) & (faceness <= 1))  # NaN fails both comparisons
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{source}: the faceness score of '{names[row]}' is {faceness[row]}, not in [0, 1]; fix "
                        "or re-download the meta file (or the saved features).")


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


__all__ = [
    "GALLERIES",
    "TARGETS",
    "ImageMeta",
    "MetaPaths",
    "check_faceness",
    "check_images_exist",
    "meta_prefix",
    "read_identification_csv",
    "read_image_meta",
    "read_landmarks",
    "read_pairs",
    "read_template_media",
]
