"""Pack a folder of aligned faces (one sub-folder per identity) into insightface's RecordIO layout.

Writes `train.rec`, `train.idx` and `property` (`num_classes,height,width`): record 0 is the header
(label = [first identity key, end key]), keys 1..N the images (label = class, sorted folder order), then
one record per identity whose label is [first image key, end image key). MXNet 1.9's
`MXIndexedRecordIO` and `recordio.unpack_img` read the result unchanged.

    python -m tools.pack_rec aligned_faces/ data/my_set/ --quality 95 --workers 8
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import multiprocessing
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from dataset import ALIGN_HINT, scan_image_folder
from utils.decode import JPEG_START, PNG_START, check_image_size, decode_image, exif_orientation
from utils.errors import UserError, entry_point
from utils.files import atomic_write_text, make_folder, read_bytes
from utils.images import IMAGE_SIZE
from utils.recordio import IndexedRecordWriter, IRHeader, pack


@dataclass(frozen=True)
class EncodeOptions:
    encoding: str = "jpg"  # "jpg" or "png"
    quality: int = 95  # JPEG quality
    keep_bytes: bool = False  # store JPEG/PNG files of the right size and without EXIF rotation unchanged
    image_size: int = IMAGE_SIZE


def encode_file(path: str, options: EncodeOptions) -> bytes:
    """The payload stored for the image file at `path`: its own bytes or a fresh JPEG/PNG encoding of the
    pixels `utils.decode` gives (EXIF orientation applied, so a reader that ignores EXIF sees them too)."""
    data = read_bytes(path, "image")
    check_image_size(data, f"'{path}'", (options.image_size, options.image_size), ALIGN_HINT)
    try:
        rgb = decode_image(data)  # [H, W, 3]
    except ValueError:
        raise UserError(f"'{path}' is not a decodable image; remove or replace it and run again.") from None
    if rgb.shape[:2] != (options.image_size, options.image_size):
        raise UserError(f"'{path}' is {rgb.shape[1]}x{rgb.shape[0]}, not {options.image_size}x"
                        f"{options.image_size}; {ALIGN_HINT}.")
    if options.keep_bytes and keepable(data):
        return data
    bgr = rgb[:, :, ::-1]  # OpenCV encodes BGR
    if options.encoding == "png":
        ok, encoded = cv2.imencode(".png", bgr)
    else:
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, options.quality])
    if not ok:
        raise UserError(f"OpenCV could not encode '{path}' as {options.encoding}.")
    return encoded.tobytes()


def keepable(data: bytes) -> bool:
    """Whether `--keep-bytes` may store an image file unchanged: a JPEG or PNG without an EXIF rotation
    (a rotated one would decode upright here but sideways in readers that ignore EXIF)."""
    return (data.startswith(JPEG_START) or data.startswith(PNG_START)) and exif_orientation(data) == 1


def _encode_task(task: tuple[str, EncodeOptions]) -> bytes:
    return encode_file(*task)


def pack_order(samples: list[tuple[str, int]], num_classes: int, shuffle: bool,
               seed: int) -> list[tuple[int, list[str]]]:
    """[(label, image paths)] per class, in the order they are written.

    The layout keeps each identity's images in one key range, so shuffling permutes the identities and
    the images inside each identity; labels stay those of the sorted folder names.
    """
    blocks: list[tuple[int, list[str]]] = [(label, []) for label in range(num_classes)]
    for path, label in samples:
        blocks[label][1].append(path)
    if shuffle:
        rng = random.Random(seed)
        rng.shuffle(blocks)
        for _, paths in blocks:
            rng.shuffle(paths)
    return blocks


@dataclass(frozen=True)
class PackSummary:
    num_images: int
    num_classes: int


def pack_folder(input_dir: str | Path, output_dir: str | Path, options: EncodeOptions = EncodeOptions(), *,
                shuffle: bool = False, seed: int = 0, num_workers: int = 1, progress: bool = False,
                overwrite: bool = False) -> PackSummary:
    """Pack `input_dir` into `output_dir`/train.rec, train.idx and property (see the module docstring)."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    classes, samples = scan_image_folder(input_dir)
    rec_path = output_dir / "train.rec"
    if rec_path.exists() and not overwrite:
        raise UserError(f"'{rec_path}' already exists; choose another output folder or pass --overwrite.")
    make_folder(output_dir)
    blocks = pack_order(samples, len(classes), shuffle, seed)
    tasks = [(str(input_dir / path), options) for _, paths in blocks for path in paths]
    labels = [label for label, paths in blocks for _ in paths]
    with _pool(num_workers) as pool:
        payloads = pool.imap(_encode_task, tasks, chunksize=64) if pool else map(_encode_task, tasks)
        payloads = tqdm(payloads, total=len(tasks), desc="packing", unit="img", disable=not progress)
        records = ((IRHeader(0, float(label), 0, 0), payload) for label, payload in zip(labels, payloads))
        write_records(output_dir, blocks, records, len(classes), (options.image_size, options.image_size))
    return PackSummary(num_images=len(samples), num_classes=len(classes))


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


