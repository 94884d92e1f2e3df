"""MXNet RecordIO without MXNet: chunked records, the IRHeader, the .idx index, indexed readers and writers.

A record is stored as one or more chunks: uint32 magic, uint32 `lrec` (3-bit continuation flag << 29 |
29-bit length), the data, zero padding to 4 bytes. MXNet's writer splits a record at every 4-byte
aligned occurrence of the magic inside it (dropping those 4 bytes) and its reader joins the chunks back
with the magic between them; we do both exactly the same way, so files round-trip byte for byte with
MXNet 1.9 (`MXIndexedRecordIO`, `recordio.pack`/`unpack`).
"""

from __future__ import annotations

import math
import numbers
import os
import struct
from array import array
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np

from utils.errors import UserError
from utils.files import atomic_open
from utils.record_index import RecordIndex, open_index

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_BYTES = (1 << 29) - 1  # the length field has 29 bits

# Continuation flags of a chunk.
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3

_CHUNK_HEAD = struct.Struct("<II")  # magic, lrec
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: MXNet's 'IfQQ' on a little-endian machine
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(UserError):
    """A .rec/.idx pair that is truncated, inconsistent or holds a damaged record."""


class IRHeader(NamedTuple):
    """Header of an image record; `label` is a float when `flag == 0`, else a tuple of `flag` floats."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def _padded(length: int) -> int:
    return (length + 3) & ~3


# ---- IRHeader ----

def pack(header: IRHeader | Sequence, payload: bytes = b"") -> bytes:
    """Header plus payload as MXNet's `recordio.pack` builds it.

    A numeric label is stored in the header (flag 0); a sequence of labels is stored as `len(label)`
    float32 values after the header, with flag = their count and the header's label field 0.
    """
    _, label, key_id, key_id2 = header  # the flag follows from the label, as in MXNet
    if isinstance(label, numbers.Number):
        head = _IR_HEADER.pack(0, float(label), key_id, key_id2)
        return head + bytes(payload)
    values = [float(v) for v in np.asarray(label, dtype=np.float32).reshape(-1)]
    head = _IR_HEADER.pack(len(values), 0.0, key_id, key_id2)
    return head + struct.pack(f"<{len(values)}f", *values) + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """(header, payload) of a record, as MXNet's `recordio.unpack` splits it."""
    if len(record) < _IR_HEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {_IR_HEADER.size}-byte header")
    flag, label, key_id, key_id2 = _IR_HEADER.unpack_from(record)
    body = _IR_HEADER.size
    if flag > 0:
        if len(record) < body + 4 * flag:
            raise ValueError(f"record of {len(record)} bytes is too short for its {flag} labels")
        label = struct.unpack_from(f"<{flag}f", record, body)
        body += 4 * flag
    return IRHeader(flag, label, key_id, key_id2), record[body:]


def first_label(header: IRHeader) -> float:
    """The class of an image record: the scalar label, or the first value of a label vector."""
    return header.label[0] if header.flag > 0 else header.label


def class_label(header: IRHeader, name: str) -> int:
    """`first_label` as an int; RecordIOError naming the record `name` when it is NaN, infinite or fractional."""
    label = first_label(header)
    if not math.isfinite(label) or label != int(label):
        raise RecordIOError(f"{name} has label {label}, not a whole class number; the file is damaged: re-pack it.")
    return int(label)


# ---- insightface layout: header and identity records ----

FLOAT32_EXACT = 1 << 24  # float32 holds every whole number up to 2^24 exactly, not all above


def float32_preimage(value: float) -> range:
    """The whole numbers that float32 rounds to `value` (a label value read from a record).

    One number up to 2^24; above it float32 keeps 24 significant bits, so 2 to 5 neighbours share one
    float at 16.7-67 M (for example 42474557 and 42474558 both read back as 42474560.0). Empty when
    `value` is not a whole number >= 0.
    """
    if not math.isfinite(value) or value < 0 or value != int(value):
        return range(0)
    rounded = np.float32(value)
    step = max(1, int(np.spacing(rounded)))  # float32's gap above `value`: at most that far off
    whole = [n for n in range(max(0, int(value) - step), int(value) + step + 1) if np.float32(n) == rounded]
    return range(whole[0], whole[-1] + 1) if whole else range(0)


