"""Benchmark `eval_ijbc.py --features` end to end against the released scoring, and the image pipeline.

    python -m bench.bench_ijb                 # a tenth of IJB-C
    python -m bench.bench_ijb --scale 1       # full IJB-C: 469,375 images, 23,124 templates, 15.7 M pairs

Part 1 writes synthetic meta files of IJB-C's shape (templates of 1 to ~100 images grouped into media,
3,531 gallery and 19,593 probe templates) and a features .npz (random 512-d float32 features and flip
features that cluster by subject, faceness) to a temporary folder, for two pair structures:
"gallery x probe" (as the IJB-C protocol: 19,557 genuine pairs) and "all templates" (pairs drawn from
all templates, as a custom protocol may). For each it times, as separate processes and imports
included, `eval_ijbc.py --features ... --protocol 1:1` (ours) and bench/released_ijb.py (the released
scoring: pandas meta, per-template loop, 100,000-pair batches, roc_curve, plot), prints both times, the
ratio and the largest difference between the two TAR tables.
Part 2 measures the decode + align pipeline (AlignedFaces through the DataLoader) in images/s with 0, 1
and 2 workers on synthetic loose crops (JPEG), without a network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from eval.align import ARCFACE_TEMPLATE
from eval.ijb_images import AlignedFaces, aligned_loader
from utils.opencv import cv2

# The sizes of the IJB-C 1:1 protocol.
IJBC_IMAGES, IJBC_TEMPLATES, IJBC_GALLERY = 469_375, 23_124, 3_531
IJBC_PAIRS, IJBC_GENUINE = 15_658_489, 19_557
NOISE = 4.0  # image noise relative to the subject centres (sets how hard the synthetic task is)
STRUCTURES = ("gallery x probe", "all templates")
REPOSITORY = Path(__file__).resolve().parent.parent
LINES_PER_CHUNK = 1 << 20


def synthetic_images(scale: float, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Image meta, features and template subjects of IJB-C's shape, sizes multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    num_images, num_templates = int(IJBC_IMAGES * scale), int(IJBC_TEMPLATES * scale)
    num_gallery = int(IJBC_GALLERY * scale)
    # Heavy-tailed template sizes, every template at least one image; images listed template by template.
    extra = rng.choice(num_templates, num_images - num_templates, p=_lognormal_shares(rng, num_templates))
    template_rows = np.sort(np.concatenate([np.arange(num_templates), extra]))  # [N]
    template_ids = rng.choice(10 * num_templates, num_templates, replace=False) + 1  # sparse ids as in IJB-C
    # Consecutive images of a template share a media (video frames) until a new media starts.
    starts_media = (rng.random(num_images) < 0.3) | np.r_[True, template_rows[1:] != template_rows[:-1]]
    # Subjects: gallery template g is subject g; probes belong to random gallery subjects.
    subjects = np.concatenate([np.arange(num_gallery), rng.integers(0, num_gallery, num_templates - num_gallery)])
    centres = rng.standard_normal((num_gallery, dim), dtype=np.float32)
    feats = centres[subjects[template_rows]]  # [N, D]
    feats += NOISE * rng.standard_normal((num_images, dim), dtype=np.float32)
    feats_flip = feats + 0.5 * rng.standard_normal((num_images, dim), dtype=np.float32)
    return dict(feats=feats, feats_flip=feats_flip, faceness=rng.uniform(0.3, 1.0, num_images).astype(np.float32),
                landmarks=rng.uniform(20, 180, (num_images, 10)), templates=template_ids[template_rows],
                medias=np.cumsum(starts_media) + 100_000, template_ids=template_ids, subjects=subjects,
                num_gallery=np.array(num_gallery))


def synthetic_pairs(images: dict[str, np.ndarray], scale: float, structure: str,
                    seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template 1, template 2, label) ids [P]: gallery x probe pairs, or pairs drawn from all templates."""
    rng = np.random.default_rng(seed)
    subjects, num_gallery = images["subjects"], int(images["num_gallery"])
    num_templates, num_pairs = len(subjects), int(IJBC_PAIRS * scale)
    num_genuine = min(int(IJBC_GENUINE * scale), num_templates - num_gallery)
    # Genuine: a probe with its subject's gallery template.
    genuine_probes = rng.choice(np.arange(num_gallery, num_templates), num_genuine, replace=False)
    if structure == "gallery x probe":
        second = rng.integers(num_gallery, num_templates, num_pairs - num_genuine)
        first = (subjects[second] + rng.integers(1, num_gallery, len(second))) % num_gallery  # another subject
    else:
        first, second = rng.integers(0, num_templates, (2, num_pairs - num_genuine))
    first = np.concatenate([subjects[genuine_probes], first])
    second = np.concatenate([genuine_probes, second])
    order = rng.permutation(num_pairs)
    first, second = first[order], second[order]
    labels = (subjects[first] == subjects[second]).astype(np.int64)
    return images["template_ids"][first], images["template_ids"][second], labels


