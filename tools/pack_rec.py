"""Pack a folder of aligned faces (one sub-folder per identity) into insightface's RecordIO layout.

Writes `train.rec`, `train.idx` and `property` (`num_classes,height,width`): record 0 is the header
(label = [first identity key, end key]), keys 1..N the images (label = class, sorted folder order), then
one record per identity whose label is [first image key, end image key). MXNet 1.9's
`MXIndexedRecordIO` and `recordio.unpack_img` read the result unchanged. WebFace42M's tree as distributed,
parts of identity folders (`<root>/<part>/<identity>/<image>`), is taken as it is.

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
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from dataset import ALIGN_HINT, _warn_label_changes, identity_folders
from utils.decode import (
    JPEG_START,
    PNG_START,
    check_image_size,
    decode_image,
    exif_orientation,
    is_image_file,
    warn_skipped,
)
from utils.errors import UserError, entry_point
from utils.files import atomic_write_text, check_regular_file, make_folder, read_bytes
from utils.images import IMAGE_EXTENSIONS, IMAGE_SIZE
from utils.opencv import cv2
from utils.record_index import refresh_index_cache
from utils.recordio import FLOAT32_EXACT, IndexedRecordWriter, IRHeader, pack

T = TypeVar("T")
R = TypeVar("R")


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


def pack_order(labels: np.ndarray, num_classes: int, shuffle: bool,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order [N]: positions into `labels` in the order they are written, block labels [C], block sizes [C]).

    The layout keeps each identity's images in one key range (its block), in label order and, within a
    block, in the given order. Shuffling permutes the blocks and the images inside each block with
    `random.Random(seed)`, drawing exactly what shuffling Python lists of them did (the same files for the
    same seed as before), but holding only int32/int64 arrays: 8 B per image.
    """
    index_type = np.int32 if len(labels) < 2**31 else np.int64
    if np.all(labels[1:] >= labels[:-1]):  # a folder's scan: already label by label
        grouped = np.arange(len(labels), dtype=index_type)
    else:
        grouped = np.argsort(labels, kind="stable").astype(index_type)  # [N]: positions, label by label
    sizes = np.bincount(labels, minlength=num_classes).astype(np.int64)  # [C]
    starts = np.r_[0, np.cumsum(sizes)[:-1]] if num_classes else sizes
    block_labels = list(range(num_classes))
    if not shuffle:
        return grouped, np.array(block_labels, dtype=np.int64), sizes
    rng = random.Random(seed)
    rng.shuffle(block_labels)  # a shuffle's draws depend only on the length: these are the blocks' draws
    order = np.empty_like(grouped)
    position = 0
    for label in block_labels:
        within = list(range(sizes[label]))
        rng.shuffle(within)
        order[position:position + len(within)] = grouped[starts[label] + np.array(within, dtype=np.int64)]
        position += len(within)
    return order, np.array(block_labels, dtype=np.int64), sizes[block_labels]


def as_ints(values: np.ndarray, chunk: int = 1 << 16) -> Iterator[int]:
    """The values of an array as Python ints, a chunk at a time (`tolist()` of 42 M values is 1.5 GB)."""
    for first in range(0, len(values), chunk):
        yield from values[first:first + chunk].tolist()


@dataclass(frozen=True)
class PackSummary:
    num_images: int
    num_classes: int


@dataclass(frozen=True)
class FolderIndex:
    """The images of a folder of identity sub-folders as arrays, about 25 B per image at WebFace42M's names
    (the list of (path, label) tuples it replaces held about 160 B).

    `classes[label]` is an identity folder relative to `root` (``<identity>`` or, in WebFace42M's layout
    as distributed, ``<part>/<identity>``); image i is ``root/classes[labels[i]]/names[name_ends[i-1]:
    name_ends[i]]``: its file name bytes (os.fsencode) in one buffer, its label int32.
    """

    root: Path
    classes: list[str]
    names: np.ndarray  # uint8 [total name bytes]
    name_ends: np.ndarray  # int64 [N]
    labels: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """The file path of image `index`."""
        start = int(self.name_ends[index - 1]) if index else 0
        name = os.fsdecode(self.names[start:int(self.name_ends[index])].tobytes())
        return os.path.join(self.root, self.classes[self.labels[index]], name)


def identity_folder_names(root: Path) -> list[str]:
    """The identity folders of `root` relative to it, in label order (`dataset.identity_folders` at each
    level). WebFace42M as distributed nests them one level deeper, in parts 0..9 (``<root>/<part>/
    <identity>/<image>.jpg``, arcface_torch's docs/prepare_webface42m.md): when the first folder of `root`
    holds folders and no image, every folder of `root` is such a part."""
    folders = identity_folders(root)
    if not folders or not _is_part(folders[0]):
        return [folder.name for folder in folders]
    names = []
    for part in folders:
        if not _is_part(part):
            raise UserError(f"'{part}' holds images or no folders, but '{folders[0]}' holds identity folders; put "
                            f"every identity at the same depth under '{root}'.")
        names += [f"{part.name}/{folder.name}" for folder in identity_folders(part)]
    return names


