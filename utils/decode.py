"""Image decoding for every reader: encoded bytes or a file -> RGB uint8 [H, W, 3], one EXIF and colour rule.

OpenCV decodes every image (`cv2.IMREAD_COLOR`), the decoder MXNet's `imdecode` uses, so RecordIO pixels
equal MXNet's. Its rule, the same in every path (training, `.bin`, IJB, inference, tools):

- the EXIF orientation tag is applied, as OpenCV's and PIL's users expect (a JPEG tagged "rotate 180"
  comes out upright);
- grey is replicated to three channels, alpha is dropped (not composited), palettes are expanded, CMYK is
  converted, 16-bit samples keep their high byte.

torchvision's JPEG decoder (nvJPEG on CUDA) ignores EXIF and converts CMYK differently, so the GPU path
hands it only `nvjpeg_ready` payloads and decodes the rest here (see `device_input.py`).

`image_size_of` reads an encoded image's pixel dimensions from its header, so readers refuse a wrong size
or a decompression bomb (a small file that decodes to gigabytes) before decoding it.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError
from utils.files import read_bytes
from utils.images import IMAGE_EXTENSIONS
from utils.opencv import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, cv2

logger = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8\xff"
PNG_START = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION_TAG = 0x0112
_EXIF_APP1 = b"Exif\x00\x00"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4, C8, CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length field
_NUM_SKIPPED_NAMED = 5  # skipped files a warning names
_RADIANCE_STARTS = (b"#?RADIANCE", b"#?RGBE")
_RADIANCE_HEADER_LIMIT = 1 << 16  # bytes searched for the end of a Radiance header
_RADIANCE_RESOLUTION = re.compile(rb"[-+]([XY]) (\d+) [-+]([XY]) (\d+)")


def _decode_bgr(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """OpenCV's decode, uint8 [H, W, BGR]; ValueError when the bytes are empty or do not decode, or when
    OpenCV refuses the size their header gives (its own limits, set by `utils.opencv`)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except cv2.error as exc:  # raised only by OpenCV's size check; decode failures return None
        raise ValueError(f"its size is over OpenCV's image limit ({exc.err})") from None
    if bgr is None:
        raise ValueError("not a decodable image")
    return bgr


def decode_image(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Encoded image (any type OpenCV reads) -> uint8 RGB [H, W, 3], EXIF orientation applied.

    Raises ValueError when the bytes are empty or do not decode.
    """
    return np.ascontiguousarray(_decode_bgr(data)[:, :, ::-1])  # [H, W, BGR] -> [H, W, RGB]


def decode_chw(data: bytes | bytearray | memoryview | np.ndarray) -> torch.Tensor:
    """`decode_image` laid out as the network takes it: uint8 tensor [3, H, W] RGB, contiguous.

    One NumPy copy from OpenCV's [H, W, BGR]: a strided view stacked later, or OpenCV's and torch's
    threaded copies, cost more than the decode itself for a 112x112 image (bench/bench_decode.py).
    """
    bgr = _decode_bgr(data)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)[::-1]))  # [H, W, BGR] -> [RGB, H, W]


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


def _jpeg_frame(data: bytes) -> tuple[int, bool] | None:
    """(byte offset of the start-of-frame marker, whether an EXIF segment comes before it) of a JPEG, from
    its marker segments; None when the markers break or run out first."""
    position, has_exif = 2, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # a stray byte: libjpeg skips to the next 0xFF and decodes on, so do we
            position += 1
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker in _SOF_MARKERS:
            return (position, has_exif) if position + 10 <= len(data) else None
        elif marker in _NO_LENGTH_MARKERS:
            position += 2
        else:
            has_exif = has_exif or (marker == 0xE1 and data[position + 4:position + 10] == _EXIF_APP1)
            position += 2 + struct.unpack_from(">H", data, position + 2)[0]  # the length counts its own 2 bytes
    return None


def jpeg_header(data: bytes) -> tuple[int, bool] | None:
    """(number of colour components, whether an EXIF segment is present) of a JPEG, read from its marker
    segments up to the frame header; None when `data` is not a JPEG or its header is cut off."""
    frame = _jpeg_frame(data) if data.startswith(JPEG_START) else None
    if frame is None:
        return None
    position, has_exif = frame
    return data[position + 9], has_exif


def _radiance_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a Radiance HDR (.hdr, .pic) from its text header (lines up to a blank one, then
    the resolution line such as `-Y 480 +X 640`); None when the header is not one. PIL does not read it."""
    end = data.find(b"\n\n", 0, _RADIANCE_HEADER_LIMIT)
    if end < 0:
        return None
    line = data[end + 2:data.find(b"\n", end + 2, end + 2 + 64)]
    match = _RADIANCE_RESOLUTION.fullmatch(line.strip())
    if match is None:
        return None
    sizes = {match.group(1): int(match.group(2)), match.group(3): int(match.group(4))}
    return (sizes[b"X"], sizes[b"Y"]) if set(sizes) == {b"X", b"Y"} else None


def image_size_of(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from an encoded image's header, without decoding it; None when the header
    cannot be read (then `check_image_size` refuses the image). JPEG, PNG (what .rec and .bin files hold)
    and Radiance HDR are parsed directly, every other type of IMAGE_EXTENSIONS by PIL's lazy open. The size
    is the stored one, before any EXIF rotation. A JPEG's stray bytes between markers are skipped as
    libjpeg skips them, so the frame header read is the one the decoder uses."""
    if data.startswith(PNG_START) and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data.startswith(_RADIANCE_STARTS):
        return _radiance_size(data)
    if data.startswith(b"\xff\xd8"):
        frame = _jpeg_frame(data)
        if frame is None:
            return None
        height, width = struct.unpack_from(">HH", data, frame[0] + 5)
        return width, height
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
    """UserError before decoding when the header of `data` cannot be read, or gives a size other than
    `expected` (width, height), or more than MAX_IMAGE_SIDE / MAX_IMAGE_PIXELS; `name` names the image in
    the message. No image is decoded on trust: a header this project cannot read is refused."""
    size = image_size_of(data)
    if size is None:
        raise UserError(f"{name} has no image header this project can read (types: {' '.join(IMAGE_EXTENSIONS)}); "
                        "the file is damaged or of another type: replace it.")
    width, height = size
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"{name} claims {width}x{height} pixels, more than this project decodes "
                        f"({MAX_IMAGE_SIDE} a side); the file is damaged or hostile: remove it.")
    if expected is not None and size != tuple(expected):
        raise UserError(f"{name} is {width}x{height}, not {expected[0]}x{expected[1]}"
                        + (f"; {hint}." if hint else "."))


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
