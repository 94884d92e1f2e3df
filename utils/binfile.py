"""insightface `.bin` verification sets: a safe reader, a writer, and decoding of their images.

A `.bin` is a pickle of `(images, issame)`: a list of encoded images (two per pair, in pair order) and
one boolean per pair. The released files were pickled by Python 2, so images arrive as `str` objects
that must be read with `encoding="bytes"`. Pickles can run code, so `load_bin` uses an unpickler that
builds only lists, tuples, bytes, str, bool and int, and refuses every global except a few stand-ins:

- `_codecs.encode`: Python 3 pickles bytes with protocol <= 2 as `_codecs.encode(text, "latin1")`;
  our stand-in only performs that latin-1 encoding.
- NumPy's array and scalar reconstructors (`_reconstruct`, `_frombuffer`, `ndarray`, `dtype`, `scalar`,
  under both `numpy.core` and NumPy 2's `numpy._core`): some community-made `.bin` files store `issame` as a NumPy
  bool array or a list of `numpy.bool_`. Our stand-ins accept only one-dimensional bool data and turn it
  into Python bools; no NumPy code runs on the file's contents.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.decode import check_image_size, decode_chw
from utils.errors import UserError
from utils.files import atomic_write_bytes, read_bytes
from utils.images import IMAGE_SIZE


class _BoolDtype:
    """Stand-in for `numpy.dtype("b1")`, the only dtype a .bin may reconstruct."""

    def __init__(self, name, align=False, copy=False):
        if name not in ("b1", b"b1", "?", b"?"):
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not allowed (only bool)")

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple):
            raise pickle.UnpicklingError("malformed numpy dtype state")


class _NdarrayType:
    """Stand-in for the class `numpy.ndarray`, only accepted as the first argument of `_reconstruct`."""


_NDARRAY = _NdarrayType()


def _bool_values(shape, dtype, data) -> list[bool]:
    """Python bools of one-dimensional numpy bool data; anything else is refused."""
    if not isinstance(dtype, _BoolDtype) or not isinstance(data, (bytes, bytearray, str)):
        raise pickle.UnpicklingError("only numpy bool arrays are allowed")
    data = data.encode("latin1") if isinstance(data, str) else bytes(data)
    if not (isinstance(shape, tuple) and len(shape) == 1 and shape[0] == len(data)):
        raise pickle.UnpicklingError("only one-dimensional numpy bool arrays are allowed")
    return [byte != 0 for byte in data]


class _BoolArray:
    """Stand-in for a one-dimensional numpy bool array; `values` holds Python bools once built."""

    def __init__(self, values: list[bool] | None = None):
        self.values = values

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        _, shape, dtype, _, data = state
        self.values = _bool_values(shape, dtype, data)


def _reconstruct(cls, shape, typecode) -> _BoolArray:
    """Protocols 2-4 pickle an array as `_reconstruct(ndarray, ...)` followed by its state."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct is only allowed for ndarray")
    return _BoolArray()


def _frombuffer(buffer, dtype, shape, order) -> _BoolArray:
    """Protocol 5 pickles a contiguous array as `_frombuffer(data, dtype, shape, order)`."""
    return _BoolArray(_bool_values(shape, dtype, buffer))


def _bool_scalar(dtype, data) -> bool:
    if not isinstance(dtype, _BoolDtype) or not isinstance(data, (bytes, str)) or len(data) != 1:
        raise pickle.UnpicklingError("only numpy bool scalars are allowed")
    data = data.encode("latin1") if isinstance(data, str) else data
    return data != b"\0"


def _latin1_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as Python 3's latin-1 bytes pickling")
    return text.encode("latin1")


_STAND_INS = {
    ("_codecs", "encode"): _latin1_encode,
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _bool_scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _BoolDtype,
}


class _BinUnpickler(pickle.Unpickler):
    """Builds only containers, bytes, str, numbers and bools, plus the stand-ins above."""

    def find_class(self, module: str, name: str):
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a .bin file")


def _as_bools(issame, path: Path) -> list[bool]:
    if isinstance(issame, _BoolArray):
        issame = issame.values
    if not isinstance(issame, (list, tuple)) or not all(
            isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1)) for flag in issame):
        raise UserError(f"'{path}': the pair labels are not a list of booleans; this is not an insightface "
                        ".bin verification set.")
    return [bool(flag) for flag in issame]


