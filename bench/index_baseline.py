"""RecordDataset's index start-up as it was before the index cache (commit 68a2279): every process parses
train.idx into memory, holds five int64 arrays [num_entries] (keys, offsets, their argsort, the image keys
and the image offsets) and reads train.idx a second time to fingerprint it; kept as bench_scale's baseline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from utils.record_index import _parse_index_fast, _parse_index_lines
from utils.recordio import decode_record, unpack


class IndexAsBefore:
    """The index arrays and fingerprint the earlier RecordDataset built at open (insightface's layout)."""

    def __init__(self, root: str | Path):
        idx_path, rec_path = Path(root) / "train.idx", Path(root) / "train.rec"
        text = idx_path.read_bytes()
        table = _parse_index_fast(text)
        if table is None:
            table = _parse_index_lines(text, idx_path)
        del text
        self.keys, self.offsets = table[:, 0].copy(), table[:, 1].copy()  # [num_entries] each
        del table
        ordered = np.sort(self.keys)
        assert not (ordered[1:] == ordered[:-1]).any() and self.offsets.min() >= 0
        del ordered
        self.sorted = np.argsort(self.keys, kind="stable")  # [num_entries]
        with open(rec_path, "rb") as rec:
            rec.seek(int(self.offsets[np.argmax(self.offsets)]))  # the truncation check at open
            rec.read(8)
            rec.seek(int(self.offsets_of(np.array([0]))[0]))
            header = unpack(decode_record(rec.read(1 << 16))[0])[0]
        first_identity, end = int(header.label[0]), int(header.label[1])
        self.offsets_of(np.arange(first_identity, end))  # every identity record must be there
        self.image_keys = np.arange(1, first_identity, dtype=np.int64)  # [num_images]
        self.image_offsets = self.offsets_of(self.image_keys)  # [num_images]
        with open(idx_path, "rb") as stream:  # data_identity: the second read
            self.fingerprint = (f"idx {idx_path.stat().st_size} bytes sha256 "
                                f"{hashlib.file_digest(stream, 'sha256').hexdigest()}")

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.keys, keys, sorter=self.sorted).clip(max=len(self.keys) - 1)
        found = self.sorted[positions]
        assert (self.keys[found] == keys).all()
        return self.offsets[found]
