"""Reading a .rec front to back, chunk by chunk or record by record: test helpers for checking how
records were split and written (training reads through utils.recordio.IndexedRecordReader); sparse sets
of any size (`write_sparse_rec`) for the counts of WebFace42M."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from utils.recordio import MAGIC, IndexedRecordReader, IRHeader, RecordIOError, decode_record, encode_record, pack

_CHUNK_HEAD_SIZE = 8  # magic, lrec: two little-endian uint32
_LENGTH_MASK = (1 << 29) - 1


class Chunk(NamedTuple):
    offset: int  # byte offset of the chunk's magic in the .rec
    cflag: int  # continuation flag: WHOLE, FIRST, MIDDLE or LAST
    length: int  # data bytes (padding excluded)


def iter_chunks(rec_path: str | Path) -> Iterator[Chunk]:
    """Every chunk of a .rec in file order."""
    data = Path(rec_path).read_bytes()
    position = 0
    while position < len(data):
        if position + _CHUNK_HEAD_SIZE > len(data):
            raise RecordIOError(f"'{rec_path}' ends inside a chunk header at byte {position}; it is truncated.")
        magic = int.from_bytes(data[position:position + 4], "little")
        lrec = int.from_bytes(data[position + 4:position + 8], "little")
        if magic != MAGIC:
            raise RecordIOError(f"'{rec_path}': no RecordIO magic at byte {position}; the file is damaged.")
        length = lrec & _LENGTH_MASK
        yield Chunk(position, lrec >> 29, length)
        position += _CHUNK_HEAD_SIZE + (length + 3) // 4 * 4


def iter_records(rec_path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(offset, record) for every record of a .rec read front to back, without an index."""
    data = Path(rec_path).read_bytes()
    position = 0
    while position < len(data):
        record, end = decode_record(data, position)
        yield position, record
        position = end


class SparseReader(IndexedRecordReader):
    """The index of an insightface-layout set of any size over a tiny .rec, without a 44-million-line .idx.

    `write_sparse_rec` stores the header record, one real image record per identity (each image key of an
    identity points at its identity's record) and every identity record; offsets are computed, so keys
    0 .. N + C cost no memory until a caller asks for their offsets.
    """

    def __init__(self, rec_path: Path, block_sizes: np.ndarray, image_offsets: np.ndarray,
                 identity_base: int, identity_bytes: int):
        self.rec_path = self.idx_path = Path(rec_path)
        self._file_size = self.rec_path.stat().st_size
        self._handle = self._pid = None
        self.first_image_key = np.r_[1, 1 + np.cumsum(block_sizes)]  # [C + 1]: block starts, then N + 1
        self.first_identity = int(self.first_image_key[-1])
        self.end = self.first_identity + len(block_sizes)
        self._image_offsets, self._identity_base, self._identity_bytes = image_offsets, identity_base, identity_bytes

    def __len__(self) -> int:
        return self.end

    @property
    def index(self) -> SimpleNamespace:
        """What RecordDataset asks of a reader's RecordIndex: no key range is a view (every image key's
        offset comes from offsets_of) and the fingerprint names the sparse set."""
        return SimpleNamespace(key_range=lambda first, end: None, fingerprint=f"sparse {self.rec_path}")

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64)
        outside = (keys < 0) | (keys >= self.end)
        if outside.any():
            raise KeyError(f"key {int(keys[np.argmax(outside)])} is not in '{self.idx_path}'")
        if len(self._image_offsets) == 1:
            offsets = np.full(len(keys), self._image_offsets[0], dtype=np.int64)
        else:
            block = np.searchsorted(self.first_image_key, keys, side="right") - 1  # identity of image keys
            offsets = self._image_offsets[block.clip(0, len(self._image_offsets) - 1)]
        identity = keys >= self.first_identity
        offsets[identity] = self._identity_base + self._identity_bytes * (keys[identity] - self.first_identity)
        offsets[keys == 0] = 0
        return offsets


def write_sparse_rec(folder: Path, block_sizes, payload: bytes, header: bytes | None = None) -> SparseReader:
    """train.rec of a sparse insightface-layout set whose identity `c` has `block_sizes[c]` images.

    Record 0 is `header` (default: pack_rec's header record of these counts), then one image record per
    identity (label c, `payload`; above 16 identities one record of label 0 that all image keys share),
    then every identity record as pack_rec writes it (all 40 bytes long: built at once with NumPy, checked
    against pack_rec's bytes), so millions of identities cost a second.
    """
    from tools.pack_rec import header_record, identity_record

    block_sizes = np.asarray(block_sizes, dtype=np.int64)
    num_images, num_classes = int(block_sizes.sum()), len(block_sizes)
    parts = [encode_record(header if header is not None else header_record(num_images, num_classes))]
    image_offsets = []
    position = len(parts[0])
    for label in range(num_classes if num_classes <= 16 else 1):  # many identities share one image
        image_offsets.append(position)
        parts.append(encode_record(pack(IRHeader(0, float(label), 0, 0), payload)))
        position += len(parts[-1])
    starts = np.r_[1, 1 + np.cumsum(block_sizes)[:-1]]
    fields = [("magic", "<u4"), ("lrec", "<u4"), ("flag", "<u4"), ("label", "<f4"), ("id", "<u8"), ("id2", "<u8"),
              ("start", "<f4"), ("end", "<f4")]  # chunk head, IRHeader, the two label values
    table = np.zeros(num_classes, dtype=fields)
    table["magic"], table["lrec"], table["flag"] = MAGIC, 32, 2
    table["id"] = num_images + 1 + np.arange(num_classes)
    table["start"], table["end"] = starts, starts + block_sizes
    first = encode_record(identity_record(num_images + 1, int(starts[0]), int(starts[0] + block_sizes[0])))
    assert table[:1].tobytes() == first, "identity records built here differ from pack_rec's"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.rec", "wb") as file:
        file.write(b"".join(parts))
        file.write(table.tobytes())
    return SparseReader(folder / "train.rec", block_sizes, np.array(image_offsets, dtype=np.int64), position,
                        table.itemsize)
