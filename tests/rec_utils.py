"""Reading a .rec front to back, chunk by chunk or record by record: test helpers for checking how
records were split and written (training reads through utils.recordio.IndexedRecordReader)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from utils.recordio import MAGIC, RecordIOError, decode_record

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
