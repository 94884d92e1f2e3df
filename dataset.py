"""Training data: RecordIO, image-folder and synthetic datasets, the resumable distributed sampler, the loader.

Datasets return uint8 RGB images [3, H, W] and an int label; everything per-pixel that can run on the
accelerator (flip, normalisation, optionally JPEG decode) runs there (`device_input.py`), so CPU workers
only read and decode (`utils/decode.py`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from utils.config import require
from utils.decode import decode_chw, image_size_of, nvjpeg_ready, split_image_files, warn_skipped
from utils.errors import UserError
from utils.files import check_regular_file, read_bytes, read_text
from utils.images import IMAGE_EXTENSIONS, IMAGE_SIZE
from utils.randperm import TorchRandperm
from utils.recordio import IndexedRecordReader, RecordIOError, class_label, exact_header_range, unpack
from utils.seeding import derive_seed, seed_everything

logger = logging.getLogger(__name__)

DATASET_KINDS = ("recordio", "folder", "synthetic")
ALIGN_HINT = ("training needs aligned 112x112 faces: align them with a 5-point similarity transform "
              "(for example insightface's norm_crop) or resize crops that are already aligned, then retry")


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
    With `decode=False` a sample is `(image, label, name)`: `image` is the encoded bytes as a uint8 1-D
    tensor when torchvision's JPEG decoder gives `decode_image`'s pixels (`nvjpeg_ready`), else the image
    decoded here, uint8 [3, H, W].
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

    def check_first_image(self) -> None:
        """UserError when the first image is not `image_size` (the size `property` states, or 112x112), at
        construction rather than in the first batch; read from its header, never decoded (it may be a bomb)."""
        try:
            payload, _, name = self._encoded(0)
        except _CorruptSample:
            return  # an unreadable image is skipped and counted when read
        size = image_size_of(payload)  # (width, height), None for a header that cannot be read
        if size is not None and size[::-1] != tuple(self.image_size):
            raise UserError(f"{name} is {size[0]}x{size[1]}, not {self.image_size[1]}x"
                            f"{self.image_size[0]}; {ALIGN_HINT}.")

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
        size = image_size_of(payload)  # from the header: a wrong size or a bomb is refused before decoding
        if size is None:  # never decoded on trust
            raise _CorruptSample(name, "its image header cannot be read")
        if size[::-1] != self.image_size:
            raise DataError(f"{name} is {size[0]}x{size[1]}, not {self.image_size[1]}x{self.image_size[0]}; "
                            f"{ALIGN_HINT}.")
        if not self.decode and nvjpeg_ready(payload):
            return torch.frombuffer(bytearray(payload), dtype=torch.uint8), label, name  # [num_bytes]
        try:
            image = decode_chw(payload)  # [3, H, W]
        except ValueError as exc:
            raise _CorruptSample(name, str(exc)) from None
        if tuple(image.shape[1:]) != self.image_size:
            raise DataError(f"{name} is {image.shape[2]}x{image.shape[1]}, not "
                            f"{self.image_size[1]}x{self.image_size[0]}; {ALIGN_HINT}.")
        if not self.decode:  # what the GPU decoder would get wrong (EXIF rotation, CMYK, PNG) is decoded here
            return image, label, name
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

    `index_cache` ("" by default, a folder, or "off"; `utils.record_index.open_index`) keeps the index in a
    binary file every process maps, so the ranks of a node share one copy: `image_keys` and
    `image_offsets` [num_images] are views of it wherever the image keys are one run of the index.
    """

    def __init__(self, root_dir: str | Path, transform: Callable | None = None,
                 max_corrupt_fraction: float = 0.001, decode: bool = True, index_cache: str = ""):
        self.root = Path(root_dir)
        if not self.root.is_dir():
            raise UserError(f"data directory '{self.root}' does not exist; set config.rec to the folder that "
                            "holds train.rec, train.idx and property.")
        self.reader = IndexedRecordReader(self.root / "train.rec", self.root / "train.idx", index_cache)
        if len(self.reader) == 0:
            raise UserError(f"'{self.reader.idx_path}' lists no records; re-pack the data (tools.pack_rec) or "
                            "restore the index.")
        header = self._header_record()
        self.has_header = header is not None
        if header is not None:
            first_identity, end = self._header_range(header)
            self.image_key_range = (1, first_identity)
            header_classes = end - first_identity
        else:
            self.image_key_range = None
            header_classes = None
        try:
            self.image_keys, self.image_offsets = self._image_entries()
        except KeyError as exc:
            raise UserError(f"the header record of '{self.reader.rec_path}' lists images 1.."
                            f"{first_identity - 1}, but {exc.args[0]}; the .idx is incomplete: re-pack.") from None
        super().__init__(len(self.image_keys), transform, max_corrupt_fraction, decode)
        self.num_classes, self.image_size = self._classes_and_size(header_classes)
        if len(self.image_keys):
            self.check_first_image()

    def _image_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, offsets) [num_images] of the images: every entry of the index without a header record,
        else keys `image_key_range`; views of the index (no copy) when those keys are one run of it."""
        index = self.reader.index
        if self.image_key_range is None:
            return index.keys, index.offsets
        first, end = self.image_key_range
        span = index.key_range(first, end)
        if span is not None:
            return index.keys[span], index.offsets[span]
        keys = np.arange(first, end, dtype=np.int64)
        return keys, self.reader.offsets_of(keys)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["image_keys"], state["image_offsets"]  # views of the mapped index: re-made, not copied
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.image_keys, self.image_offsets = self._image_entries()

    def _header_record(self):
        """The IRHeader of insightface's header record 0, None when the file has none."""
        if 0 not in self.reader:
            return None
        try:
            header, payload = unpack(self.reader.read(0))
        except ValueError as exc:
            raise UserError(f"'{self.reader.rec_path}': record 0 is damaged ({exc}); re-pack the data.") from None
        return header if header.flag >= 2 and not payload else None

    def _header_range(self, header) -> tuple[int, int]:
        """[first identity key, end key) of the header record, exact at any size (utils.recordio's
        `exact_header_range`), checked against the index: every identity record it claims must be there, so a
        damaged header cannot invent classes."""
        label = header.label
        if not (all(math.isfinite(v) and v == int(v) for v in label[:2]) and 1 <= label[0] <= label[1]):
            raise UserError(f"'{self.reader.rec_path}': header record 0 has label {list(label)}, not [first "
                            "identity key, end key]; the file is damaged: re-pack it.")
        first_identity, end = exact_header_range(self.reader, label)  # float32 is rounded above 2^24
        try:
            self.reader.offsets_of(np.arange(first_identity, end))
        except KeyError as exc:
            raise UserError(f"the header record of '{self.reader.rec_path}' claims {end - first_identity} identity "
                            f"records (keys {first_identity}..{end - 1}), but {exc.args[0]} "
                            f"({len(self.reader)} entries); the index is truncated or the header damaged: "
                            "re-pack the data.") from None
        return first_identity, end

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
            largest = max(largest, class_label(header, f"record key {key} of '{self.reader.rec_path}'"))
        return largest + 1

    def _encoded(self, index: int) -> tuple[bytes, int, str]:
        key = int(self.image_keys[index])
        name = f"record key {key} of '{self.reader.rec_path}'"
        try:
            header, payload = unpack(self.reader.read_at(int(self.image_offsets[index]), key))
            label = class_label(header, name)
        except (RecordIOError, ValueError) as exc:
            raise _CorruptSample(name, str(exc)) from None
        return payload, label, name


