"""Generate the demo data: synthetic identities for training, verification and IJB-C-format evaluation.

Everything follows from the arguments: the same arguments write the same bytes. Identities are split
three ways and never shared: the first `--num-train-ids` are the training classes, the next
`--num-val-ids` make the `.bin` pair sets, the last `--num-ijb-ids` the IJB-C-format set.
`manifest.json` records which identity every pair image and IJB image shows. The faces come from
`tools/demo_faces.py`.

Written under --out:

    train.rec, train.idx, property       insightface RecordIO layout, 112x112 aligned JPEGs
    demo_lfw.bin, demo_hard.bin          insightface .bin pair sets (hard: pose, occlusion, light,
                                         look-alike impostors)
    IJBC/loose_crop/<n>.jpg, IJBC/meta/  loose crops with 5-point landmarks, templates, pairs, 1:N files
    lfw/                                 LFW layout: pairs.txt (10 folds), <name>/<name>_NNNN.jpg loose crops,
                                         lfw_landmarks.txt (held-out identities, other images than the .bin)
    RFW/test/data, RFW/test/txts         RFW layout: four groups named as RFW's races, pairs and landmarks
    tinyface/Testing_Set/                TinyFace layout: 20-pixel faces, Probe, Gallery_Match,
                                         Gallery_Distractor and the two .mat ID lists
    manifest.json                        the arguments, the identity splits and who is in which image

    python -m tools.make_demo_data --out demo_data --seed 0
    python -m tools.make_demo_data --out demo_data --check     # trivial baselines on the .bin sets
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import csv
import io
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np
from PIL import Image

from eval.verification import kfold_accuracy
from tools.demo_faces import (
    Identity,
    View,
    encode_jpeg,
    render_loose,
    sample_aligned,
    sample_identity,
    sample_view,
    vary_view,
)
from tools.pack_rec import write_records
from utils.binfile import decode_bin_images, load_bin, save_bin
from utils.errors import UserError, entry_point
from utils.files import atomic_write_bytes, atomic_write_text
from utils.opencv import cv2
from utils.recordio import IRHeader

VERIFICATION_SETS = ("demo_lfw", "demo_hard")
IJB_TARGET = "IJBC"
GALLERY_FRACTIONS = {"G1": 0.4, "G2": 0.4}  # the remaining subjects are in no gallery
RFW_RACES = ("African", "Asian", "Caucasian", "Indian")
# The small benchmark-suite sets: identities (taken from the held-out split, cycling when it is small),
# images per identity, and LFW-style folds x pairs of each kind per fold.
SUITE_IDS, SUITE_IMAGES_PER_ID, SUITE_FOLDS, SUITE_PAIRS_PER_KIND = 12, 4, 10, 3
TINYFACE_SIDE = 20  # TinyFace's faces are about 20 pixels high
MAT_HEADER, MAT_HEADER_BYTES = "MATLAB 5.0 MAT-file, written by tools.make_demo_data", 116


class Stream(IntEnum):
    """Independent random streams; every image has its own generator keyed by (seed, stream, ...)."""

    IDENTITY = 0
    TRAIN = 1
    PAIR_PLAN = 2
    PAIR_IMAGE = 3
    IJB_PLAN = 4
    IJB_MEDIA = 5
    IJB_FRAME = 6
    IJB_PLACEMENT = 7
    SHEET = 8
    SUITE_PLAN = 9
    SUITE_IMAGE = 10


@dataclass(frozen=True)
class DemoSpec:
    """What to generate; the identity index ranges of the three splits follow from the counts."""

    seed: int = 0
    num_train_ids: int = 300
    images_per_id: int = 30
    num_val_ids: int = 100
    num_pairs: int = 600
    num_ijb_ids: int = 100
    templates_per_id: int = 3

    def train_ids(self) -> range:
        return range(0, self.num_train_ids)

    def val_ids(self) -> range:
        return range(self.num_train_ids, self.num_train_ids + self.num_val_ids)

    def ijb_ids(self) -> range:
        start = self.num_train_ids + self.num_val_ids
        return range(start, start + self.num_ijb_ids)

    def validate(self) -> None:
        counts = {"--num-train-ids": self.num_train_ids, "--images-per-id": self.images_per_id,
                  "--num-val-ids": (self.num_val_ids, 2), "--num-pairs": (self.num_pairs, 10),
                  "--num-ijb-ids": (self.num_ijb_ids, 2), "--templates-per-id": (self.templates_per_id, 2)}
        for flag, value in counts.items():
            value, least = value if isinstance(value, tuple) else (value, 1)
            if value < least:
                raise UserError(f"{flag} is {value}; it must be at least {least}.")


def stream_rng(spec: DemoSpec, stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, int(stream), *keys])


def identity_of(spec: DemoSpec, index: int) -> Identity:
    """The person with global identity index `index` (the same in every split's bookkeeping)."""
    return sample_identity(stream_rng(spec, Stream.IDENTITY, index))


# ---- training set ----

def train_images(spec: DemoSpec, index: int) -> list[bytes]:
    """The JPEGs of training identity `index`."""
    person = identity_of(spec, index)
    images = []
    for number in range(spec.images_per_id):
        image, view = sample_aligned(person, stream_rng(spec, Stream.TRAIN, index, number))
        images.append(encode_jpeg(image, view.jpeg_quality))
    return images


def _train_task(task: tuple[DemoSpec, int]) -> list[bytes]:
    return train_images(*task)


def write_training_set(spec: DemoSpec, out_dir: Path, pool) -> None:
    """train.rec / train.idx / property; label = identity index."""
    labels = list(spec.train_ids())
    per_identity = pool_map(pool, _train_task, [(spec, label) for label in labels])
    records = ((IRHeader(0, float(label), 0, 0), payload)
               for label, payloads in zip(labels, per_identity) for payload in payloads)
    write_records(out_dir, labels, [spec.images_per_id] * len(labels), records, len(labels), (112, 112))


# ---- verification pairs ----

@dataclass(frozen=True)
class Pair:
    first: int  # identity index of the first image
    second: int  # identity index of the second image

    @property
    def same(self) -> bool:
        return self.first == self.second


def plan_pairs(spec: DemoSpec, hard: bool) -> list[Pair]:
    """Alternating same/different pairs on the held-out identities, so every fold is balanced.

    Impostors of the hard set share skin tone and hair colour with the first person when some
    held-out identity does, so colour cannot separate them.
    """
    rng = stream_rng(spec, Stream.PAIR_PLAN, int(hard))
    people = {index: identity_of(spec, index) for index in spec.val_ids()}
    pairs = []
    for number in range(spec.num_pairs):
        first = int(rng.choice(spec.val_ids()))
        if number % 2 == 0:
            pairs.append(Pair(first, first))
            continue
        others = [index for index in spec.val_ids() if index != first]
        if hard:
            colour = (people[first].skin, people[first].hair_colour)
            lookalikes = [index for index in others if (people[index].skin, people[index].hair_colour) == colour]
            others = lookalikes or others
        pairs.append(Pair(first, int(rng.choice(others))))
    return pairs


def pair_images(spec: DemoSpec, hard: bool, number: int, pair: Pair) -> tuple[bytes, bytes]:
    """The two JPEGs of pair `number` of the normal (hard=False) or hard set."""
    images = []
    for side, index in enumerate((pair.first, pair.second)):
        rng = stream_rng(spec, Stream.PAIR_IMAGE, int(hard), number, side)
        image, view = sample_aligned(identity_of(spec, index), rng, hard)
        images.append(encode_jpeg(image, view.jpeg_quality))
    return images[0], images[1]


def _pair_task(task: tuple[DemoSpec, bool, int, Pair]) -> tuple[bytes, bytes]:
    return pair_images(*task)


def write_verification_sets(spec: DemoSpec, out_dir: Path, pool) -> dict[str, list[list[int]]]:
    """demo_lfw.bin and demo_hard.bin; returns the identity indices of every pair, per set."""
    planned = {}
    for name, hard in zip(VERIFICATION_SETS, (False, True)):
        pairs = plan_pairs(spec, hard)
        images = pool_map(pool, _pair_task, [(spec, hard, number, pair) for number, pair in enumerate(pairs)])
        save_bin(out_dir / f"{name}.bin", [data for both in images for data in both], [p.same for p in pairs])
        planned[name] = [[pair.first, pair.second] for pair in pairs]
    return planned


# ---- IJB-C-format set ----

@dataclass(frozen=True)
class IjbImage:
    """One loose crop and its place in the protocol."""

    name: str  # file name under loose_crop/, e.g. "17.jpg"
    identity: int  # global identity index
    subject: int  # SUBJECT_ID of the 1:N files
    template: int
    media: int
    frame: int  # 0 for a still image or the first frame of a video
    video: bool  # the media is a video (several frames)
    hard: bool  # the media's nuisances are drawn from the hard ranges


@dataclass
class IjbPlan:
    images: list[IjbImage] = field(default_factory=list)
    verification_templates: list[list[int]] = field(default_factory=list)  # per subject
    galleries: dict[str, list[int]] = field(default_factory=dict)  # gallery name -> template ids
    template_subject: dict[int, int] = field(default_factory=dict)
    num_media: int = 0

    def add_template(self, rng: np.random.Generator, identity: int, subject: int) -> int:
        """A new template of 1 to 3 media, each a still image or a video of 2 to 4 frames."""
        template = len(self.template_subject) + 1
        self.template_subject[template] = subject
        for _ in range(int(rng.integers(1, 4))):
            self.num_media += 1
            media = self.num_media
            num_frames = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            hard = bool(rng.random() < 0.3)
            for frame in range(num_frames):
                name = f"{len(self.images) + 1}.jpg"
                self.images.append(IjbImage(name, identity, subject, template, media, frame, num_frames > 1,
                                            hard))
        return template

    def pairs(self) -> list[tuple[int, int, int]]:
        """(template 1, template 2, label): every pair of verification templates, genuine and impostor."""
        templates = sorted(t for per_subject in self.verification_templates for t in per_subject)
        return [(a, b, int(self.template_subject[a] == self.template_subject[b]))
                for a, b in itertools.combinations(templates, 2)]


def plan_ijb(spec: DemoSpec) -> IjbPlan:
    """Templates for 1:1 (also the 1:N probes) and one extra gallery template per gallery subject.

    Subjects are split into G1, G2 and no gallery, so some probes have no mate, as in the real protocol.
    """
    rng = stream_rng(spec, Stream.IJB_PLAN)
    plan = IjbPlan()
    subjects = {index: position + 1 for position, index in enumerate(spec.ijb_ids())}
    for index, subject in subjects.items():
        plan.verification_templates.append(
            [plan.add_template(rng, index, subject) for _ in range(spec.templates_per_id)])
    order = [int(index) for index in rng.permutation(spec.ijb_ids())]
    start = 0
    for name, fraction in GALLERY_FRACTIONS.items():
        count = max(1, round(fraction * len(order)))
        members = order[start:start + count]
        start += count
        plan.galleries[name] = [plan.add_template(rng, index, subjects[index]) for index in members]
    return plan


def ijb_view(spec: DemoSpec, image: IjbImage) -> View:
    """The pose, expression and scene of one IJB image; the frames of a video share the scene."""
    view = sample_view(stream_rng(spec, Stream.IJB_MEDIA, image.media), image.hard)
    if image.frame > 0:
        view = vary_view(view, stream_rng(spec, Stream.IJB_FRAME, image.media, image.frame))
    return view


def ijb_image(spec: DemoSpec, image: IjbImage) -> tuple[bytes, np.ndarray, float]:
    """(JPEG bytes, landmarks [5, 2], faceness) of one loose crop."""
    view = ijb_view(spec, image)
    face = render_loose(identity_of(spec, image.identity), view,
                        stream_rng(spec, Stream.IJB_PLACEMENT, image.media, image.frame))
    return encode_jpeg(face.image, view.jpeg_quality), face.landmarks, face.faceness


def _ijb_task(task: tuple[DemoSpec, IjbImage]) -> tuple[bytes, np.ndarray, float]:
    return ijb_image(*task)


def _write_csv(path: Path, plan: IjbPlan, templates: list[int]) -> None:
    wanted = set(templates)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["TEMPLATE_ID", "SUBJECT_ID", "FILENAME"])
    for image in plan.images:
        if image.template in wanted:
            folder = "frames" if image.video else "img"
            writer.writerow([image.template, image.subject, f"{folder}/{Path(image.name).stem}.jpg"])
    atomic_write_text(path, text.getvalue())


