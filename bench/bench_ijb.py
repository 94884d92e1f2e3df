"""Benchmark the IJB-C protocol math (ours vs the released per-template loop) and the image pipeline.

    python -m bench.bench_ijb                 # a quarter of IJB-C, about 2 minutes on 2 cores
    python -m bench.bench_ijb --scale 1       # full IJB-C: 469,375 images, 23,124 templates, 15.7 M pairs

Part 1 builds synthetic meta of IJB-C's shape (templates of 1 to ~100 images grouped into media, 3,531
gallery and 19,593 probe templates, probe x gallery pairs, 19,557 of them genuine) with random 512-d
float32 features that cluster by subject. It times, in the same process, eval.ijb (sparse pooling, block
pair scores) against a straightforward implementation of the released algorithm (a Python loop over
templates with np.where / np.unique per media, pair scores gathered 100,000 pairs at a time), both ending
in scikit-learn's roc_curve and the nearest-FPR table, and reports time, peak resident memory above the
inputs (Linux), the speed ratio, and whether the two tables agree.
Part 2 measures the decode + align pipeline (AlignedFaces through the DataLoader) in images/s with 0, 1
and 2 workers on synthetic loose crops (JPEG), without a network.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from sklearn.preprocessing import normalize
from torch.utils.data import DataLoader

from eval import ijb
from eval.align import ARCFACE_TEMPLATE
from eval.ijb_images import AlignedFaces, aligned_loader

# The sizes of the IJB-C 1:1 protocol.
IJBC_IMAGES, IJBC_TEMPLATES, IJBC_GALLERY = 469_375, 23_124, 3_531
IJBC_PAIRS, IJBC_GENUINE = 15_658_489, 19_557
NOISE = 4.0  # image noise relative to the subject centres (sets how hard the synthetic task is)


def synthetic_protocol(scale: float, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Meta arrays and features of IJB-C's shape, sizes multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    num_images, num_templates = int(IJBC_IMAGES * scale), int(IJBC_TEMPLATES * scale)
    num_gallery, num_pairs = int(IJBC_GALLERY * scale), int(IJBC_PAIRS * scale)
    num_genuine = min(int(IJBC_GENUINE * scale), num_templates - num_gallery)
    # Heavy-tailed template sizes, every template at least one image; images listed template by template.
    extra = rng.choice(num_templates, num_images - num_templates, p=_lognormal_shares(rng, num_templates))
    template_rows = np.sort(np.concatenate([np.arange(num_templates), extra]))  # [N]
    template_ids = rng.choice(10 * num_templates, num_templates, replace=False) + 1  # sparse ids as in IJB-C
    templates = template_ids[template_rows]
    # Consecutive images of a template share a media (video frames) until a new media starts.
    starts_media = (rng.random(num_images) < 0.3) | np.r_[True, template_rows[1:] != template_rows[:-1]]
    medias = np.cumsum(starts_media) + 100_000
    # Subjects: gallery template g is subject g; probes belong to random gallery subjects.
    subjects = np.concatenate([np.arange(num_gallery), rng.integers(0, num_gallery, num_templates - num_gallery)])
    centres = rng.standard_normal((num_gallery, dim), dtype=np.float32)
    feats = centres[subjects[template_rows]]  # [N, D]
    feats += NOISE * rng.standard_normal((num_images, dim), dtype=np.float32)
    feats_flip = feats + 0.5 * rng.standard_normal((num_images, dim), dtype=np.float32)
    faceness = rng.uniform(0.3, 1.0, num_images).astype(np.float32)
    # Pairs: gallery template x probe template; genuine ones pair a probe with its subject's gallery template.
    genuine_probes = rng.choice(np.arange(num_gallery, num_templates), num_genuine, replace=False)
    impostor_probes = rng.integers(num_gallery, num_templates, num_pairs - num_genuine)
    impostor_gallery = (subjects[impostor_probes] + rng.integers(1, num_gallery, len(impostor_probes))) \
        % num_gallery  # any subject but the probe's
    first = np.concatenate([subjects[genuine_probes], impostor_gallery])
    second = np.concatenate([genuine_probes, impostor_probes])
    labels = (subjects[first] == subjects[second]).astype(np.int64)
    order = rng.permutation(num_pairs)
    return dict(feats=feats, feats_flip=feats_flip, faceness=faceness, templates=templates, medias=medias,
                first=template_ids[first[order]], second=template_ids[second[order]], labels=labels[order])


def _lognormal_shares(rng: np.random.Generator, count: int) -> np.ndarray:
    shares = rng.lognormal(0.0, 1.0, count)
    return shares / shares.sum()


# ---- the released algorithm, written plainly ----

def released_template_features(image_feats: np.ndarray, templates: np.ndarray,
                               medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template at a time: find its images, average each media, sum the media, then L2-normalise."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), image_feats.shape[1]))
    for row, template in enumerate(unique_templates):
        (members,) = np.where(templates == template)
        member_feats, member_medias = image_feats[members], medias[members]
        unique_medias, media_counts = np.unique(member_medias, return_counts=True)
        media_feats = []
        for media, count in zip(unique_medias, media_counts):
            (in_media,) = np.where(member_medias == media)
            media_feats.append(member_feats[in_media] if count == 1
                               else np.mean(member_feats[in_media], axis=0, keepdims=True))
        template_feats[row] = np.sum(np.array(media_feats), axis=0)
    return unique_templates, normalize(template_feats)


def released_pair_scores(template_feats: np.ndarray, unique_templates: np.ndarray, first: np.ndarray,
                         second: np.ndarray, batch_size: int = 100_000) -> np.ndarray:
    """Look-up table from template id to row, then gathered dot products in batches of pairs."""
    row_of = np.zeros(unique_templates.max() + 1, dtype=np.int64)
    row_of[unique_templates] = np.arange(len(unique_templates))
    scores = np.zeros(len(first))
    for start in range(0, len(first), batch_size):
        feats_a = template_feats[row_of[first[start:start + batch_size]]]  # [b, D]
        feats_b = template_feats[row_of[second[start:start + batch_size]]]  # [b, D]
        scores[start:start + batch_size] = np.sum(feats_a * feats_b, axis=-1)
    return scores


def released_table(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    fpr, tpr = ijb.roc(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    table = {}
    for far in ijb.FARS:
        _, nearest = min(zip(abs(fpr - far), range(len(fpr))))
        table[ijb.far_key(far)] = tpr[nearest] * 100
    return table


def run_released(data: dict[str, np.ndarray]) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    seconds = {}
    start = time.perf_counter()
    image_feats = (data["feats"] + data["feats_flip"]) * data["faceness"][:, None]
    unique_templates, template_feats = released_template_features(image_feats, data["templates"],
                                                                  data["medias"])
    del image_feats
    seconds["pooling"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = released_pair_scores(template_feats, unique_templates, data["first"], data["second"])
    seconds["pair scores"] = time.perf_counter() - start
    start = time.perf_counter()
    table = released_table(data["labels"], scores)
    seconds["roc + table"] = time.perf_counter() - start
    return table, scores, seconds


def run_ours(data: dict[str, np.ndarray]) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    seconds = {}
    start = time.perf_counter()
    template_ids, template_feats = ijb.template_features(data["feats"], data["templates"], data["medias"],
                                                         data["feats_flip"], data["faceness"])
    seconds["pooling"] = time.perf_counter() - start
    start = time.perf_counter()
    rows_a, _ = ijb.template_rows_of(template_ids, data["first"])
    rows_b, _ = ijb.template_rows_of(template_ids, data["second"])
    scores = ijb.pair_scores(template_feats, rows_a, rows_b)
    del rows_a, rows_b  # as eval_ijbc does before the ROC
    seconds["pair scores"] = time.perf_counter() - start
    start = time.perf_counter()
    fpr, tpr = ijb.roc(data["labels"], scores)
    table = ijb.tar_at_far(fpr, tpr)
    seconds["roc + table"] = time.perf_counter() - start
    return table, scores, seconds


def _memory_mib() -> tuple[int, int] | None:
    """(resident, peak resident) MiB of this process from /proc, or None where that is not available."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def measured(run: Callable, data: dict[str, np.ndarray]):
    """run(data) and the peak resident memory it added, in MiB (None when the peak cannot be reset).

    Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS counter (Linux), so each run's peak
    is its own; tracemalloc would slow the released loop's many small allocations.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _memory_mib()
    except OSError:
        before = None
    result = run(data)
    if before is None:
        return result, None
    return result, _memory_mib()[1] - before[0]


def bench_protocol(scale: float, dim: int) -> None:
    start = time.perf_counter()
    data = synthetic_protocol(scale, dim)
    print(f"synthetic IJB-C x{scale:g}: {len(data['feats']):,} images, {len(np.unique(data['templates'])):,} "
          f"templates, {len(data['labels']):,} pairs ({int(data['labels'].sum()):,} genuine), {dim}-d "
          f"features; built in {time.perf_counter() - start:.1f} s")
    (ours_table, ours_scores, ours_seconds), ours_peak = measured(run_ours, data)
    (ref_table, ref_scores, ref_seconds), ref_peak = measured(run_released, data)
    print(f"{'stage':<14}{'released loop':>16}{'ours':>10}{'ratio':>9}")
    for stage in ours_seconds:
        print(f"{stage:<14}{ref_seconds[stage]:>14.2f} s{ours_seconds[stage]:>8.2f} s"
              f"{ref_seconds[stage] / ours_seconds[stage]:>8.1f}x")
    ref_total, ours_total = sum(ref_seconds.values()), sum(ours_seconds.values())
    print(f"{'total':<14}{ref_total:>14.2f} s{ours_total:>8.2f} s{ref_total / ours_total:>8.1f}x")
    if ours_peak is not None:
        print(f"{'peak memory':<14}{ref_peak:>12} MiB{ours_peak:>6} MiB   (resident, above the inputs)")
    print(f"max |score difference| {np.abs(ours_scores - ref_scores).max():.2e}")
    same = all(f"{ours_table[k]:.2f}" == f"{ref_table[k]:.2f}" for k in ref_table)
    print("TAR@FAR (%)   " + "  ".join(f"{k}: {ref_table[k]:.2f}/{ours_table[k]:.2f}" for k in ref_table)
          + f"  -> tables {'identical' if same else 'DIFFER'} (released/ours, 2 decimals)")


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
    parser.add_argument("--scale", type=float, default=0.25, help="fraction of the IJB-C sizes (1 = full)")
    parser.add_argument("--dim", type=int, default=512, help="feature size")
    parser.add_argument("--pipeline-images", type=int, default=1024, help="loose crops for part 2 (0: skip)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-protocol", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_protocol:
        bench_protocol(args.scale, args.dim)
    if args.pipeline_images:
        bench_pipeline(args.pipeline_images, args.batch_size, args.workers)


if __name__ == "__main__":
    main()
