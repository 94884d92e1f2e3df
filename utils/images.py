"""What the network sees: aligned RGB faces of IMAGE_SIZE x IMAGE_SIZE pixels, scaled to [-1, 1].

The scaling is the released ToTensor + Normalize(0.5, 0.5): (pixel / 255 - 0.5) / 0.5, in this order of
operations, so results match the released code bit for bit.

`image_size_of` reads an encoded image's pixel dimensions from its header, so readers refuse a wrong size
or a decompression bomb (a small file that decodes to gigabytes) before decoding it.
"""

from __future__ import annotations

import io
import struct
import warnings

import torch
from PIL import Image

from utils.errors import UserError

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


# Larger than any photo a face is cropped from; a header beyond it is a decompression bomb or damage.
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 2**27

_PNG_START = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment; None when the markers run out."""
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, position + 5)
            return width, height
        elif marker in _JPEG_NO_LENGTH:
            position += 2
        else:
            position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return None


def image_size_of(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from an encoded image's header, without decoding it; None when the header
    cannot be read. JPEG and PNG (what .rec and .bin files hold) are parsed directly in a few microseconds,
    other formats by PIL's lazy open."""
    if data.startswith(_PNG_START) and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        return (MAX_IMAGE_SIDE + 1, MAX_IMAGE_SIDE + 1)
    except Exception:  # PIL raises many types for data it does not know; OpenCV may still decode it
        return None


def check_image_size(data: bytes, name: str, expected: tuple[int, int] | None = None, hint: str = "") -> None:
    """UserError before decoding when the header of `data` gives a size other than `expected` (width,
    height), or more than MAX_IMAGE_SIDE / MAX_IMAGE_PIXELS; `name` names the image in the message."""
    size = image_size_of(data)
    if size is None:
        return
    width, height = size
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{name} claims {width}x{height} pixels, more than this project decodes "
                        f"({MAX_IMAGE_SIDE} a side); the file is damaged or hostile: remove it.")
    if expected is not None and size != tuple(expected):
        raise UserError(f"{name} is {width}x{height}, not {expected[0]}x{expected[1]}"
                        + (f"; {hint}." if hint else "."))