def write_ijb_set(spec: DemoSpec, out_dir: Path, pool) -> IjbPlan:
    """IJBC/loose_crop/ and IJBC/meta/ in the layout of insightface's IJB_release."""
    plan = plan_ijb(spec)
    crop_dir, meta_dir = out_dir / IJB_TARGET / "loose_crop", out_dir / IJB_TARGET / "meta"
    crop_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    rendered = pool_map(pool, _ijb_task, [(spec, image) for image in plan.images])
    landmark_lines, media_lines = [], []
    for image, (data, points, faceness) in zip(plan.images, rendered):
        atomic_write_bytes(crop_dir / image.name, data)
        coordinates = " ".join(f"{value:.3f}" for value in points.reshape(-1))  # [5, 2] -> x1 y1 ... x5 y5
        landmark_lines.append(f"{image.name} {coordinates} {faceness:.4f}\n")
        media_lines.append(f"{image.name} {image.template} {image.media}\n")
    prefix = IJB_TARGET.lower()
    atomic_write_text(meta_dir / f"{prefix}_name_5pts_score.txt", "".join(landmark_lines))
    atomic_write_text(meta_dir / f"{prefix}_face_tid_mid.txt", "".join(media_lines))
    atomic_write_text(meta_dir / f"{prefix}_template_pair_label.txt",
        "".join(f"{a} {b} {label}\n" for a, b, label in plan.pairs()))
    probes = [t for per_subject in plan.verification_templates for t in per_subject]
    _write_csv(meta_dir / f"{prefix}_1N_probe_mixed.csv", plan, probes)
    for name, templates in plan.galleries.items():
        _write_csv(meta_dir / f"{prefix}_1N_gallery_{name}.csv", plan, templates)
    return plan