def identity_folders(root: Path) -> list[Path]:
    """The identity sub-folders of `root` in label order: numeric when every name is an integer (so the
    folders `rec2image` writes, and folders named 0..N-1 without padding, keep their labels), else by name."""
    folders = [path for path in root.iterdir() if path.is_dir()]
    if folders and all(path.name.isascii() and path.name.isdigit() for path in folders):
        return sorted(folders, key=lambda path: (int(path.name), path.name))
    return sorted(folders)


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, [(path relative to root, label)]) of a folder of identity sub-folders.

    Label i is the i-th folder of `identity_folders`; a warning says when integer folder names differ from
    their labels. A folder without images is still a class (an identity without images, as a RecordIO set
    may hold) and is named in a warning; files that are not images are skipped and named in one warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist; point it at a folder with one sub-folder "
                        "of aligned face images per identity.")
    folders = identity_folders(root)
    samples, skipped = [], [path for path in root.iterdir() if not path.is_dir()]
    for label, folder in enumerate(folders):
        images, others = split_image_files(sorted(folder.iterdir()))
        for path in images:
            check_regular_file(path, "image", "remove it from the data folder")  # a FIFO would block
        samples += [(f"{folder.name}/{path.name}", label) for path in images]
        skipped += others
    if not samples:
        raise UserError(f"'{root}' holds no identity sub-folders with images; the layout is "
                        f"<root>/<identity>/<image>{IMAGE_EXTENSIONS[0]}.")
    warn_skipped(skipped, root)
    _warn_label_changes(root, [folder.name for folder in folders], {label for _, label in samples})
    return [folder.name for folder in folders], samples