def _pool(num_workers: int):
    """Encoding workers from a fork server: a child forked from a process that already ran OpenCV's thread
    pool can deadlock inside OpenCV."""
    return multiprocessing.get_context("forkserver").Pool(num_workers) if num_workers > 1 else _NoPool()


def header_record(num_images: int, num_classes: int) -> bytes:
    """Record 0 as MXNet and insightface write it: label [first identity key, end key) = [N + 1, N + 1 + C)
    as float32, so rounded above 2^24 (readers recover the exact keys: utils.recordio.exact_header_range)."""
    return pack(IRHeader(0, (num_images + 1, num_images + 1 + num_classes), 0, 0))


def identity_record(key: int, start: int, end: int) -> bytes:
    """The identity record under `key` naming its images' keys [start, end) (float32, as MXNet writes)."""
    return pack(IRHeader(0, (start, end), key, 0))


def write_records(output_dir: Path, blocks: list[tuple[int, list]], records: Iterator[tuple[IRHeader, bytes]],
                  num_classes: int, image_size: tuple[int, int]) -> None:
    """Write the insightface layout: header record 0, the images of `blocks` ([(label, items)], written
    in that order under keys 1..N), one identity record per label, and `property`.

    `records` yields (header, payload) for every item in block order; it may be lazy, so encoding
    overlaps writing. Each image header's id becomes its key, as in insightface's files. Every file is
    written atomically (utils.files): an interrupted run leaves any earlier train.rec untouched.
    """
    num_images = sum(len(items) for _, items in blocks)
    first_identity = num_images + 1
    ranges = [(0, 0)] * num_classes  # label -> [first image key, end image key)
    with IndexedRecordWriter(output_dir / "train.rec", output_dir / "train.idx") as writer:
        writer.write(0, header_record(num_images, num_classes))
        key = 1
        for label, items in blocks:
            ranges[label] = (key, key + len(items))
            for _ in items:
                header, payload = next(records)
                writer.write(key, pack(header._replace(id=key), payload))
                key += 1
        if next(records, None) is not None:
            raise ValueError("more records than images in the blocks")
        for label, (start, end) in enumerate(ranges):
            identity_key = first_identity + label
            writer.write(identity_key, identity_record(identity_key, start, end))
    atomic_write_text(output_dir / "property", f"{num_classes},{image_size[0]},{image_size[1]}\n")


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder with one sub-folder of aligned face images per identity")
    parser.add_argument("output", help="folder to write train.rec, train.idx and property into")
    parser.add_argument("--encoding", choices=("jpg", "png"), default="jpg", help="how images are stored")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (1-100)")
    parser.add_argument("--keep-bytes", action="store_true",
                        help="store JPEG/PNG files of the right size byte for byte (not those with an "
                             "EXIF rotation: they are re-encoded upright)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle identities and images within them")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="expected width and height")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing train.rec")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be in 1..100")
    options = EncodeOptions(args.encoding, args.quality, args.keep_bytes, args.image_size)
    summary = pack_folder(args.input, args.output, options, shuffle=args.shuffle, seed=args.seed,
                          num_workers=args.workers, progress=True, overwrite=args.overwrite)
    print(f"packed {summary.num_images} images of {summary.num_classes} identities into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