# ---- benchmark-suite sets: LFW-style pairs.txt, RFW-like races, TinyFace-like identification ----

@dataclass(frozen=True)
class SuiteImage:
    """One image of a suite set: set number (0 LFW, 1-4 RFW races, 5 TinyFace), identity, image number."""

    group: int
    identity: int
    number: int
    tiny: bool = False


def suite_ids(spec: DemoSpec, group: int, count: int) -> list[int]:
    """`count` held-out identities for a suite set, a different slice per set (cycling through val_ids)."""
    ids = list(spec.val_ids())
    return [ids[(group * count + k) % len(ids)] for k in range(count)]


def person_name(index: int) -> str:
    return f"Person_{index:04d}"


def suite_image(spec: DemoSpec, image: SuiteImage) -> tuple[bytes, np.ndarray]:
    """(JPEG, landmarks [5, 2]) of a loose crop, or of a TINYFACE_SIDE-pixel aligned face (no landmarks)."""
    rng = stream_rng(spec, Stream.SUITE_IMAGE, image.group, image.identity, image.number)
    person = identity_of(spec, image.identity)
    if image.tiny:
        face, view = sample_aligned(person, rng)
        small = cv2.resize(face, (TINYFACE_SIDE, TINYFACE_SIDE), interpolation=cv2.INTER_AREA)
        return encode_jpeg(small, view.jpeg_quality), np.full((5, 2), np.nan)
    face = render_loose(person, sample_view(rng), rng)
    return encode_jpeg(face.image, 90), face.landmarks