def _lognormal_shares(rng: np.random.Generator, count: int) -> np.ndarray:
    shares = rng.lognormal(0.0, 1.0, count)
    return shares / shares.sum()


def _fixed_width_text(columns: list[tuple[np.ndarray, int, int, str]]) -> bytes:
    """Lines of space-separated non-negative numbers, each column (values, integer digits, decimals,
    suffix) written zero-padded: built as a byte matrix, which Python's formatting is 50x slower at."""
    parts = []
    for values, width, decimals, suffix in columns:
        scaled = np.rint(np.asarray(values, dtype=np.float64) * 10**decimals).astype(np.int64)  # [L]
        powers = 10 ** np.arange(width + decimals - 1, -1, -1, dtype=np.int64)
        chars = (scaled[:, None] // powers % 10 + ord("0")).astype(np.uint8)  # [L, digits]
        if decimals:
            chars = np.insert(chars, width, ord("."), axis=1)
        tail = np.frombuffer(suffix.encode() + b" ", dtype=np.uint8)
        parts += [chars, np.broadcast_to(tail, (len(chars), len(tail)))]
    lines = np.concatenate(parts, axis=1)  # [L, line length]
    lines[:, -1] = ord("\n")
    return lines.tobytes()


def _write_lines(path: Path, columns: list[tuple[np.ndarray, int, int, str]]) -> None:
    with open(path, "wb") as stream:
        for start in range(0, len(columns[0][0]), LINES_PER_CHUNK):
            stream.write(_fixed_width_text([(values[start:start + LINES_PER_CHUNK], *rest)
                                            for values, *rest in columns]))


def write_protocol(folder: Path, images: dict[str, np.ndarray], pairs) -> None:
    """<folder>/meta/ijbc_*.txt as the IJB-C release lays them out."""
    meta = folder / "meta"
    meta.mkdir(parents=True)
    names = np.arange(1, len(images["feats"]) + 1)
    _write_lines(meta / "ijbc_name_5pts_score.txt", [(names, 7, 0, ".jpg")]
                 + [(images["landmarks"][:, k], 3, 2, "") for k in range(10)] + [(images["faceness"], 1, 3, "")])
    _write_lines(meta / "ijbc_face_tid_mid.txt", [(names, 7, 0, ".jpg"), (images["templates"], 7, 0, ""),
                                                   (images["medias"], 7, 0, "")])
    first, second, labels = pairs
    _write_lines(meta / "ijbc_template_pair_label.txt", [(first, 6, 0, ""), (second, 6, 0, ""), (labels, 1, 0, "")])


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPOSITORY, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_end_to_end(scale: float, dim: int, structures: list[str]) -> None:
    start = time.perf_counter()
    images = synthetic_images(scale, dim)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        features = folder / "ijbc_features.npz"
        np.savez(features, feats=images["feats"], feats_flip=images["feats_flip"], faceness=images["faceness"])
        protocols = {}
        for index, structure in enumerate(structures):
            pairs = synthetic_pairs(images, scale, structure)
            protocols[structure] = (folder / f"IJBC{index}", int(pairs[2].sum()), len(pairs[2]))
            write_protocol(protocols[structure][0], images, pairs)
            del pairs
        num_images, num_templates = len(images["feats"]), len(images["template_ids"])
        del images  # the two processes measured below load what they need themselves
        print(f"synthetic IJB-C x{scale:g}: {num_images:,} images, {num_templates:,} templates, {dim}-d "
              f"features; files written in {time.perf_counter() - start:.1f} s")
        for structure, (image_path, num_genuine, num_pairs) in protocols.items():
            ours_dir, released_dir = folder / "ours", folder / "released"
            ours = _timed([sys.executable, "eval_ijbc.py", "--features", str(features), "--image-path",
                           str(image_path), "--result-dir", str(folder), "--job", "ours", "--target", "IJBC",
                           "--protocol", "1:1"])
            released = _timed([sys.executable, "-m", "bench.released_ijb", "--features", str(features),
                               "--image-path", str(image_path), "--result-dir", str(released_dir)])
            ours_table = json.loads((ours_dir / "ijbc_result.json").read_text())
            released_table = json.loads((released_dir / "ijbc_result.json").read_text())
            difference = max(abs(ours_table[key] - released_table[key]) for key in released_table)
            print(f"{structure}: {num_pairs:,} pairs ({num_genuine:,} genuine): released {released:.1f} s, "
                  f"ours {ours:.1f} s, {released / ours:.1f}x; tables differ by at most {difference:.4f} "
                  "points")
            print("  TAR@FAR (%) released/ours  " + "  ".join(
                f"{key}: {released_table[key]:.2f}/{ours_table[key]:.2f}" for key in released_table))


def write_loose_crops(folder: Path, count: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """JPEG loose crops (150-300 px) of smooth synthetic faces with the landmarks they were warped by."""
    rng = np.random.default_rng(seed)
    names, landmarks = [], []
    for index in range(count):
        size = int(rng.integers(150, 300))
        face = cv2.resize(rng.uniform(0, 255, (8, 8, 3)).astype(np.float32), (112, 112)).astype(np.uint8)
        theta, scale = rng.uniform(-0.3, 0.3), size / 112 * rng.uniform(0.6, 0.8)
        rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        forward = np.hstack([rotation, rng.uniform(0, size * 0.2, (2, 1))])  # aligned -> loose
        name = f"{index + 1}.jpg"
        cv2.imwrite(str(folder / name), cv2.warpAffine(face, forward, (size, size)))
        names.append(name)
        landmarks.append(ARCFACE_TEMPLATE @ rotation.T + forward[:, 2])
    return names, np.asarray(landmarks, dtype=np.float32)


def _images_per_second(loader, num_images: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return num_images / (time.perf_counter() - start)


def bench_pipeline(num_images: int, batch_size: int, worker_counts: list[int]) -> None:
    """Cold: aligned_loader as eval_ijbc uses it, worker start-up included. Warm: the same loader settings
    with persistent workers, second pass, i.e. the rate of a long run."""
    with tempfile.TemporaryDirectory() as folder:
        names, landmarks = write_loose_crops(Path(folder), num_images)
        dataset = AlignedFaces(folder, names, landmarks)
        print(f"image pipeline: {num_images} JPEG loose crops (150-300 px), decode + align, batch {batch_size}")
        for workers in worker_counts:
            cold = _images_per_second(aligned_loader(dataset, batch_size, workers), num_images)
            loader = aligned_loader(dataset, batch_size, workers)
            if workers:
                loader = DataLoader(dataset, batch_size=batch_size, collate_fn=loader.collate_fn,
                                    num_workers=workers, worker_init_fn=loader.worker_init_fn,
                                    multiprocessing_context=loader.multiprocessing_context,
                                    persistent_workers=True)
                _images_per_second(loader, num_images)  # starts the workers
            warm = _images_per_second(loader, num_images)
            print(f"  {workers} workers: {warm:7.0f} images/s warm, {cold:7.0f} images/s cold (start-up "
                  "included)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the IJB-C sizes (1 = full)")
    parser.add_argument("--dim", type=int, default=512, help="feature size")
    parser.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    parser.add_argument("--pipeline-images", type=int, default=1024, help="loose crops for part 2 (0: skip)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-protocol", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_protocol:
        bench_end_to_end(args.scale, args.dim, args.structures)
    if args.pipeline_images:
        bench_pipeline(args.pipeline_images, args.batch_size, args.workers)


if __name__ == "__main__":
    main()