def load_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """(encoded images, issame) of a .bin verification set, read without running any code from it."""
    path = Path(path)
    data = read_bytes(path, "verification set", "put it beside train.rec or remove its name from "
                      "config.val_targets")
    try:
        content = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a damaged or hostile pickle can fail in many ways; all mean "not a .bin"
        raise UserError(f"'{path}' is not a readable insightface .bin verification set "
                        f"({type(exc).__name__}: {exc}).") from None
    if not (isinstance(content, tuple) and len(content) == 2):
        raise UserError(f"'{path}' holds {type(content).__name__}, not the pair (images, issame) of an "
                        "insightface .bin verification set.")
    images, issame = content
    if not isinstance(images, (list, tuple)) or not all(isinstance(image, bytes) for image in images):
        raise UserError(f"'{path}': the images are not a list of encoded image bytes; this is not an "
                        "insightface .bin verification set.")
    issame = _as_bools(issame, path)
    if not issame:
        raise UserError(f"'{path}' holds no pairs; a verification set needs pairs of images.")
    if len(images) != 2 * len(issame):
        raise UserError(f"'{path}' holds {len(images)} images for {len(issame)} pairs; a .bin needs two "
                        "images per pair.")
    # Every image's bytes are in the file once; more means the pickle repeats references to one object,
    # which would make a tiny file decode into gigabytes.
    if sum(len(image) for image in images) > len(data):
        raise UserError(f"'{path}' refers to the same image data many times ({len(images)} images in "
                        f"{len(data)} bytes); it is not an insightface .bin verification set.")
    return list(images), issame


# ---- writer ----

# Pickle opcodes of protocol 2 (the ones Python 2's cPickle used for these files).
_PROTO2, _MARK, _EMPTY_LIST, _APPENDS, _TUPLE, _STOP = b"\x80\x02", b"(", b"]", b"e", b"t", b"."
_BINSTRING, _SHORT_BINSTRING, _TRUE, _FALSE = b"T", b"U", b"\x88", b"\x89"
_BATCH = 1000  # items per APPENDS, as the standard picklers batch lists


def _pickled_list(items: Sequence, encode) -> bytes:
    parts = [_EMPTY_LIST]
    for start in range(0, len(items), _BATCH):
        parts += [_MARK, *map(encode, items[start:start + _BATCH]), _APPENDS]
    return b"".join(parts)


def _binstring(data: bytes) -> bytes:
    if len(data) < 256:
        return _SHORT_BINSTRING + bytes([len(data)]) + data
    return _BINSTRING + struct.pack("<i", len(data)) + data


def save_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a .bin exactly as Python 2 pickled them (protocol 2, images as byte strings).

    Python 3's own protocol-2 pickler would store bytes through `_codecs.encode`, which Python 2 and
    strict readers cannot load; the layout here is what insightface's released files contain.
    """
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; a .bin needs two images per pair")
    content = (_PROTO2 + _MARK + _pickled_list([bytes(image) for image in images], _binstring)
               + _pickled_list([bool(flag) for flag in issame], lambda flag: _TRUE if flag else _FALSE)
               + _TUPLE + _STOP)
    atomic_write_bytes(path, content)


# ---- decoding ----

def check_bin_headers(images: Sequence[bytes], source: str = ".bin") -> None:
    """UserError naming the first image whose header does not say 112x112 (microseconds per image)."""
    for index, data in enumerate(images):
        check_image_size(data, f"image {index} of '{source}'", (IMAGE_SIZE, IMAGE_SIZE),
                         "verification sets must hold aligned 112x112 faces")


def decode_bin_images(images: Sequence[bytes], flip: bool = False, source: str = ".bin") -> torch.Tensor:
    """Encoded images of a .bin -> uint8 tensor [N, 3, 112, 112] RGB; `flip` mirrors them left-right.

    Every header is checked before the batch is allocated, so a wrong size costs no decoding.
    """
    check_bin_headers(images, source)
    batch = torch.empty((len(images), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    for index, data in enumerate(images):
        try:
            image = decode_chw(data)  # [3, H, W]
        except ValueError:
            raise UserError(f"image {index} of '{source}' is not a decodable JPEG or PNG; the file is "
                            "damaged.") from None
        if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise UserError(f"image {index} of '{source}' is {image.shape[2]}x{image.shape[1]}, not "
                            f"{IMAGE_SIZE}x{IMAGE_SIZE}; verification sets must hold aligned 112x112 faces.")
        batch[index] = image
    return batch.flip(-1) if flip else batch