def _suite_task(task: tuple[DemoSpec, SuiteImage]) -> tuple[bytes, np.ndarray]:
    return suite_image(*task)


def plan_lfw_pairs(spec: DemoSpec, group: int, ids: list[int]) -> list[str]:
    """Pair lines in LFW's order: per fold SUITE_PAIRS_PER_KIND same-person lines `name n1 n2`, then as many
    different-person lines `name1 n1 name2 n2` (image numbers from 1)."""
    rng = stream_rng(spec, Stream.SUITE_PLAN, group)
    lines = []
    for _ in range(SUITE_FOLDS):
        for _ in range(SUITE_PAIRS_PER_KIND):
            person = ids[int(rng.integers(len(ids)))]
            first, second = rng.choice(SUITE_IMAGES_PER_ID, 2, replace=False) + 1
            lines.append(f"{person_name(person)}\t{first}\t{second}")
        for _ in range(SUITE_PAIRS_PER_KIND):
            a, b = rng.choice(len(ids), 2, replace=False)
            first, second = rng.integers(1, SUITE_IMAGES_PER_ID + 1, 2)
            lines.append(f"{person_name(ids[a])}\t{first}\t{person_name(ids[b])}\t{second}")
    return lines


def _write_faces(spec: DemoSpec, pool, images: list[SuiteImage], paths: list[Path]) -> list[np.ndarray]:
    rendered = pool_map(pool, _suite_task, [(spec, image) for image in images])
    for path, (data, _) in zip(paths, rendered):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return [points for _, points in rendered]


