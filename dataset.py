"""Training data: RecordIO, image-folder and synthetic datasets, the resumable distributed sampler, the
loader, and the on-device batch preparation (optional GPU JPEG decode, random flip, [-1, 1]).

Datasets return uint8 RGB images [3, H, W] and an int label; everything per-pixel that can run on the
accelerator (flip, normalisation, optionally JPEG decode) runs there, so CPU workers only read and decode.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg

from utils.config import require
from utils.errors import UserError
from utils.files import check_regular_file, read_bytes, read_text
from utils.images import IMAGE_EXTENSIONS, IMAGE_SIZE, image_size_of, normalize
from utils.recordio import IndexedRecordReader, RecordIOError, decode_image, first_label, unpack
from utils.seeding import derive_seed, seed_everything

logger = logging.getLogger(__name__)

DATASET_KINDS = ("recordio", "folder", "synthetic")
ALIGN_HINT = ("training needs aligned 112x112 faces: align them with a 5-point similarity transform "
              "(for example insightface's norm_crop) or resize crops that are already aligned, then retry")
_JPEG_START = b"\xff\xd8"


class DataError(UserError):
    """A data problem found while loading batches, kept to one clear sentence.

    DataLoader re-raises an exception from a worker as `type(exc)("Caught ... Original Traceback ...")`;
    the constructor keeps only the original sentence so the user sees the message, not a traceback.
    """

    def __init__(self, message: str):
        name = type(self).__name__
        if message.startswith(f"Caught {name} ") and "Original Traceback" in message:
            message = message.rstrip().rsplit(f"{name}: ", 1)[-1]
        super().__init__(message)


class CorruptCounter:
    """Counts the distinct undecodable images one process meets; too many stops training.

    The budget is `max_corrupt_fraction` of the dataset (not of the images seen so far), so a bad record
    early in an epoch is skipped instead of stopping the run. Each loader process counts its own.
    """

    def __init__(self, num_images: int, max_corrupt_fraction: float):
        self.max_corrupt_fraction = max_corrupt_fraction
        self.budget = math.floor(max_corrupt_fraction * num_images)
        self.bad_names: set[str] = set()

    def add(self, name: str, reason: str) -> None:
        if name in self.bad_names:
            return  # warned and counted when first met
        self.bad_names.add(name)
        logger.warning("skipping %s: %s (%d undecodable so far, at most %d allowed)", name, reason,
                       len(self.bad_names), self.budget)
        if len(self.bad_names) > self.budget:
            raise DataError(f"{len(self.bad_names)} images failed to decode (last: {name}: {reason}), more "
                            f"than max_corrupt_fraction={self.max_corrupt_fraction} of the data allows; "
                            "repair or re-pack the data, or raise config.max_corrupt_fraction.")


class _CorruptSample(Exception):
    """An image that cannot be read or decoded; the dataset skips it."""


class EncodedImageDataset(Dataset):
    """Shared sample logic of the RecordIO and folder datasets: read encoded bytes, check the label,
    decode to RGB (or hand the bytes on for GPU decode), skip and count undecodable images.

    Subclasses set `num_classes`, `image_size` and implement `_encoded(index) -> (bytes, label, name)`.
    With `decode=False` a sample is `(uint8 1-D tensor of the encoded bytes, label, name)`.
    """

    num_classes: int
    image_size: tuple[int, int]

    def __init__(self, num_images: int, transform: Callable | None, max_corrupt_fraction: float,
                 decode: bool):
        self.num_images = num_images
        self.transform = transform
        self.decode = decode
        self.corrupt = CorruptCounter(num_images, max_corrupt_fraction)

    def __len__(self) -> int:
        return self.num_images

    def _encoded(self, index: int) -> tuple[bytes, int, str]:
        raise NotImplementedError

    def __getitem__(self, index: int):
        for step in range(self.num_images):
            candidate = (index + step) % self.num_images  # a replacement keeps the batch full
            try:
                return self._sample(candidate)
            except _CorruptSample as exc:
                name, reason = exc.args
                self.corrupt.add(name, reason)
        raise DataError("no image of the dataset could be decoded; the data is unusable.")

    def _sample(self, index: int):
        payload, label, name = self._encoded(index)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{name} has label {label}, outside [0, {self.num_classes}); the class count "
                            "(from `property` or the header record) does not match the labels: re-pack the data.")
        if not self.decode:
            if not payload:
                raise _CorruptSample(name, "empty image payload")
            return torch.frombuffer(bytearray(payload), dtype=torch.uint8), label, name
        size = image_size_of(payload)  # from the header: a wrong size or a bomb is refused before decoding
        if size is not None and size[::-1] != self.image_size:
            raise DataError(f"{name} is {size[0]}x{size[1]}, not {self.image_size[1]}x{self.image_size[0]}; "
                            f"{ALIGN_HINT}.")
        try:
            image = decode_image(payload)
        except ValueError as exc:
            raise _CorruptSample(name, str(exc)) from None
        if tuple(image.shape[1:]) != self.image_size:
            raise DataError(f"{name} is {image.shape[2]}x{image.shape[1]}, not "
                            f"{self.image_size[1]}x{self.image_size[0]}; {ALIGN_HINT}.")
        return (self.transform(image) if self.transform is not None else image), label


def read_property(path: Path) -> tuple[int, int, int] | None:
    """(num_classes, height, width) from an insightface `property` file, None when there is none."""
    if not path.exists():
        return None
    text = read_text(path, "property file").strip()
    try:
        num_classes, height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"'{path}' holds {text[:40]!r}, not 'num_classes,height,width' (for example "
                        "'85742,112,112'); fix or delete it.") from None
    return num_classes, height, width


class RecordDataset(EncodedImageDataset):
    """`train.rec`/`train.idx` (and `property`) of insightface or MXNet's im2rec, read without MXNet.

    Two layouts: insightface's, whose record 0 is a header (flag > 0, empty payload, label = [first
    identity record key, end key]) with images at keys 1 .. first identity - 1; and files with no header,
    where every key of the index is an image. The class of an image is its (first) label value.
    `ds[i] -> (uint8 tensor [3, H, W] RGB, int label)` when `transform` is None.
    """

    def __init__(self, root_dir: str | Path, transform: Callable | None = None,
                 max_corrupt_fraction: float = 0.001, decode: bool = True):
        self.root = Path(root_dir)
        if not self.root.is_dir():
            raise UserError(f"data directory '{self.root}' does not exist; set config.rec to the folder that "
                            "holds train.rec, train.idx and property.")
        self.reader = IndexedRecordReader(self.root / "train.rec", self.root / "train.idx")
        header = self._header_record()
        self.has_header = header is not None
        if header is not None:
            first_identity, end = int(header.label[0]), int(header.label[1])
            if not 1 <= first_identity <= min(end, len(self.reader)):
                raise UserError(f"'{self.reader.rec_path}': header record 0 has label {list(header.label)}, "
                                "not [first identity key, end key]; the file is damaged: re-pack it.")
            self.image_keys = np.arange(1, first_identity, dtype=np.int64)
            header_classes = end - first_identity
        else:
            self.image_keys = self.reader.keys.copy()
            header_classes = None
        try:
            self.image_offsets = self.reader.offsets_of(self.image_keys)
        except KeyError as exc:
            raise UserError(f"the header record of '{self.reader.rec_path}' lists images 1.."
                            f"{len(self.image_keys)}, but {exc.args[0]}; the .idx is incomplete: re-pack.") from None
        super().__init__(len(self.image_keys), transform, max_corrupt_fraction, decode)
        self.num_classes, self.image_size = self._classes_and_size(header_classes)

    def _header_record(self):
        """The IRHeader of insightface's header record 0, None when the file has none."""
        if 0 not in self.reader:
            return None
        try:
            header, payload = unpack(self.reader.read(0))
        except ValueError as exc:
            raise UserError(f"'{self.reader.rec_path}': record 0 is damaged ({exc}); re-pack the data.") from None
        return header if header.flag >= 2 and not payload else None

    def _classes_and_size(self, header_classes: int | None) -> tuple[int, tuple[int, int]]:
        prop_path = self.root / "property"
        prop = read_property(prop_path)
        if prop is not None and header_classes is not None and prop[0] != header_classes:
            raise UserError(f"'{prop_path}' says {prop[0]} classes but the header record of "
                            f"'{self.reader.rec_path}' lists {header_classes} identities; fix the property file "
                            "or re-pack the data.")
        size = (prop[1], prop[2]) if prop is not None else (IMAGE_SIZE, IMAGE_SIZE)
        if prop is not None:
            return prop[0], size
        if header_classes is not None:
            return header_classes, size
        return self._scan_num_classes(), size

    def _scan_num_classes(self) -> int:
        logger.warning("'%s' has no header record and no property file: reading all %d records to count "
                       "classes; write '%s' (num_classes,height,width) to skip this.", self.reader.rec_path,
                       self.num_images, self.root / "property")
        largest = -1
        for key, offset in zip(self.image_keys.tolist(), self.image_offsets.tolist()):
            try:
                header = self.reader.read_header_at(offset, key)
            except RecordIOError:
                continue  # counted as corrupt when the sample is read
            largest = max(largest, int(first_label(header)))
        return largest + 1

    def _encoded(self, index: int) -> tuple[bytes, int, str]:
        key = int(self.image_keys[index])
        name = f"record key {key} of '{self.reader.rec_path}'"
        try:
            header, payload = unpack(self.reader.read_at(int(self.image_offsets[index]), key))
        except (RecordIOError, ValueError) as exc:
            raise _CorruptSample(name, str(exc)) from None
        return payload, int(first_label(header)), name


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, [(path relative to root, label)]) of a folder of identity sub-folders.

    Labels follow the sorted folder names; folders without images are skipped with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist; point it at a folder with one sub-folder "
                        "of aligned face images per identity.")
    classes, samples = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for name in files:
            check_regular_file(folder / name, "image", "remove it from the data folder")  # a FIFO would block
        if not files:
            logger.warning("skipping '%s': it holds no %s images", folder, "/".join(IMAGE_EXTENSIONS))
            continue
        samples += [(f"{folder.name}/{name}", len(classes)) for name in files]
        classes.append(folder.name)
    if not samples:
        raise UserError(f"'{root}' holds no identity sub-folders with images; the layout is "
                        f"<root>/<identity>/<image>{IMAGE_EXTENSIONS[0]}.")
    return classes, samples