def is_identity_record(reader: IndexedRecordReader, key: int) -> bool:
    """Whether `key` holds an identity record of insightface's layout (a label vector, no payload); key 0
    (the header record) and keys missing from the index do not."""
    if key < 1 or key not in reader:
        return False
    try:
        header, payload = unpack(reader.read(key))
    except ValueError as exc:
        raise reader._damaged(key, reader.offset_of(key), str(exc)) from None
    return header.flag >= 2 and not payload


def exact_header_range(reader: IndexedRecordReader, label: Sequence[float]) -> tuple[int, int]:
    """[first identity key, end key) of the header record's float32 `label`, exact at any size.

    Up to 2^24 the label is exact. Above it, MXNet's and pack_rec's float32 header is rounded (42474558
    images + 1 is stored as 42474560), so the exact keys are the ones within float32 rounding of the
    label where the index's records change kind: the first identity record follows an image (or the
    header), the last identity record is followed by a key that is not one (or none). That reads at most
    a few records per value. RecordIOError when no key within rounding fits: the header disagrees with
    the records beyond rounding.
    """
    bounds = []
    for value, starts in zip(label[:2], (True, False)):
        window = float32_preimage(value)
        if len(window) == 1:
            bounds.append(window[0])
            continue
        kind = {key: is_identity_record(reader, key) for key in range(window.start - 1, window.stop)}
        found = [key for key in window if kind[key] == starts and kind[key - 1] != starts]
        if len(found) != 1:
            what = "start" if starts else "end"
            raise RecordIOError(f"'{reader.rec_path}': header record 0 has label {list(label)}, but the identity "
                                f"records do not {what} at any key within float32 rounding of {value:.0f} "
                                f"(keys {window.start}..{window.stop - 1}); the file is damaged: re-pack it.")
        bounds.append(found[0])
    return bounds[0], bounds[1]


# ---- chunks ----

def encode_record(record: bytes) -> bytes:
    """The bytes MXNet's RecordIOWriter writes for one record: its chunks and the final padding."""
    if len(record) > MAX_RECORD_BYTES:
        raise UserError(f"a record of {len(record)} bytes exceeds RecordIO's limit of {MAX_RECORD_BYTES} "
                        "bytes; store smaller images.")
    parts = []
    start = 0  # first byte of the chunk being built
    found = record.find(MAGIC_BYTES)
    while found != -1:
        if found % 4 == 0:
            parts.append(_CHUNK_HEAD.pack(MAGIC, (FIRST if start == 0 else MIDDLE) << 29 | (found - start)))
            parts.append(record[start:found])
            start = found + 4
            found = record.find(MAGIC_BYTES, start)
        else:
            found = record.find(MAGIC_BYTES, found + 1)
    parts.append(_CHUNK_HEAD.pack(MAGIC, (LAST if start else WHOLE) << 29 | (len(record) - start)))
    parts.append(record[start:])
    parts.append(b"\0" * (_padded(len(record)) - len(record)))
    return b"".join(parts)