def _warn_label_changes(root: Path, classes: list[str], labels_with_images: set[int]) -> None:
    empty = [name for label, name in enumerate(classes) if label not in labels_with_images]
    if empty:
        logger.warning("'%s': %d identity folders hold no images and stay classes without images: %s",
                       root, len(empty), ", ".join(f"'{name}'" for name in empty[:5]))
    renamed = [(name, label) for label, name in enumerate(classes) if name.isdigit() and int(name) != label]
    if renamed and all(name.isascii() and name.isdigit() for name in classes):
        name, label = renamed[0]
        logger.warning("'%s': the identity folders have integer names, but labels are their positions in "
                       "numeric order, so %d folders get another label (first: '%s' -> %d); name them "
                       "0..%d to keep the names as labels.", root, len(renamed), name, label, len(classes) - 1)


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
        self.check_first_image()

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
        dataset = SyntheticDataset(config.num_image, config.num_classes)
    else:
        require(config, "rec", "the data folder (train.rec/train.idx/property, or identity sub-folders)")
        if config.dataset == "folder":
            dataset = ImageFolderDataset(config.rec, transform, config.max_corrupt_fraction,
                                         decode=not config.gpu_decode)
        else:
            dataset = RecordDataset(config.rec, transform, config.max_corrupt_fraction,
                                    decode=not config.gpu_decode, index_cache=config.index_cache)
    check_input_size(dataset, config.rec or config.dataset)
    return dataset


def check_input_size(dataset, source: str, size: int = IMAGE_SIZE) -> None:
    """UserError before step 1 when the dataset's images are not the network's `size` x `size` input.

    The dataset's `image_size` comes from `property` (RecordIO, checked against the first record at
    construction), the first image (folders) or the setting (synthetic).
    """
    height, width = dataset.image_size
    if (height, width) != (size, size):
        raise UserError(f"the images of '{source}' are {width}x{height} but the network takes {size}x{size}; "
                        f"{ALIGN_HINT}.")


def data_identity(dataset) -> dict[str, int | str]:
    """What a checkpoint records of its training data, so a resume notices the data changed: image and
    class counts and a cheap fingerprint (RecordIO: the .idx size and SHA-256, computed once when the index
    is parsed and kept in its cache; folders: SHA-256 of the image paths and labels; synthetic: its size
    and seed)."""
    if isinstance(dataset, RecordDataset):
        fingerprint = dataset.reader.index.fingerprint
    elif isinstance(dataset, ImageFolderDataset):
        digest = hashlib.sha256(b"\0".join(dataset.paths.tolist()))
        digest.update(dataset.labels.tobytes())
        fingerprint = f"folder sha256 {digest.hexdigest()}"
    else:
        fingerprint = f"synthetic seed {dataset.seed}"
    return {"num_image": len(dataset), "num_classes": dataset.num_classes, "fingerprint": fingerprint}


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