def _landmark_line(name: str, points: np.ndarray, extra: str = "") -> str:
    return " ".join([name, *([extra] if extra else []), *(f"{v:.3f}" for v in points.reshape(-1))]) + "\n"


def write_lfw_style_set(spec: DemoSpec, out_dir: Path, pool) -> int:
    """lfw/pairs.txt (header `<folds> <pairs of each kind>`), lfw/<name>/<name>_NNNN.jpg loose crops and
    lfw/lfw_landmarks.txt (path and 5 points per image); returns the number of pairs."""
    ids = suite_ids(spec, 0, SUITE_IDS)
    images = [SuiteImage(0, index, number) for index in ids for number in range(1, SUITE_IMAGES_PER_ID + 1)]
    names = [f"{person_name(i.identity)}/{person_name(i.identity)}_{i.number:04d}.jpg" for i in images]
    points = _write_faces(spec, pool, images, [out_dir / "lfw" / name for name in names])
    lines = plan_lfw_pairs(spec, 0, ids)
    atomic_write_text(out_dir / "lfw" / "pairs.txt",
                      f"{SUITE_FOLDS}\t{SUITE_PAIRS_PER_KIND}\n" + "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "lfw" / "lfw_landmarks.txt",
                      "".join(_landmark_line(name, p) for name, p in zip(names, points)))
    return len(lines)


def write_rfw_like_set(spec: DemoSpec, out_dir: Path, pool) -> int:
    """RFW/test/data/<race>/<name>/<name>_NNNN.jpg and RFW/test/txts/<race>/<race>_pairs.txt (LFW's lines,
    tab-separated, no header) and <race>_lmk.txt (path, a number, 5 points) for four groups of identities."""
    total = 0
    for group, race in enumerate(RFW_RACES, start=1):
        ids = suite_ids(spec, group, SUITE_IDS)
        images = [SuiteImage(group, index, number) for index in ids for number in range(1, SUITE_IMAGES_PER_ID + 1)]
        names = [f"{person_name(i.identity)}/{person_name(i.identity)}_{i.number:04d}.jpg" for i in images]
        points = _write_faces(spec, pool, images, [out_dir / "RFW" / "test" / "data" / race / n for n in names])
        lines = plan_lfw_pairs(spec, group, ids)
        txts = out_dir / "RFW" / "test" / "txts" / race
        txts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(txts / f"{race}_pairs.txt", "\n".join(lines) + "\n")
        atomic_write_text(txts / f"{race}_lmk.txt", "".join(
            _landmark_line(f"./test/data/{race}/{name}", p, "0") for name, p in zip(names, points)))
        total += len(lines)
    return total


