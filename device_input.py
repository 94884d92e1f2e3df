"""Training input on the device: optional JPEG decoding there (nvJPEG on CUDA), random flip, [-1, 1].

The loader (`dataset.py`) yields uint8 RGB batches [B, 3, H, W], or with `gpu_decode` lists of encoded
JPEGs; `DeviceAugment` turns either into the float batch the network trains on, on the training device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from dataset import ALIGN_HINT, CorruptCounter, DataError
from utils.decode import decode_chw, nvjpeg_ready
from utils.errors import UserError
from utils.images import IMAGE_SIZE, normalize


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

    torchvision gets only the JPEGs it decodes as `utils.decode.decode_image` does (`nvjpeg_ready`: no EXIF
    rotation, grey or YCbCr); the others (EXIF-rotated or CMYK JPEGs, PNG and every other type) are decoded
    by `decode_image` on the CPU and moved over, and images the dataset already decoded ([3, H, W]) are
    moved as they are. An image that fails to decode is replaced by another image of the batch (with its
    label), so the batch keeps its size, and counted as in the datasets.
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
        ready = [data.dim() == 1 and nvjpeg_ready(data.numpy().tobytes()) for data in encoded]
        jpeg_indices = [index for index, flag in enumerate(ready) if flag]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg_indices:
            try:
                batch = decode_jpeg([encoded[i] for i in jpeg_indices], mode=ImageReadMode.RGB, device=self.device)
                decoded = dict(zip(jpeg_indices, batch))
            except RuntimeError:  # one bad JPEG fails the whole call: decode one by one to find it
                decoded = {}
        images = [decoded[index] if index in decoded else self._decode_one(data, name, jpeg)
                  for index, (data, name, jpeg) in enumerate(zip(encoded, names, ready))]
        for image, name in zip(images, names):
            if image is not None and tuple(image.shape[1:]) != self.image_size:
                raise DataError(f"{name} is {image.shape[2]}x{image.shape[1]}, not "
                                f"{self.image_size[1]}x{self.image_size[0]}; {ALIGN_HINT}.")
        return images

    def _decode_one(self, data: torch.Tensor, name: str, ready: bool) -> torch.Tensor | None:
        if data.dim() == 3:  # decoded by the dataset's worker
            return data.to(self.device, non_blocking=True)
        try:
            if ready:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            return decode_chw(data.numpy()).to(self.device, non_blocking=True)
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