class ImageFolderDataset(EncodedImageDataset):
    """A folder with one sub-folder of aligned 112x112 face images per identity (labels: sorted names)."""

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 max_corrupt_fraction: float = 0.001, decode: bool = True):
        self.root = Path(root)
        self.classes, samples = scan_image_folder(self.root)
        # Compact arrays rather than Python lists: forked workers then share them without copying.
        self.paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        super().__init__(len(samples), transform, max_corrupt_fraction, decode)
        self.num_classes = len(self.classes)
        self.image_size = (IMAGE_SIZE, IMAGE_SIZE)
        self._check_first_image()

    def _check_first_image(self) -> None:
        """Catch a folder of unaligned images at construction rather than in the first batch."""
        try:
            payload, _, name = self._encoded(0)
            image = decode_image(payload)
        except (_CorruptSample, ValueError):
            return  # an unreadable file is skipped and counted when read
        if tuple(image.shape[1:]) != self.image_size:
            raise UserError(f"{name} is {image.shape[2]}x{image.shape[1]}, not 112x112; {ALIGN_HINT}.")

    def _encoded(self, index: int) -> tuple[bytes, int, str]:
        path = self.root / os.fsdecode(self.paths[index])
        try:
            payload = read_bytes(path, "image")
        except UserError as exc:  # gone or replaced (by a FIFO, say) since the scan
            raise _CorruptSample(f"'{path}'", str(exc)) from None
        return payload, int(self.labels[index]), f"'{path}'"