def _save_id_list(path: Path, names_key: str, ids_key: str, names: list[str], ids: list[int]) -> None:
    from scipy.io import savemat

    cells = np.empty((len(names), 1), dtype=object)  # a MATLAB cell array of file names, as released
    cells[:, 0] = names
    stream = io.BytesIO()
    savemat(stream, {names_key: cells, ids_key: np.asarray(ids, dtype=np.float64)[:, None]})
    # The first 116 bytes are free text in which savemat puts the time; a fixed text keeps the bytes reproducible.
    header = MAT_HEADER.ljust(MAT_HEADER_BYTES).encode("ascii")
    atomic_write_bytes(path, header + stream.getvalue()[MAT_HEADER_BYTES:])


def write_tinyface_like_set(spec: DemoSpec, out_dir: Path, pool) -> int:
    """tinyface/Testing_Set/{Probe, Gallery_Match, Gallery_Distractor}/ with TINYFACE_SIDE-pixel faces and
    probe_img_ID_pairs.mat / gallery_match_img_ID_pairs.mat (scipy.io.savemat); returns the image count.
    Identity k has one probe (image 1) and SUITE_IMAGES_PER_ID - 1 gallery images; distractors show
    identities that have no probe."""
    ids = suite_ids(spec, 5, SUITE_IDS)
    matched, distractors = ids[:SUITE_IDS // 2], ids[SUITE_IDS // 2:]
    testing = out_dir / "tinyface" / "Testing_Set"
    probes = [SuiteImage(5, index, 1, tiny=True) for index in matched]
    gallery = [SuiteImage(5, index, n, tiny=True) for index in matched for n in range(2, SUITE_IMAGES_PER_ID + 1)]
    others = [SuiteImage(5, index, n, tiny=True) for index in distractors for n in range(1, SUITE_IMAGES_PER_ID + 1)]
    parts = (("Probe", probes), ("Gallery_Match", gallery), ("Gallery_Distractor", others))
    for part, images in parts:
        names = [f"{i.identity}_{i.number}.jpg" for i in images]
        _write_faces(spec, pool, images, [testing / part / name for name in names])
        if part == "Probe":
            _save_id_list(testing / "probe_img_ID_pairs.mat", "probe_set", "probe_ids", names,
                          [i.identity + 1 for i in images])
        elif part == "Gallery_Match":
            _save_id_list(testing / "gallery_match_img_ID_pairs.mat", "gallery_set", "gallery_ids", names,
                          [i.identity + 1 for i in images])
    return sum(len(images) for _, images in parts)


# ---- the whole set ----

def pool_map(pool, function, tasks: list) -> list:
    """`function` over `tasks` in order, in the process pool when there is one."""
    if pool is None:
        return [function(task) for task in tasks]
    return list(pool.map(function, tasks, chunksize=max(1, len(tasks) // 64)))


def _single_thread_opencv() -> None:
    cv2.setNumThreads(1)


def generate(spec: DemoSpec, out_dir: str | Path, num_workers: int = 1, overwrite: bool = False,
             log=print) -> dict:
    """Write the whole demo set under `out_dir`; returns the manifest (also written as manifest.json)."""
    spec.validate()
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").exists():
        if not overwrite:
            raise UserError(f"'{out_dir}' already holds demo data; choose another --out or pass --overwrite.")
        for stale in (out_dir / IJB_TARGET / "loose_crop", out_dir / "lfw", out_dir / "RFW", out_dir / "tinyface"):
            shutil.rmtree(stale, ignore_errors=True)  # no stale images stay
    out_dir.mkdir(parents=True, exist_ok=True)
    # Workers come from a fork server: a child forked from a process that already ran OpenCV's thread pool
    # can deadlock inside OpenCV (seen in the test suite).
    pool = (ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("forkserver"),
                                initializer=_single_thread_opencv) if num_workers > 1 else None)
    try:
        start = time.perf_counter()
        write_training_set(spec, out_dir, pool)
        log(f"training set: {spec.num_train_ids} identities x {spec.images_per_id} images "
            f"({time.perf_counter() - start:.1f} s)")
        pairs = write_verification_sets(spec, out_dir, pool)
        log(f"verification sets: {', '.join(VERIFICATION_SETS)}, {spec.num_pairs} pairs each "
            f"({time.perf_counter() - start:.1f} s)")
        plan = write_ijb_set(spec, out_dir, pool)
        log(f"IJB-C-format set: {len(plan.images)} images, {len(plan.template_subject)} templates, "
            f"{len(plan.pairs())} pairs ({time.perf_counter() - start:.1f} s)")
        num_lfw = write_lfw_style_set(spec, out_dir, pool)
        num_rfw = write_rfw_like_set(spec, out_dir, pool)
        num_tiny = write_tinyface_like_set(spec, out_dir, pool)
        log(f"suite sets: lfw/ {num_lfw} pairs, RFW/ {num_rfw} pairs in {len(RFW_RACES)} races, tinyface/ "
            f"{num_tiny} images ({time.perf_counter() - start:.1f} s)")
    finally:
        if pool is not None:
            pool.shutdown()
    manifest = {
        "spec": asdict(spec),
        "splits": {name: [ids.start, ids.stop] for name, ids in
                   (("train", spec.train_ids()), ("val", spec.val_ids()), ("ijb", spec.ijb_ids()))},
        "fingerprints": {name: [identity_of(spec, index).fingerprint() for index in ids] for name, ids in
                         (("train", spec.train_ids()), ("val", spec.val_ids()), ("ijb", spec.ijb_ids()))},
        "pairs": pairs,
        "ijb_images": [[image.name, image.identity, image.subject, image.template, image.media]
                       for image in plan.images],
        "ijb_galleries": plan.galleries,
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---- trivial baselines ----

def colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histograms [N, bins^3] of uint8 images [N, 3, H, W]."""
    levels = (images.astype(np.int64) * bins) // 256  # [N, 3, H, W]
    cells = (levels[:, 0] * bins + levels[:, 1]) * bins + levels[:, 2]  # [N, H, W]
    offsets = np.arange(len(images))[:, None] * bins**3  # [N, 1]
    counts = np.bincount((cells.reshape(len(images), -1) + offsets).ravel(), minlength=len(images) * bins**3)
    return counts.reshape(len(images), bins**3).astype(np.float64)  # [N, bins^3]


def cosine_accuracy(features: np.ndarray, issame: np.ndarray) -> float:
    """10-fold verification accuracy (the protocol of eval.verification) of the cosine similarity of
    features [2P, D], with a threshold grid fine enough for the narrow score range of raw features."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    distances = np.sum((unit[0::2] - unit[1::2]) ** 2, axis=1)  # [P], 2 - 2 cos
    return float(kfold_accuracy(distances, issame, thresholds=np.linspace(0, 4, 8001)).mean())


def trivial_baselines(bin_path: str | Path) -> dict[str, float]:
    """Accuracy of image similarity without learning: raw pixels, standardised pixels, colour histograms."""
    encoded, issame = load_bin(bin_path)
    images = decode_bin_images(encoded, source=str(bin_path)).numpy()  # [2P, 3, 112, 112]
    issame = np.asarray(issame)
    pixels = images.reshape(len(images), -1).astype(np.float64)  # [2P, 3*112*112]
    standardised = (pixels - pixels.mean(1, keepdims=True)) / (pixels.std(1, keepdims=True) + 1e-6)
    return {"raw pixels": cosine_accuracy(pixels, issame),
            "standardised pixels": cosine_accuracy(standardised, issame),
            "colour histogram": cosine_accuracy(colour_histograms(images), issame)}


def check(out_dir: str | Path) -> dict[str, dict[str, float]]:
    """Baselines of every verification set under `out_dir`."""
    out_dir = Path(out_dir)
    for name in VERIFICATION_SETS:
        if not (out_dir / f"{name}.bin").is_file():
            raise UserError(f"'{out_dir / name}.bin' does not exist; generate the demo data first: "
                            f"python -m tools.make_demo_data --out {out_dir}")
    return {name: trivial_baselines(out_dir / f"{name}.bin") for name in VERIFICATION_SETS}


# ---- contact sheet ----

def contact_sheet(spec: DemoSpec, path: str | Path, num_ids: int = 6, num_views: int = 7) -> None:
    """PNG grid: one training identity per row; `num_views` normal photos, two hard ones, and a loose
    crop with its landmarks in red."""
    rows = []
    for index in range(min(num_ids, spec.num_train_ids)):
        person = identity_of(spec, index)
        tiles = []
        for number in range(num_views + 2):
            rng = stream_rng(spec, Stream.SHEET, index, number)
            tiles.append(sample_aligned(person, rng, hard=number >= num_views)[0])
        rng = stream_rng(spec, Stream.SHEET, index, num_views + 2)
        face = render_loose(person, sample_view(rng), rng)
        tiles.append(_letterbox(face.image, face.landmarks, 112))
        rows.append(np.concatenate(tiles, axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    # A 256-colour palette keeps the README image near 300 KB instead of 1.4 MB.
    sheet = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"the contact sheet '{path}' must be a .png file.")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def _letterbox(image: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """`image` shrunk into a white size x size tile, with `points` [5, 2] marked in red."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    for x, y in points * scale + (left, top):
        cv2.circle(tile, (round(x), round(y)), 1, (255, 0, 0), -1, cv2.LINE_AA)
    return tile


# ---- command line ----

@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = DemoSpec()
    parser.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-train-ids", type=int, default=defaults.num_train_ids)
    parser.add_argument("--images-per-id", type=int, default=defaults.images_per_id)
    parser.add_argument("--num-val-ids", type=int, default=defaults.num_val_ids)
    parser.add_argument("--num-pairs", type=int, default=defaults.num_pairs, help="pairs per .bin set")
    parser.add_argument("--num-ijb-ids", type=int, default=defaults.num_ijb_ids)
    parser.add_argument("--templates-per-id", type=int, default=defaults.templates_per_id,
                        help="1:1 templates per IJB subject")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    parser.add_argument("--contact-sheet", default=None, help="also write a PNG of sample identities here")
    parser.add_argument("--overwrite", action="store_true", help="replace demo data already in --out")
    parser.add_argument("--check", action="store_true",
                        help="only print the trivial baselines of the .bin sets already in --out")
    args = parser.parse_args(argv)
    spec = DemoSpec(args.seed, args.num_train_ids, args.images_per_id, args.num_val_ids, args.num_pairs,
                    args.num_ijb_ids, args.templates_per_id)
    if not args.check:
        start = time.perf_counter()
        generate(spec, args.out, args.workers, args.overwrite)
        if args.contact_sheet:
            contact_sheet(spec, args.contact_sheet)
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    for name, results in check(args.out).items():
        shown = ", ".join(f"{method} {accuracy * 100:.1f}%" for method, accuracy in results.items())
        print(f"{name}: trivial baselines (10-fold accuracy of cosine similarity): {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
