"""pack_rec's and shuffle_rec's bookkeeping per image, before and after issue 22, and pack_rec's throughput.

Bookkeeping is what the tools hold per image besides the images in flight: measured with tracemalloc
(Python allocations, NumPy's included) over synthetic WebFace42M names (identities `<part>_<n>_<7 digits>`
of 21 images `<part>_<running number>.jpg`, as arcface_torch's docs/prepare_webface42m.md shows them), no
files needed. "Before" rebuilds the structures of the tools at commit 68a2279 (a list of (path, label)
tuples, per-class lists of paths, a task tuple per image, a list of labels and the record writer's set of
keys); "after" runs the current code: `FolderIndex`, `pack_order` and the record writer writing every
record (empty payloads, to a temporary folder). shuffle_rec's figures leave out the dataset's own index
(`image_keys`, `image_offsets`: 16 B per image, the same before and after).

Throughput packs folders of N and 2N real 112x112 JPEGs (written once) with 1, 2, ... workers and
divides N by the difference, so start-up and scanning drop out; the writer's limit is `write_records`
over payloads already in memory.

    python -m bench.bench_pack                               # bookkeeping at 1 M images
    python -m bench.bench_pack --images 0 --throughput 4000 --workers 1 2      # throughput only
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tools.pack_rec import EncodeOptions, folder_index, pack_folder, pack_order, write_records
from utils.opencv import cv2
from utils.recordio import IndexedRecordWriter, IRHeader, pack

IMAGES_PER_IDENTITY = 21  # WebFace42M: 42,474,557 images of 2,059,906 identities
PARTS = 10


def synthetic_names(num_images: int) -> tuple[list[str], Iterator[tuple[int, str]]]:
    """(identity folders, lazy (label, file name) pairs) laid out like WebFace42M's parts 0..9."""
    num_classes = -(-num_images // IMAGES_PER_IDENTITY)
    per_part = -(-num_classes // PARTS)
    classes = [f"{label // per_part}/{label // per_part}_0_{label % per_part:07d}" for label in range(num_classes)]

    def files() -> Iterator[tuple[int, str]]:
        for image in range(num_images):
            label = image // IMAGES_PER_IDENTITY
            yield label, f"{label // per_part}_{image}.jpg"
    return classes, files()


def _traced(build) -> tuple[int, int]:
    """(bytes still held, peak bytes) of what `build()` allocates and returns, by tracemalloc."""
    tracemalloc.start()
    try:
        kept = build()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for item in kept:
        if isinstance(item, IndexedRecordWriter):
            item.__exit__(RuntimeError, RuntimeError("measured only"), None)  # discards its files
    return current, peak


def _write_keys(writer: IndexedRecordWriter, labels) -> None:
    for key, label in enumerate(labels, start=1):
        writer.write(key, pack(IRHeader(0, float(label), key, 0)))


def _pack_after(num_images: int, folder: Path):
    classes, files = synthetic_names(num_images)
    index = folder_index(folder, classes, files)
    order, block_labels, block_sizes = pack_order(index.labels, len(classes), shuffle=True, seed=0)
    writer = IndexedRecordWriter(folder / "train.rec")
    _write_keys(writer, _labels_in_order(index.labels, order))
    return index, order, block_labels, block_sizes, writer


def _labels_in_order(labels: np.ndarray, order: np.ndarray, chunk: int = 1 << 16) -> Iterator[int]:
    for first in range(0, len(order), chunk):
        yield from labels[order[first:first + chunk]].tolist()


def _pack_before(num_images: int, folder: Path):
    classes, files = synthetic_names(num_images)
    samples = [(f"{classes[label]}/{name}", label) for label, name in files]  # dataset.scan_image_folder
    blocks = [(label, []) for label in range(len(classes))]  # the earlier pack_order
    for path, label in samples:
        blocks[label][1].append(path)
    rng = random.Random(0)
    rng.shuffle(blocks)
    for _, paths in blocks:
        rng.shuffle(paths)
    options = EncodeOptions()
    tasks = [(str(folder / path), options) for _, paths in blocks for path in paths]
    labels = [label for label, paths in blocks for _ in paths]
    keys = set(range(num_images + 1))  # IndexedRecordWriter's set of the keys written
    return samples, blocks, tasks, labels, keys


def _shuffle_after(num_images: int, folder: Path):
    classes, files = synthetic_names(num_images)
    labels = np.fromiter((label for label, _ in files), dtype=np.int32, count=num_images)  # image_labels
    order, block_labels, block_sizes = pack_order(labels, len(classes), shuffle=True, seed=0)
    del labels
    writer = IndexedRecordWriter(folder / "train.rec")
    _write_keys(writer, itertools.repeat(0, num_images))
    return order, block_labels, block_sizes, writer


def _shuffle_before(num_images: int, folder: Path):
    classes, files = synthetic_names(num_images)
    keys = list(range(1, num_images + 1))  # source.image_keys.tolist()
    offsets = dict(zip(keys, range(0, 8 * num_images, 8)))
    labels = [label for label, _ in files]
    samples = list(zip(keys, labels))
    blocks = [(label, []) for label in range(len(classes))]
    for key, label in samples:
        blocks[label][1].append(key)
    rng = random.Random(0)
    rng.shuffle(blocks)
    for _, block_keys in blocks:
        rng.shuffle(block_keys)
    ordered_keys = [key for _, block_keys in blocks for key in block_keys]
    written = set(range(num_images + 1))
    return keys, offsets, labels, samples, blocks, ordered_keys, written


def bookkeeping_bytes_per_image(tool: str, num_images: int, before: bool = False) -> tuple[float, float]:
    """(bytes held, peak bytes) per image of `tool` ("pack" or "shuffle") over `num_images` synthetic
    WebFace42M-style images, with the current code or (`before`) the structures of commit 68a2279."""
    build = {("pack", False): _pack_after, ("pack", True): _pack_before,
             ("shuffle", False): _shuffle_after, ("shuffle", True): _shuffle_before}[tool, before]
    with tempfile.TemporaryDirectory() as folder:
        current, peak = _traced(lambda: build(num_images, Path(folder)))
    return current / num_images, peak / num_images


def pack_bookkeeping_bytes_per_image(num_images: int, before: bool = False) -> float:
    """pack_rec's bookkeeping per image (bytes held while it writes), see `bookkeeping_bytes_per_image`."""
    return bookkeeping_bytes_per_image("pack", num_images, before)[0]


def shuffle_bookkeeping_bytes_per_image(num_images: int, before: bool = False) -> float:
    """shuffle_rec's bookkeeping per image besides the dataset's index (bytes held while it writes)."""
    return bookkeeping_bytes_per_image("shuffle", num_images, before)[0]


def write_jpeg_folder(root: Path, num_images: int) -> None:
    """`num_images` distinct 112x112 JPEGs in identities of IMAGES_PER_IDENTITY."""
    rng = np.random.default_rng(0)
    for image in range(num_images):
        folder = root / f"{image // IMAGES_PER_IDENTITY:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112))
        cv2.imwrite(str(folder / f"{image}.jpg"), pixels)


def _pack_seconds(root: Path, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        pack_folder(root, out, num_workers=workers, overwrite=True)
        return time.perf_counter() - started


def throughput(small: Path, large: Path, extra_images: int, workers: int) -> float:
    """Images per second once running of `pack_folder` (re-encoding at quality 95) with
    `workers` processes: from packing `small` and `large` (`extra_images` more) after a first, unmeasured
    run, so the fork server's start (once per process), the workers' start and the scan drop out of the rate."""
    _pack_seconds(small, workers)  # starts the fork server (it imports the tool once per process)
    short, long = _pack_seconds(small, workers), _pack_seconds(large, workers)
    return extra_images / (long - short)


def writer_limit(num_images: int) -> float:
    """Records per second `write_records` takes from payloads already encoded (the single writer's limit)."""
    payload = cv2.imencode(".jpg", np.zeros((112, 112, 3), np.uint8))[1].tobytes() * 4  # about a face's size
    num_classes = -(-num_images // IMAGES_PER_IDENTITY)
    sizes = np.bincount(np.arange(num_images) // IMAGES_PER_IDENTITY, minlength=num_classes)
    records = ((IRHeader(0, float(image // IMAGES_PER_IDENTITY), 0, 0), payload) for image in range(num_images))
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        write_records(Path(out), np.arange(num_classes), sizes, records, num_classes, (112, 112))
        return num_images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000, help="synthetic images for the bookkeeping (0: skip)")
    parser.add_argument("--throughput", type=int, default=0, help="JPEGs to pack for the throughput (0: skip)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for tool in ("pack", "shuffle") if args.images else ():
        for before in (True, False):
            held, peak = bookkeeping_bytes_per_image(tool, args.images, before)
            print(f"{tool}_rec {'before' if before else 'after '}: {held:6.1f} B/image held, {peak:6.1f} B/image "
                  f"peak ({args.images} images; x 42,474,557 = {held * 42_474_557 / 2**30:.2f} GiB held)")
    if args.throughput:
        with tempfile.TemporaryDirectory() as folder:
            small, large = Path(folder) / "small", Path(folder) / "large"
            write_jpeg_folder(small, args.throughput)
            write_jpeg_folder(large, 2 * args.throughput)
            for workers in args.workers:
                rate = throughput(small, large, args.throughput, workers)
                print(f"pack_rec, {workers} workers: {rate:7.0f} images/s once running, load {os.getloadavg()}")
        print(f"writer alone: {writer_limit(args.throughput * 10):7.0f} records/s, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