class SyntheticDataset(Dataset):
    """Random uint8 images (deterministic per index and seed) for throughput tests; label = index mod C."""

    def __init__(self, num_images: int, num_classes: int, size: int = IMAGE_SIZE, seed: int = 0):
        if num_images < 1 or num_classes < 1:
            raise UserError(f"the synthetic dataset needs num_image >= 1 and num_classes >= 1, got "
                            f"{num_images} and {num_classes}; set both in the config.")
        self.num_images = num_images
        self.num_classes = num_classes
        self.image_size = (size, size)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, index])
        image = rng.integers(0, 256, size=(3, *self.image_size), dtype=np.uint8)
        return torch.from_numpy(image), index % self.num_classes


def build_dataset(config, transform: Callable | None = None) -> Dataset:
    """The training dataset config.dataset names, reading config.rec."""
    if config.gpu_decode and (config.dataset == "synthetic" or not torch.cuda.is_available()):
        why = "the synthetic dataset has nothing to decode" if config.dataset == "synthetic" else (
            "CUDA is not available")
        raise UserError(f"config.gpu_decode is True but {why}; set gpu_decode=False.")
    if config.dataset == "synthetic":
        return SyntheticDataset(config.num_image, config.num_classes)
    require(config, "rec", "the data folder (train.rec/train.idx/property, or identity sub-folders)")
    if config.dataset == "folder":
        return ImageFolderDataset(config.rec, transform, config.max_corrupt_fraction,
                                  decode=not config.gpu_decode)
    return RecordDataset(config.rec, transform, config.max_corrupt_fraction, decode=not config.gpu_decode)