class DistributedResumableSampler(Sampler[np.ndarray]):
    """Each rank's disjoint share of one permutation per epoch, as micro-batches of indices, resumable inside
    an epoch at any image.

    Epoch `e` shuffles all indices in `torch.randperm`'s order seeded with `seed + e` (the same permutation
    on every rank, the same order for a seed as every earlier version), computed from the front as the epoch
    goes (`utils.randperm.TorchRandperm`: int32, 4 B per image, the first batches ready at once). An optimizer
    step takes the next `batch_size × micro_batches × world_size` images of it (one global batch) and splits
    them over `micro_batches × world_size` virtual ranks, as if each process's micro-batch were a rank of
    its own: the b-th image of virtual rank v is the (b × virtual ranks + v)-th of the step, and micro-batch
    m of rank r is virtual rank `m × world_size + r`. So every forward pass sees the same group of images
    whatever the split of the global batch into ranks and micro-batches (BatchNorm statistics follow), and
    after any number of steps the world consumed exactly a prefix of the permutation: a resume (even with
    another split or another global batch) continues with the rest of it (`set_epoch(epoch, start)`). With
    `drop_last` the tail that does not fill a global batch is dropped; otherwise it is padded by repeating
    the start of the remaining indices, and this rank's share of it comes in batches of `batch_size` (the
    last shorter).

    Iterating yields this rank's micro-batches in order, each an index array [batch_size] (int32, int64
    from 2^31 images): the loader hands a whole array to a worker, so no Python object per image is made
    in the training process. `len()` counts those arrays; `indices()` is the same share flattened.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True, shuffle: bool = True, *, batch_size: int = 1, micro_batches: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.micro_batches = micro_batches
        self.epoch = 0
        self.start = 0  # images all ranks together consumed in this epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.micro_batches * self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Continue epoch `epoch` after the first `start` images of its permutation (all ranks together)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside [0, {self.num_samples}]")
        self.epoch = epoch
        self.start = start

    def _order(self) -> Callable[[int], np.ndarray]:
        """`final(upto)`: the epoch's order of all indices [num_samples], its first `upto` entries final."""
        if not self.shuffle:
            order = np.arange(self.num_samples, dtype=np.int32 if self.num_samples < 2**31 else np.int64)
            return lambda upto: order
        return TorchRandperm(self.num_samples, self.seed + self.epoch).advance

    def permutation(self) -> torch.Tensor:
        """The epoch's whole order of all indices [num_samples], int32 where it fits (same values as int64)."""
        return torch.from_numpy(self._order()(self.num_samples))

    def _tail_share(self, order: np.ndarray, first: int) -> np.ndarray:
        """This rank's share [ceil(tail / W)] of the images from `first` on that do not fill a global batch,
        padded by repeating their start to a multiple of the world size."""
        tail = order[first:]
        if len(tail) == 0:
            return tail
        padding = -len(tail) % self.world_size
        return np.concatenate([tail, np.resize(tail, padding)])[self.rank::self.world_size]

    def __iter__(self):
        final = self._order()
        num_steps = (self.num_samples - self.start) // self.global_batch
        chunk = max(1, 2**16 // self.global_batch)  # steps shuffled and split at a time
        for first_step in range(0, num_steps, chunk):
            steps = min(chunk, num_steps - first_step)
            low = self.start + first_step * self.global_batch
            high = low + steps * self.global_batch
            # [S*G] -> [S, b, M, W]: the b-th image of virtual rank m*W + r is image b*(M*W) + m*W + r of a step
            images = final(high)[low:high].reshape(steps, self.batch_size, self.micro_batches, self.world_size)
            mine = images[..., self.rank].transpose(0, 2, 1)  # [S, M, b]: this rank's micro-batches in order
            yield from np.ascontiguousarray(mine).reshape(-1, self.batch_size)
        if self.drop_last:
            return
        share = self._tail_share(final(self.num_samples), self.start + num_steps * self.global_batch)
        for first in range(0, len(share), self.batch_size):
            yield share[first:first + self.batch_size]  # [<= b]: the last, shorter batches

    def indices(self) -> np.ndarray:
        """This rank's indices of the rest of the epoch in the order they are handed out [images]."""
        return np.concatenate([np.zeros(0, dtype=np.int32), *self])

    def __len__(self) -> int:
        remaining = self.num_samples - self.start
        whole = remaining // self.global_batch * self.micro_batches
        tail = 0 if self.drop_last else math.ceil(remaining % self.global_batch / self.world_size)
        return whole + math.ceil(tail / self.batch_size)


class WorkerSeeder:
    """worker_init_fn seeding Python, NumPy and torch from (seed, rank, worker id); picklable for spawn."""

    def __init__(self, seed: int, rank: int):
        self.seed = seed
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        seed_everything(derive_seed(self.seed, self.rank, worker_id))


def collate_encoded(batch: Sequence) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Batch of `decode=False` samples: (encoded byte tensors or decoded images, labels [B], names)."""
    encoded, labels, names = zip(*batch)
    return list(encoded), torch.tensor(labels, dtype=torch.int64), list(names)


class BatchesOf(Dataset):
    """`dataset` read a batch at a time: item `indices` (an index array [B]) is the list of those samples,
    which the loader's collate function stacks. Lets the sampler hand out whole index arrays."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: np.ndarray) -> list:
        return [self.dataset[index] for index in indices.tolist()]


def build_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 2, device: str | torch.device = "cpu", drop_last: bool = True,
                 shuffle: bool = True, prefetch_factor: int = 2, micro_batches: int = 1,
                 multiprocessing_context: str | None = None) -> DataLoader:
    """DataLoader over this rank's share: DistributedResumableSampler (`loader.sampler`, interleaving ranks
    and `micro_batches` per optimizer step, handing out index arrays that `BatchesOf(dataset)` reads in
    the workers), seeded workers, pinned memory on CUDA, persistent workers.
    Datasets built with decode=False yield encoded bytes for device_input.GpuJpegDecoder."""
    device = torch.device(device)
    sampler = DistributedResumableSampler(len(dataset), rank, world_size, seed, drop_last, shuffle,
                                          batch_size=batch_size, micro_batches=micro_batches)
    encoded = getattr(dataset, "decode", True) is False
    return DataLoader(
        BatchesOf(dataset), batch_size=None, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_encoded if encoded else default_collate, pin_memory=device.type == "cuda",
        worker_init_fn=WorkerSeeder(seed, rank),
        persistent_workers=num_workers > 0, prefetch_factor=prefetch_factor if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + rank),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None)
