"""Image decoding for every reader: encoded bytes or a file -> RGB uint8 [H, W, 3], one EXIF and colour rule.

OpenCV decodes every image (`cv2.IMREAD_COLOR`), the decoder MXNet's `imdecode` uses, so RecordIO pixels
equal MXNet's. Its rule, the same in every path (training, `.bin`, IJB, inference, tools):

- the EXIF orientation tag is applied, as OpenCV's and PIL's users expect (a JPEG tagged "rotate 180"
  comes out upright);
- grey is replicated to three channels, alpha is dropped (not composited), palettes are expanded, CMYK is
  converted, 16-bit samples keep their high byte.

torchvision's JPEG decoder (nvJPEG on CUDA) ignores EXIF and converts CMYK differently, so the GPU path
hands it only `nvjpeg_ready` payloads and decodes the rest here (see `device_input.py`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from utils.errors import UserError
from utils.files import read_bytes
from utils.images import IMAGE_EXTENSIONS, check_image_size

logger = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8\xff"
PNG_START = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION_TAG = 0x0112
_EXIF_APP1 = b"Exif\x00\x00"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4, C8, CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NUM_SKIPPED_NAMED = 5  # skipped files a warning names


def decode_image(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Encoded image (any type OpenCV reads) -> uint8 RGB [H, W, 3], EXIF orientation applied.

    Raises ValueError when the bytes are empty or do not decode.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None  # [H, W, BGR]
    if bgr is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])  # [H, W, RGB]: one NumPy copy, cheaper than OpenCV's threads


def read_image(path: str | Path) -> np.ndarray:
    """The image file at `path` as uint8 RGB [H, W, 3] (see `decode_image`); UserError naming the file
    when it cannot be read or decoded."""
    data = read_bytes(path, "image")
    check_image_size(data, f"image '{path}'")  # a decompression bomb is refused before decoding
    try:
        return decode_image(data)
    except ValueError:
        raise UserError(f"'{path}' is not a decodable image; replace it with a JPEG, PNG or another type "
                        "OpenCV reads.") from None


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 tensor [3, H, W] sharing its memory (collate or `.contiguous()` copies)."""
    return torch.from_numpy(image).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]


def jpeg_header(data: bytes) -> tuple[int, bool] | None:
    """(number of colour components, whether an EXIF segment is present) of a JPEG, read from its marker
    segments up to the frame header; None when `data` is not a JPEG or its header is cut off."""
    if not data.startswith(JPEG_START):
        return None
    position, has_exif = 2, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")  # includes these two bytes
        if marker == 0xE1 and data[position + 4:position + 10] == _EXIF_APP1:
            has_exif = True
        if marker in _SOF_MARKERS:
            return (data[position + 9], has_exif) if position + 10 <= len(data) else None
        position += 2 + length
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8; 1 = upright, also when there is no tag) of an encoded image, read by PIL."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # what PIL raises for unreadable headers
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def nvjpeg_ready(data: bytes) -> bool:
    """True when torchvision's JPEG decoder (CPU or nvJPEG) gives what `decode_image` gives: a grey or
    YCbCr JPEG without an EXIF rotation. Everything else must go through `decode_image`."""
    header = jpeg_header(data)
    if header is None or header[0] not in (1, 3):
        return False
    return not header[1] or exif_orientation(data) == 1


def is_image_file(path: Path) -> bool:
    """Whether the name of `path` ends in one of IMAGE_EXTENSIONS, in any case (readers then refuse one that
    is not a regular file with `utils.files.check_regular_file`)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def split_image_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(image files, everything else) among `paths`, each in the given order (see `is_image_file`)."""
    images, others = [], []
    for path in paths:
        (images if is_image_file(path) else others).append(path)
    return images, others


def warn_skipped(skipped: list[Path], where: str | Path) -> None:
    """One warning line for the files a folder reader leaves out: their count and the first few names."""
    if not skipped:
        return
    names = ", ".join(f"'{path}'" for path in skipped[:_NUM_SKIPPED_NAMED])
    more = f" and {len(skipped) - _NUM_SKIPPED_NAMED} more" if len(skipped) > _NUM_SKIPPED_NAMED else ""
    logger.warning("'%s': skipped %d files that are not images (types: %s): %s%s", where, len(skipped),
                   " ".join(IMAGE_EXTENSIONS), names, more)