def decode_record(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    """(record, offset just past it) for the record whose first chunk starts at `offset` of `data`."""
    parts = []
    position = offset
    while True:
        if position + _CHUNK_HEAD.size > len(data):
            raise ValueError(f"chunk header at byte {position} runs past the end ({len(data)} bytes)")
        magic, lrec = _CHUNK_HEAD.unpack_from(data, position)
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        _check_chunk(magic, cflag, first=not parts, position=position)
        start = position + _CHUNK_HEAD.size
        if start + length > len(data):
            raise ValueError(f"chunk at byte {position} of length {length} runs past the end "
                             f"({len(data)} bytes)")
        parts.append(data[start:start + length])
        position = start + _padded(length)
        if cflag in (WHOLE, LAST):
            return MAGIC_BYTES.join(parts), position


def _check_chunk(magic: int, cflag: int, first: bool, position: int) -> None:
    if magic != MAGIC:
        raise ValueError(f"no RecordIO magic at byte {position} (found {magic:#010x})")
    allowed = (WHOLE, FIRST) if first else (MIDDLE, LAST)
    if cflag not in allowed:
        raise ValueError(f"chunk at byte {position} has continuation flag {cflag}, expected one of {allowed}")


# ---- index ----

def write_index_line(key: int, offset: int) -> str:
    return f"{key}\t{offset}\n"


# ---- indexed reader and writer ----

class IndexedRecordReader:
    """Random access to the records of a .rec by key through its .idx (MXNet's MXIndexedRecordIO).

    The file is opened lazily and reopened in every new process, so DataLoader workers (fork or spawn)
    never share a file position; the reader pickles without its handle. One handle per process: do not
    read from several threads of one process at once. `index_cache` says where the binary form of the
    index is kept (`utils.record_index.open_index`: `""`, a folder, or `"off"` to parse the text).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, index_cache: str = "off"):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise UserError(f"record file '{self.rec_path}' does not exist; check config.rec or the path.")
        self.index: RecordIndex = open_index(self.idx_path, index_cache)
        self._file_size = self.rec_path.stat().st_size
        self._handle = None
        self._pid = None
        self._check_end()

    @property
    def keys(self) -> np.ndarray:
        """The keys [num_entries] in index order (int64; memory-mapped when the index is cached)."""
        return self.index.keys

    @property
    def offsets(self) -> np.ndarray:
        """The byte offsets [num_entries] of the records in index order (int64)."""
        return self.index.offsets

    def _check_end(self) -> None:
        """Cheap truncation check at open: the record furthest into the file must start and fit in it."""
        if len(self.offsets) == 0:
            return
        last = self.index.furthest
        key, offset = int(self.keys[last]), int(self.offsets[last])
        where = f"'{self.idx_path}' places key {key} at byte {offset}"
        if offset + _CHUNK_HEAD.size > self._file_size:
            raise RecordIOError(f"{where} but '{self.rec_path}' holds only {self._file_size} bytes; the "
                                ".rec is truncated or the .idx belongs to another file: copy it again or "
                                "re-pack it.")
        with open(self.rec_path, "rb") as file:
            file.seek(offset)
            magic, lrec = _CHUNK_HEAD.unpack(file.read(_CHUNK_HEAD.size))
        end = offset + _CHUNK_HEAD.size + _padded(lrec & _LENGTH_MASK)
        if magic != MAGIC:
            raise RecordIOError(f"{where} but there is no record there (magic {magic:#010x}); the .idx "
                                f"does not belong to '{self.rec_path}': re-create the pair.")
        if end > self._file_size:
            raise RecordIOError(f"{where} whose chunk ends at byte {end}, past the end of "
                                f"'{self.rec_path}' ({self._file_size} bytes); the .rec is truncated: copy "
                                "it again or re-pack it.")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        try:
            self.offsets_of(np.array([key]))
        except KeyError:
            return False
        return True

    def offset_of(self, key: int) -> int:
        return int(self.offsets_of(np.array([key]))[0])

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Offsets of many keys at once (int64 array); KeyError names the first key missing."""
        try:
            return self.offsets[self.index.positions_of(keys)]
        except KeyError as exc:
            raise KeyError(f"key {exc.args[0]} is not in '{self.idx_path}'") from None

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for the process's lifetime
            self._pid = os.getpid()
        return self._handle

    def read(self, key: int) -> bytes:
        """The record stored under `key` (header and payload)."""
        return self.read_at(self.offset_of(key), key)

    def read_at(self, offset: int, key: int) -> bytes:
        """The record whose first chunk starts at `offset`; `key` only names it in errors."""
        file = self._file()
        parts = []
        position = offset
        while True:
            file.seek(position)
            head = file.read(_CHUNK_HEAD.size)
            if len(head) < _CHUNK_HEAD.size:
                raise self._damaged(key, offset, f"the chunk header at byte {position} is cut off")
            magic, lrec = _CHUNK_HEAD.unpack(head)
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            try:
                _check_chunk(magic, cflag, first=not parts, position=position)
            except ValueError as exc:
                raise self._damaged(key, offset, str(exc)) from None
            data = file.read(length)
            if len(data) < length:
                raise self._damaged(key, offset, f"its chunk at byte {position} of length {length} runs "
                                                 f"past the end of the file ({self._file_size} bytes)")
            parts.append(data)
            if cflag in (WHOLE, LAST):
                return MAGIC_BYTES.join(parts)
            position += _CHUNK_HEAD.size + _padded(length)

    def read_header_at(self, offset: int, key: int) -> IRHeader:
        """The IRHeader of the record at `offset`, reading only its first bytes when they hold it."""
        file = self._file()
        file.seek(offset)
        head = file.read(_CHUNK_HEAD.size + _IR_HEADER.size)
        if len(head) == _CHUNK_HEAD.size + _IR_HEADER.size:
            magic, lrec = _CHUNK_HEAD.unpack_from(head)
            flag = _IR_HEADER.unpack_from(head, _CHUNK_HEAD.size)[0]
            header_bytes = _IR_HEADER.size + 4 * flag
            if magic == MAGIC and lrec >> 29 in (WHOLE, FIRST) and lrec & _LENGTH_MASK >= header_bytes:
                prefix = head[_CHUNK_HEAD.size:] + file.read(4 * flag)
                if len(prefix) == header_bytes:
                    return unpack(prefix)[0]
        try:  # a split or damaged start: read (and check) the whole record
            return unpack(self.read_at(offset, key))[0]
        except ValueError as exc:
            raise self._damaged(key, offset, str(exc)) from None

    def _damaged(self, key: int, offset: int, why: str) -> RecordIOError:
        return RecordIOError(f"'{self.rec_path}': record key {key} at byte {offset} is damaged: {why}.")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None


class IndexedRecordWriter:
    """Writes records and their `key<TAB>offset` index exactly as MXNet's MXIndexedRecordIO('w') does.

    Both files are written through `utils.files.atomic_open`: they appear when the writer closes without
    an exception; on an exception (or a kill) the destinations keep what they held and no partial file stays.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._files = ExitStack()
        with self._files:  # on a failure opening the second file the first is discarded
            self._rec = self._files.enter_context(atomic_open(self.rec_path))
            self._idx = self._files.enter_context(atomic_open(self.idx_path))
            self._files = self._files.pop_all()
        self._keys = array("q")  # every key, checked for repeats at close: 8 B per record (a set held ~60)
        self._offset = 0

    def write(self, key: int, record: bytes) -> int:
        """Append `record` under `key`; returns its offset."""
        self._keys.append(key)
        offset = self._offset
        chunk = encode_record(record)
        self._rec.write(chunk)
        self._idx.write(write_index_line(key, offset).encode("ascii"))
        self._offset += len(chunk)
        return offset

    def close(self) -> None:
        """Put both files in place; ValueError (and neither file written) when a key was written twice."""
        self.__exit__(None, None, None)

    def _repeated_key(self) -> int | None:
        keys = np.sort(np.frombuffer(self._keys, dtype=np.int64))
        repeated = keys[1:][keys[1:] == keys[:-1]]
        return int(repeated[0]) if len(repeated) else None

    def __enter__(self) -> IndexedRecordWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is None and (key := self._repeated_key()) is not None:
            error = ValueError(f"key {key} was written twice to '{self.idx_path}'")
            self._files.__exit__(ValueError, error, None)  # discards both files
            raise error
        self._files.__exit__(*exc_info)
