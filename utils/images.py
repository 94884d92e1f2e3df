"""What the network sees: aligned RGB faces of IMAGE_SIZE x IMAGE_SIZE pixels, scaled to [-1, 1].

The scaling is the released ToTensor + Normalize(0.5, 0.5): (pixel / 255 - 0.5) / 0.5, in this order of
operations, so results match the released code bit for bit.
"""

from __future__ import annotations

import torch

IMAGE_SIZE = 112  # aligned face crops are 112x112

# File types every folder reader takes (compared lower-case): what OpenCV's pip wheels decode.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jp2", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pbm",
                    ".pgm", ".ppm", ".pxm", ".pnm", ".sr", ".ras", ".hdr", ".pic", ".avif", ".gif")
PIXEL_MAX = 255.0


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] (uint8, or float) -> a new float tensor in [-1, 1], same shape and device.

    uint8 becomes float32; float input keeps its dtype when it is at least float32. `pixels` itself is
    never modified.
    """
    dtype = torch.promote_types(pixels.dtype, torch.float32)
    return pixels.to(dtype).div(PIXEL_MAX).sub_(0.5).div_(0.5)  # div makes the copy the in-place ops edit


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`: [-1, 1] -> [0, 255], float, unrounded and unclipped."""
    return (images * 0.5 + 0.5) * PIXEL_MAX