def resolve_data_counts(config, dataset) -> EasyDict:
    """A copy of `config` with num_classes and num_image taken from the data; a config value that is set
    (non-zero) must equal the data's, else UserError before training starts."""
    resolved = EasyDict(dict(config))
    found = {"num_classes": dataset.num_classes, "num_image": len(dataset)}
    for key, value in found.items():
        if config[key] and config[key] != value:
            raise UserError(f"config.{key} is {config[key]} but the data in '{config.rec or config.dataset}' "
                            f"holds {value}; set {key}={value} (or 0 to take it from the data) or point "
                            "config.rec at the intended dataset.")
        resolved[key] = value
    return resolved


# ---- sampler and loader ----

class DistributedResumableSampler(Sampler[int]):
    """Each rank's disjoint share of one permutation per epoch, resumable inside an epoch.

    Epoch `e` shuffles all indices with the seed `seed + e` (the same permutation on every rank); rank
    `r` takes every `world_size`-th index of it starting at `r`. Because shares interleave, after every
    rank consumed `p` samples the whole world consumed exactly the first `p * world_size` indices of the
    permutation, so resuming (even with another world size) continues with the rest of that permutation.
    With `drop_last` the tail that does not fill all ranks is dropped; otherwise it is padded by
    repeating the start of the remaining indices.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0  # samples all ranks together consumed in this epoch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (call before set_start when resuming)."""
        self.epoch = epoch
        self.consumed = 0

    def set_start(self, position: int) -> None:
        """Skip the first `position` samples of this rank's share in the current epoch."""
        self.consumed = min(position * self.world_size, self.num_samples)

    def _remaining(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        return order[self.consumed:]

    def __iter__(self):
        remaining = self._remaining()
        if self.drop_last:
            remaining = remaining[:len(remaining) - len(remaining) % self.world_size]
        elif len(remaining):
            padding = -len(remaining) % self.world_size
            repeats = math.ceil(padding / len(remaining))
            remaining = torch.cat([remaining, remaining.repeat(repeats)[:padding]])
        return iter(remaining[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        remaining = self.num_samples - self.consumed
        if self.drop_last:
            return remaining // self.world_size
        return math.ceil(remaining / self.world_size)


class WorkerSeeder:
    """worker_init_fn seeding Python, NumPy and torch from (seed, rank, worker id); picklable for spawn."""

    def __init__(self, seed: int, rank: int):
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed_everything(derive_seed(self.seed, self.rank, worker_id))


def collate_encoded(batch: Sequence) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Batch of `decode=False` samples: (encoded byte tensors, labels [B], names)."""
    encoded, labels, names = zip(*batch)
    return list(encoded), torch.tensor(labels, dtype=torch.int64), list(names)


def build_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 2, device: str | torch.device = "cpu", drop_last: bool = True,
                 shuffle: bool = True, prefetch_factor: int = 2,
                 multiprocessing_context: str | None = None) -> DataLoader:
    """DataLoader over this rank's share: DistributedResumableSampler (`loader.sampler`), seeded workers,
    pinned memory on CUDA, persistent workers. Datasets built with decode=False yield encoded bytes for
    GpuJpegDecoder."""
    device = torch.device(device)
    sampler = DistributedResumableSampler(len(dataset), rank, world_size, seed, drop_last, shuffle)
    encoded = getattr(dataset, "decode", True) is False
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_encoded if encoded else None, pin_memory=device.type == "cuda",
        drop_last=drop_last, worker_init_fn=WorkerSeeder(seed, rank),
        persistent_workers=num_workers > 0, prefetch_factor=prefetch_factor if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + rank),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None)


# ---- on the device ----

def flip_and_normalize(images: torch.Tensor, flip: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, H, W] in [-1, 1], each image mirrored with probability 1/2.

    Runs where `images` is; the flip draws come from `generator` (on its own device) when given.
    """
    if flip:
        draw_device = generator.device if generator is not None else images.device
        flip_mask = torch.rand(len(images), generator=generator, device=draw_device) < 0.5  # [B]
        flip_mask = flip_mask.to(images.device, non_blocking=True)[:, None, None, None]  # [B, 1, 1, 1]
        images = torch.where(flip_mask, images.flip(-1), images)
    return normalize(images)


class BatchJpegDecoder:
    """Decodes a batch of encoded images on `device` with torchvision (nvJPEG on CUDA).

    PNG (or other non-JPEG) payloads are decoded with OpenCV and moved over. An image that fails to
    decode is replaced by another image of the batch (with its label), so the batch keeps its size, and
    counted as in the datasets.
    """

    def __init__(self, device: str | torch.device, num_images: int, max_corrupt_fraction: float,
                 image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)):
        self.device = torch.device(device)
        self.image_size = image_size
        self.corrupt = CorruptCounter(num_images, max_corrupt_fraction)

    def __call__(self, encoded: list[torch.Tensor], labels: torch.Tensor,
                 names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [B, 3, H, W] on the device, labels [B])."""
        images = self._decode_all(encoded, names)
        good = [index for index, image in enumerate(images) if image is not None]
        if not good:
            raise DataError(f"no image of the batch could be decoded (first: {names[0]}); the data is unusable.")
        # A failed image is replaced by the next decoded one (cyclically), as the datasets do.
        sources = [index if image is not None else next((g for g in good if g > index), good[0])
                   for index, image in enumerate(images)]
        batch = torch.stack([images[index] for index in sources])  # [B, 3, H, W]
        return batch, labels[torch.tensor(sources)]

    def _decode_all(self, encoded: list[torch.Tensor], names: list[str]) -> list[torch.Tensor | None]:
        """[3, H, W] images on the device, None where decoding failed (counted)."""
        is_jpeg = [bytes(data[:2].tolist()) == _JPEG_START for data in encoded]
        jpeg_indices = [index for index, flag in enumerate(is_jpeg) if flag]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg_indices:
            try:
                batch = decode_jpeg([encoded[i] for i in jpeg_indices], mode=ImageReadMode.RGB, device=self.device)
                decoded = dict(zip(jpeg_indices, batch))
            except RuntimeError:  # one bad JPEG fails the whole call: decode one by one to find it
                decoded = {}
        images = [decoded[index] if index in decoded else self._decode_one(data, name, jpeg)
                  for index, (data, name, jpeg) in enumerate(zip(encoded, names, is_jpeg))]
        for image, name in zip(images, names):
            if image is not None and tuple(image.shape[1:]) != self.image_size:
                raise DataError(f"{name} is {image.shape[2]}x{image.shape[1]}, not "
                                f"{self.image_size[1]}x{self.image_size[0]}; {ALIGN_HINT}.")
        return images

    def _decode_one(self, data: torch.Tensor, name: str, is_jpeg: bool) -> torch.Tensor | None:
        try:
            if is_jpeg:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            return decode_image(data.numpy().tobytes()).to(self.device, non_blocking=True)
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).rsplit(", ", 1)[-1] or type(exc).__name__  # drop torchvision's source path
            self.corrupt.add(name, reason)
            return None


class GpuJpegDecoder(BatchJpegDecoder):
    """BatchJpegDecoder that insists on a CUDA device (config.gpu_decode)."""

    def __init__(self, device: str | torch.device, num_images: int, max_corrupt_fraction: float,
                 image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)):
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise UserError(f"gpu_decode=True needs a CUDA device, but the device is '{device}'"
                            f"{'' if torch.cuda.is_available() else ' and CUDA is not available'}; set "
                            "gpu_decode=False to decode on the CPU workers.")
        super().__init__(device, num_images, max_corrupt_fraction, image_size)


class DeviceAugment:
    """Turns a loader batch into training input on the device: float images [B, 3, H, W] in [-1, 1]
    with random horizontal flips, and int64 labels [B]. Copies are non-blocking (the loader pins memory
    on CUDA); with a decoder the batch holds encoded bytes that are decoded on the device first."""

    def __init__(self, device: str | torch.device, flip: bool = True, generator: torch.Generator | None = None,
                 decoder: BatchJpegDecoder | None = None):
        self.device = torch.device(device)
        self.flip = flip
        self.generator = generator
        self.decoder = decoder

    def __call__(self, batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        if self.decoder is not None:
            images, labels = self.decoder(*batch)
        else:
            images, labels = batch[0], batch[1]
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        return flip_and_normalize(images, self.flip, self.generator), labels


def build_device_augment(config, dataset, device: str | torch.device,
                         generator: torch.Generator | None = None) -> DeviceAugment:
    """DeviceAugment for the config: with a GPU JPEG decoder when config.gpu_decode is set."""
    decoder = None
    if getattr(dataset, "decode", True) is False:
        decoder = GpuJpegDecoder(device, len(dataset), config.max_corrupt_fraction, dataset.image_size)
    return DeviceAugment(device, flip=True, generator=generator, decoder=decoder)
