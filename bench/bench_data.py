"""Loader throughput: RecordIO versus an image folder holding the same JPEGs, 0/1/2 workers, same process.

Generates a few thousand 112x112 JPEG faces in a temporary folder, packs them with
`pack_rec --keep-bytes` (identical bytes in both datasets), then times whole epochs of
`build_loader` over each, alternating the two and keeping each one's best of `--repeats` runs (the CPU may
be shared). Files sit in the page cache, so this measures reading and decoding, not disk. With 0 workers
the main process collates; `--threads` sets its torch threads (1 by default: on a busy 2-core machine
torch's threaded batch copy otherwise dominates and swings between runs).

    python -m bench.bench_data
    python -m bench.bench_data --num-images 20000 --workers 0 2 4 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dataset import ImageFolderDataset, RecordDataset, build_loader
from tools.pack_rec import EncodeOptions, pack_folder
from utils.opencv import cv2


def write_faces(root: Path, num_images: int, num_classes: int, quality: int, seed: int = 0) -> None:
    """`num_images` smooth-plus-noise 112x112 JPEGs spread over `num_classes` identity folders."""
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        folder = root / f"{index % num_classes:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        corners = rng.integers(0, 256, size=(3, 3, 3)).astype(np.float32)
        image = cv2.resize(corners, (112, 112), interpolation=cv2.INTER_CUBIC)
        image += rng.normal(0, 8, size=image.shape).astype(np.float32)
        encoded = cv2.imencode(".jpg", image.clip(0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        (folder / f"{index:07d}.jpg").write_bytes(encoded.tobytes())


def images_per_second(dataset, batch_size: int, num_workers: int, epochs: int) -> float:
    """Images/s over `epochs` full passes after one warm-up pass (which starts the workers)."""
    loader = build_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=0)
    for _ in loader:
        pass
    num_images = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for images, _ in loader:
            num_images += len(images)
    return num_images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=4000)
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="timed passes per setting")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        folder, rec = Path(tmp) / "faces", Path(tmp) / "rec"
        start = time.perf_counter()
        write_faces(folder, args.num_images, args.num_classes, args.quality)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        pack_folder(folder, rec, EncodeOptions(keep_bytes=True), num_workers=1)
        packed = time.perf_counter() - start
        datasets = {"folder": ImageFolderDataset(folder), "recordio": RecordDataset(rec)}
        mean_bytes = (rec / "train.rec").stat().st_size / args.num_images
        print(f"{args.num_images} JPEGs (~{mean_bytes / 1024:.1f} KiB each), {args.num_classes} identities, "
              f"batch {args.batch_size}, {args.epochs} timed epochs; generated in {generated:.1f}s, "
              f"packed in {packed:.1f}s; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'workers':<9}{'folder img/s':>14}{'recordio img/s':>16}{'recordio/folder':>17}")
        for num_workers in args.workers:
            rates = dict.fromkeys(datasets, 0.0)
            for _ in range(args.repeats):
                for name, dataset in datasets.items():
                    rate = images_per_second(dataset, args.batch_size, num_workers, args.epochs)
                    rates[name] = max(rates[name], rate)
            print(f"{num_workers:<9}{rates['folder']:>14.0f}{rates['recordio']:>16.0f}"
                  f"{rates['recordio'] / rates['folder']:>16.2f}x")


if __name__ == "__main__":
    main()