def _is_part(folder: Path) -> bool:
    """Whether `folder` holds identity folders rather than images (WebFace42M's parts 0..9)."""
    with os.scandir(folder) as entries:
        kinds = [(entry.is_dir(), is_image_file(Path(entry.name))) for entry in entries]
    return any(is_dir for is_dir, _ in kinds) and not any(image for _, image in kinds)


def scan_identities(root: str | Path, progress: bool = False) -> FolderIndex:
    """The FolderIndex of `root` (see `identity_folder_names`): labels follow the folders' order, images
    sorted by name within a folder, as `dataset.scan_image_folder` (whose warnings it gives too)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist; point it at a folder with one sub-folder "
                        "of aligned face images per identity.")
    classes = identity_folder_names(root)
    skipped = [path for path in root.iterdir() if not path.is_dir()]
    index = folder_index(root, classes, _image_files(root, classes, skipped, progress))
    if not len(index):
        raise UserError(f"'{root}' holds no identity sub-folders with images; the layout is "
                        f"<root>/<identity>/<image>{IMAGE_EXTENSIONS[0]}.")
    warn_skipped(skipped, root)
    _warn_label_changes(root, classes, set(np.unique(index.labels).tolist()))
    return index


def _image_files(root: Path, classes: list[str], skipped: list[Path], progress: bool) -> Iterator[tuple[int, str]]:
    """(label, file name) of every image of every identity folder, names sorted within a folder; files
    that are not images are appended to `skipped`."""
    # No bar for an empty folder: its error is the only line on stderr.
    folders = tqdm(classes, desc="scanning", unit="identity", disable=not progress or not classes)
    for label, folder in enumerate(folders):
        with os.scandir(root / folder) as entries:
            found = sorted((entry.name, entry.is_file()) for entry in entries)
        for name, is_file in found:
            if not is_image_file(Path(name)):
                skipped.append(root / folder / name)
                continue
            if not is_file:  # a folder or FIFO named like an image: the clear error
                check_regular_file(root / folder / name, "image", "remove it from the data folder")
            yield label, name


def folder_index(root: Path, classes: list[str], files: Iterable[tuple[int, str]]) -> FolderIndex:
    """The FolderIndex of (label, file name) pairs in write order, gathered into compact growing buffers."""
    names, name_ends, labels = bytearray(), array("q"), array("i")
    for label, name in files:
        names += os.fsencode(name)
        name_ends.append(len(names))
        labels.append(label)
    return FolderIndex(root, classes, np.frombuffer(names, dtype=np.uint8), np.frombuffer(name_ends, np.int64),
                       np.frombuffer(labels, dtype=np.int32))


def pack_folder(input_dir: str | Path, output_dir: str | Path, options: EncodeOptions = EncodeOptions(), *,
                shuffle: bool = False, seed: int = 0, num_workers: int = 1, progress: bool = False,
                overwrite: bool = False) -> PackSummary:
    """Pack `input_dir` into `output_dir`/train.rec, train.idx and property (see the module docstring).

    Memory: `FolderIndex`, `pack_order`'s and the writer's arrays (about 40 B per image) and at most
    `IN_FLIGHT_PER_WORKER` x `CHUNK` encoded images per worker waiting for the writer.
    """
    output_dir = Path(output_dir)
    index = scan_identities(input_dir, progress)
    rec_path = output_dir / "train.rec"
    if rec_path.exists() and not overwrite:
        raise UserError(f"'{rec_path}' already exists; choose another output folder or pass --overwrite.")
    make_folder(output_dir)
    order, block_labels, block_sizes = pack_order(index.labels, len(index.classes), shuffle, seed)
    chunks = ([index.path(position) for position in order[first:first + CHUNK].tolist()]
              for first in range(0, len(order), CHUNK))
    with _pool(num_workers) as pool:
        payloads = ordered_map(pool, partial(_encode_chunk, options=options), chunks,
                               IN_FLIGHT_PER_WORKER * num_workers)
        payloads = tqdm(payloads, total=len(order), desc="packing", unit="img", disable=not progress)
        records = ((IRHeader(0, float(label), 0, 0), payload)
                   for label, payload in zip(index.labels[order].tolist(), payloads))
        write_records(output_dir, block_labels, block_sizes, records, len(index.classes),
                      (options.image_size, options.image_size))
    return PackSummary(num_images=len(index), num_classes=len(index.classes))


CHUNK = 64  # images per encoding task
IN_FLIGHT_PER_WORKER = 2  # encoding tasks per worker submitted ahead of the writer


def _encode_chunk(paths: list[str], options: EncodeOptions) -> list[bytes]:
    return [encode_file(path, options) for path in paths]


def ordered_map(pool: Executor | None, function: Callable[[T], list[R]], tasks: Iterable[T],
                max_in_flight: int) -> Iterator[R]:
    """The items of `function(task)` for every task, in order, with at most `max_in_flight` tasks submitted
    to `pool` and not yet consumed (back-pressure: `Pool.imap` submits every task at once, so results pile
    up in memory when the workers outrun the consumer). Without a pool, tasks run here, one at a time.
    A task's exception is raised here; a worker that dies (killed, out of memory, crashed in a decoder)
    is one UserError, not a wait for a result that never comes (multiprocessing.Pool's)."""
    if pool is None:
        for task in tasks:
            yield from function(task)
        return
    pending = deque()
    for task in tasks:
        if len(pending) >= max(1, max_in_flight):
            yield from _result(pending.popleft())
        pending.append(pool.submit(function, task))
    while pending:
        yield from _result(pending.popleft())


def _result(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError("an encoding worker process died (killed, for example out of memory, or crashed in an "
                        "image decoder) and its images were not written; run again, with fewer --workers if "
                        "memory is short.") from None


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


class _Workers:
    """A ProcessPoolExecutor that, on leaving, cancels the tasks not yet started instead of running them."""

    def __init__(self, executor: ProcessPoolExecutor):
        self.executor = executor

    def __enter__(self) -> ProcessPoolExecutor:
        return self.executor

    def __exit__(self, *exc_info):
        self.executor.shutdown(wait=True, cancel_futures=True)
        return False


def _pool(num_workers: int):
    """Encoding workers from a fork server: a child forked from a process that already ran OpenCV's thread
    pool can deadlock inside OpenCV. The server imports this module once and every worker is forked from
    it, so workers start in milliseconds instead of each importing torch (seconds, more with many)."""
    if num_workers <= 1:
        return _NoPool()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tools.pack_rec"])
    return _Workers(ProcessPoolExecutor(num_workers, mp_context=context))


def header_record(num_images: int, num_classes: int) -> bytes:
    """Record 0 as MXNet and insightface write it: label [first identity key, end key) = [N + 1, N + 1 + C)
    as float32, so rounded above 2^24 (readers recover the exact keys: utils.recordio.exact_header_range)."""
    return pack(IRHeader(0, (num_images + 1, num_images + 1 + num_classes), 0, 0))


def identity_record(key: int, start: int, end: int) -> bytes:
    """The identity record under `key` naming its images' keys [start, end) (float32, as MXNet writes)."""
    return pack(IRHeader(0, (start, end), key, 0))


def write_records(output_dir: Path, block_labels: np.ndarray, block_sizes: np.ndarray,
                  records: Iterator[tuple[IRHeader, bytes]], num_classes: int, image_size: tuple[int, int]) -> None:
    """Write the insightface layout: header record 0, the images of the blocks (block b: `block_sizes[b]`
    images of class `block_labels[b]`, written in block order under keys 1..N), one identity record per
    label, and `property`.

    `records` yields (header, payload) for every image in block order; it may be lazy, so encoding
    overlaps writing. Each image header's id becomes its key, as in insightface's files. Every file is
    written atomically (utils.files): an interrupted run leaves any earlier train.rec untouched. A large
    index gets its `train.idx.cache` beside it at the end (utils.record_index.refresh_index_cache).
    """
    if num_classes > FLOAT32_EXACT:
        raise UserError(f"{num_classes} classes is more than RecordIO's float32 labels tell apart ({FLOAT32_EXACT}); "
                        "split the data into sets of fewer identities.")
    block_sizes = np.asarray(block_sizes, dtype=np.int64)
    num_images = int(block_sizes.sum())
    first_identity = num_images + 1
    ranges = np.zeros((num_classes, 2), dtype=np.int64)  # label -> [first image key, end image key)
    block_ends = 1 + np.cumsum(block_sizes)
    ranges[np.asarray(block_labels, dtype=np.int64)] = np.stack([block_ends - block_sizes, block_ends], axis=1)
    with IndexedRecordWriter(output_dir / "train.rec", output_dir / "train.idx") as writer:
        writer.write(0, header_record(num_images, num_classes))
        for key in range(1, first_identity):
            header, payload = next(records)
            writer.write(key, pack(header._replace(id=key), payload))
        if next(records, None) is not None:
            raise ValueError("more records than images in the blocks")
        for label, (start, end) in enumerate(ranges.tolist()):
            identity_key = first_identity + label
            writer.write(identity_key, identity_record(identity_key, start, end))
    atomic_write_text(output_dir / "property", f"{num_classes},{image_size[0]},{image_size[1]}\n")
    refresh_index_cache(output_dir / "train.idx")


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
                          num_workers=args.workers, progress=sys.stderr.isatty(), overwrite=args.overwrite)
    print(f"packed {summary.num_images} images of {summary.num_classes} identities into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
