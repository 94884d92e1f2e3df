"""The `.idx` index of a RecordIO file: MXNet's text parsed, and the binary cache every process maps.

`train.idx` (text, one `key<TAB>offset` line per record, written by MXNet or tools/pack_rec) stays the
source of truth. Parsing it costs every process seconds and gigabytes at tens of millions of records (23 s
and 1.7 GB resident at WebFace42M's 44.5 M entries), so an index of at least `MIN_CACHED_INDEX_BYTES` is
parsed once and written as a cache: `CACHE_HEADER_BYTES` of header (magic, then JSON: the version, the
size and modification time of the `.idx` it was built from, the entry count, whether the keys are
consecutive, the position of the furthest record and the fingerprint that guards resume), then the int64
arrays `keys` and `offsets` [num_entries] in file order, and, when the keys are not consecutive, `order`
[num_entries] (positions in increasing key order). Every process maps the arrays read-only (`np.memmap`),
so the ranks of a node share one copy through the page cache, and opening costs one small read.

Where the cache lives (`open_index`'s `cache`, the config key `index_cache`):

- `""` (default): `<idx>.cache` beside the `.idx`; when that folder is not writable,
  `$XDG_CACHE_HOME/transface/index/` (else `~/.cache/transface/index/`), under a name made from the `.idx`'s
  absolute path;
- a folder path: caches go there (a node-local disk, or a writable place beside read-only data); a valid
  cache beside the `.idx` (one `pack_rec` wrote) is still used first;
- `"off"`: every process parses the text (the behaviour before the cache).

A cache is used only if its header matches the `.idx`'s current size and modification time (ns) and a
digest of its first and last `IDX_SAMPLE_BYTES` (so a `.idx` replaced by another of the same size within
one tick of a coarse clock, 1 s on some cluster file systems, or with its time copied, is still seen as
changed unless both ends are the same bytes); else it is rebuilt. Caches written before the digest was
kept are checked by size and time only. Builders take an exclusive `flock` on a lock file beside the
cache, so of several processes opening at once one parses and writes while the others wait and then map
its file; the file is written under a temporary name and renamed (`utils.files.atomic_open`), so where
locks do not work (some NFS) the first complete writer wins and no process ever maps a partial file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.files import atomic_open, cache_folder, make_folder, remove_stale_temporaries

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".cache"
CACHE_MAGIC = b"TFIDXC\0\0"
CACHE_VERSION = 1
CACHE_HEADER_BYTES = 4096  # the arrays start page-aligned
MIN_CACHED_INDEX_BYTES = 4 << 20  # about 200 k entries; smaller indexes parse in a few milliseconds
INDEX_CACHE_OFF = "off"
IDX_SAMPLE_BYTES = 1 << 16  # of each end of the .idx: a 128 KiB read per open
_BLOCK = 1 << 20  # entries compared per step when checking that keys are consecutive
_PARSE_BLOCK_BYTES = 1 << 26  # text parsed per step: 64 MiB, about 3 M lines


class RecordIndex:
    """The (key, offset) table of a `.idx` in file order, and lookups by key.

    `keys`, `offsets`: int64 [num_entries], memory-mapped from the cache (`cache_path` set) or parsed into
    memory. `fingerprint` is the `.idx`'s size and SHA-256 (what a checkpoint records of its data),
    `furthest` the position of the record furthest into the `.rec`. When the keys are consecutive
    (`keys[i] == keys[0] + i`, what insightface, im2rec and pack_rec write) a key's position is
    `key - keys[0]` and ranges of keys are views; otherwise lookups search `order`, the positions in
    increasing key order. Pickles without its arrays when mapped: an unpickled copy maps the same file.
    """

    def __init__(self, keys: np.ndarray, offsets: np.ndarray, order: np.ndarray | None, fingerprint: str,
                 furthest: int, cache_path: Path | None = None, header: dict | None = None):
        self.keys, self.offsets = keys, offsets
        self.order = order  # None when the keys are consecutive
        self.first_key = int(keys[0]) if len(keys) else 0
        self.fingerprint = fingerprint
        self.furthest = furthest
        self.cache_path = cache_path
        self.header = header  # of the cache file; None when parsed into memory

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def consecutive(self) -> bool:
        return self.order is None

    def positions_of(self, keys: np.ndarray) -> np.ndarray:
        """Positions [len(keys)] in the table of `keys`; KeyError(the first key missing, an int)."""
        keys = np.asarray(keys, dtype=np.int64)
        if self.consecutive:
            positions = keys - self.first_key
            missing = (positions < 0) | (positions >= len(self))
        elif len(self) == 0:
            positions, missing = np.zeros(len(keys), dtype=np.int64), np.ones(len(keys), dtype=bool)
        else:
            found = np.searchsorted(self.keys, keys, sorter=self.order).clip(max=len(self) - 1)
            positions = self.order[found]
            missing = self.keys[positions] != keys
        if missing.any():
            raise KeyError(int(keys[np.argmax(missing)]))
        return positions

    def key_range(self, first: int, end: int) -> slice | None:
        """The positions of keys `first .. end - 1` as a slice when they are consecutive in the table (then
        `keys[slice]`, `offsets[slice]` are views, not copies), else None."""
        start = first - self.first_key
        if self.consecutive and 0 <= start <= end - self.first_key <= len(self):
            return slice(start, end - self.first_key)
        return None

    def __getstate__(self):
        if self.cache_path is None:
            return self.__dict__
        return {"cache_path": self.cache_path, "header": self.header}

    def __setstate__(self, state):
        if "keys" in state:
            self.__dict__.update(state)
            return
        mapped = _map_cache(state["cache_path"])
        if mapped is None or mapped.header != state["header"]:
            raise UserError(f"the index cache '{state['cache_path']}' changed while it was in use; the .idx "
                            "was re-written during the run: restart it.")
        self.__dict__.update(mapped.__dict__)


# ---- parsing the text ----

def parse_index(idx_path: str | Path) -> RecordIndex:
    """The index of a `key<TAB>offset` text file, parsed into memory (UserError when missing or damaged).

    MXNet's exact layout is parsed in blocks of `_PARSE_BLOCK_BYTES` into arrays sized by a first pass that
    counts the lines, so the text never sits in memory whole; anything else is parsed line by line.
    """
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise UserError(f"index file '{idx_path}' does not exist; every train.rec needs its train.idx "
                        "beside it (tools/pack_rec.py writes both).")
    table = _parse_index_blocks(idx_path)
    if table is None:
        text = idx_path.read_bytes()
        lines = _parse_index_lines(text, idx_path)
        table = lines[:, 0].copy(), lines[:, 1].copy(), _fingerprint(len(text), hashlib.sha256(text))
    return _index_of_table(*table, idx_path)


def read_index(idx_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of a `key<TAB>offset` index, int64 arrays in file order."""
    index = parse_index(idx_path)
    return index.keys, index.offsets


def _fingerprint(size: int, digest) -> str:
    """What a checkpoint records of a `.idx`: its size and SHA-256 (the same string since before the cache)."""
    return f"idx {size} bytes sha256 {digest.hexdigest()}"


def _parse_index_blocks(idx_path: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(keys, offsets [num_lines], fingerprint) when every block of the file is MXNet's exact layout, else
    None; also None when the file changed between the counting pass and the parsing pass."""
    with open(idx_path, "rb") as stream:
        num_lines = sum(block.count(b"\n") for block in iter(lambda: stream.read(_PARSE_BLOCK_BYTES), b""))
        stream.seek(0)
        keys, offsets = np.empty(num_lines, dtype=np.int64), np.empty(num_lines, dtype=np.int64)
        digest, size, filled, carry = hashlib.sha256(), 0, 0, b""
        while block := stream.read(_PARSE_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1  # whole lines only; the rest waits for the next block
            data, carry = data[:cut], data[cut:]
            if not data:
                continue
            table = _parse_index_fast(data)  # [lines in the block, 2]
            if table is None or filled + len(table) > num_lines:
                return None
            keys[filled:filled + len(table)], offsets[filled:filled + len(table)] = table[:, 0], table[:, 1]
            filled += len(table)
    if carry or filled != num_lines:
        return None
    return keys, offsets, _fingerprint(size, digest)


def _index_of_table(keys: np.ndarray, offsets: np.ndarray, fingerprint: str, idx_path: Path) -> RecordIndex:
    """The index of parsed arrays, checked: no key twice, no negative offset."""
    order = None if _consecutive(keys) else np.argsort(keys, kind="stable")
    if order is not None:
        ordered = keys[order]
        duplicates = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(duplicates):
            raise UserError(f"'{idx_path}' lists key {duplicates[0]} more than once; the index is damaged.")
    if len(offsets) and offsets.min() < 0:
        raise UserError(f"'{idx_path}' holds a negative offset; the index is damaged.")
    furthest = int(np.argmax(offsets)) if len(offsets) else 0
    return RecordIndex(keys, offsets, order, fingerprint, furthest)


def _consecutive(keys: np.ndarray) -> bool:
    """Whether keys[i] == keys[0] + i for every i (checked block by block: no array of the full size)."""
    if len(keys) == 0:
        return True
    first = int(keys[0])
    if int(keys[-1]) != first + len(keys) - 1:
        return False
    return all(np.array_equal(keys[start:start + _BLOCK], np.arange(first + start, first + min(start + _BLOCK,
                                                                                               len(keys))))
               for start in range(0, len(keys), _BLOCK))


def _parse_index_fast(text: bytes) -> np.ndarray | None:
    """[num_keys, 2] table when the text is exactly MXNet's `key<TAB>offset<NEWLINE>` lines of integers
    (parsed in C: millions of lines in a fraction of a second), else None."""
    if not text.endswith(b"\n") or b" " in text or b"\r" in text:
        return None
    raw = np.frombuffer(text, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    tab_lines = np.searchsorted(line_ends, np.flatnonzero(raw == ord("\t")))  # line of every tab
    if not np.array_equal(np.bincount(tab_lines, minlength=len(line_ends)), np.ones(len(line_ends))):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy warns (here: raises) when text is left unparsed
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    # One tab and no other blank per line: a line holds at most two numbers, so the count proves it.
    if values.size != 2 * len(line_ends):
        return None
    return values.reshape(-1, 2)  # [num_keys, 2]


def _parse_index_lines(text: bytes, idx_path: Path) -> np.ndarray:
    """[num_keys, 2] table parsed line by line (blank lines allowed); bad lines raise UserError."""
    rows = []
    for number, line in enumerate(text.split(b"\n"), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(p.lstrip(b"-").isdigit() for p in parts):
            raise UserError(f"'{idx_path}' line {number} is {line[:60]!r}, not 'key<TAB>offset' with two "
                            "integers; the index is damaged: re-create it with tools/pack_rec.py.")
        rows.append((int(parts[0]), int(parts[1])))
    return np.array(rows, dtype=np.int64).reshape(-1, 2)  # [num_keys, 2]


# ---- the cache ----

def beside_cache_path(idx_path: Path) -> Path:
    """`<idx>.cache`, the cache beside the index (what pack_rec and the default write)."""
    return idx_path.with_name(idx_path.name + CACHE_SUFFIX)


def folder_cache_path(idx_path: Path, folder: Path) -> Path:
    """The cache of `idx_path` inside a cache folder, named after the `.idx`'s absolute path."""
    tag = hashlib.sha256(os.fsencode(idx_path.resolve())).hexdigest()[:16]
    return folder / f"{tag}-{idx_path.name}{CACHE_SUFFIX}"


def default_cache_folder() -> Path:
    """Where caches go when the data folder is read-only and no folder is configured."""
    return cache_folder() / "index"


def write_index_cache(idx_path: str | Path, cache_path: str | Path | None = None) -> Path:
    """Parse `idx_path` and write its cache (default `<idx>.cache` beside it) atomically; returns its path.

    For writers of a fresh `.idx` (tools/pack_rec) and for a data-preparation step; `open_index` builds
    one on first use otherwise. UserError when the index is damaged or the cache cannot be written.
    """
    idx_path = Path(idx_path)
    cache_path = Path(cache_path) if cache_path is not None else beside_cache_path(idx_path)
    before = idx_path.stat()
    _write_cache(cache_path, idx_path, before, parse_index(idx_path))
    return cache_path


def refresh_index_cache(idx_path: str | Path) -> Path | None:
    """For writers of a fresh `.idx` (tools/pack_rec, tools/shuffle_rec): write its cache beside it now when
    the index is large enough to be cached (MIN_CACHED_INDEX_BYTES), so no training rank waits for the
    parse, and otherwise remove a cache an earlier index left there. Returns the cache path, or None for a
    small index. UserError as write_index_cache."""
    idx_path = Path(idx_path)
    cache_path = beside_cache_path(idx_path)
    if idx_path.stat().st_size < MIN_CACHED_INDEX_BYTES:
        cache_path.unlink(missing_ok=True)
        return None
    return write_index_cache(idx_path, cache_path)


def _idx_sample(idx_path: Path, size: int) -> str | None:
    """SHA-256 of the first and last IDX_SAMPLE_BYTES of the `.idx` of `size` bytes (None when unreadable)."""
    try:
        with open(idx_path, "rb") as stream:
            head = stream.read(IDX_SAMPLE_BYTES)
            stream.seek(max(0, size - IDX_SAMPLE_BYTES))
            tail = stream.read(IDX_SAMPLE_BYTES)
    except OSError:
        return None
    return hashlib.sha256(head + b"\0" + tail).hexdigest()


def _write_cache(cache_path: Path, idx_path: Path, idx_stat: os.stat_result, index: RecordIndex) -> None:
    """The cache file of `index`, parsed from `idx_path` when it had `idx_stat` (taken before reading it, so
    a `.idx` changed meanwhile leaves the cache stale), written atomically."""
    header = {"version": CACHE_VERSION, "idx_path": os.fsdecode(idx_path.resolve()), "idx_size": idx_stat.st_size,
              "idx_mtime_ns": idx_stat.st_mtime_ns, "num_entries": len(index), "consecutive": index.consecutive,
              "furthest": index.furthest, "fingerprint": index.fingerprint,
              "idx_sample": _idx_sample(idx_path, idx_stat.st_size)}
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    head = CACHE_MAGIC + len(encoded).to_bytes(4, "little") + encoded
    if len(head) > CACHE_HEADER_BYTES:
        raise UserError(f"the path of '{idx_path}' is too long for its index cache header; move the data "
                        "to a shorter path or set index_cache='off'.")
    arrays = [index.keys, index.offsets] + ([] if index.consecutive else [index.order.astype(np.int64)])
    with atomic_open(cache_path) as stream:
        stream.write(head.ljust(CACHE_HEADER_BYTES, b"\0"))
        for array in arrays:
            stream.write(memoryview(np.ascontiguousarray(array, dtype="<i8")))


def _read_cache_header(cache_path: Path) -> dict | None:
    try:
        with open(cache_path, "rb") as stream:
            head = stream.read(CACHE_HEADER_BYTES)
            size = os.fstat(stream.fileno()).st_size
    except OSError:
        return None
    if len(head) < CACHE_HEADER_BYTES or not head.startswith(CACHE_MAGIC):
        return None
    length = int.from_bytes(head[len(CACHE_MAGIC):len(CACHE_MAGIC) + 4], "little")
    try:
        header = json.loads(head[len(CACHE_MAGIC) + 4:len(CACHE_MAGIC) + 4 + length])
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("version") != CACHE_VERSION:
        return None
    num_arrays = 2 if header["consecutive"] else 3
    if size != CACHE_HEADER_BYTES + 8 * num_arrays * header["num_entries"]:
        return None
    return header


def _map_cache(cache_path: Path) -> RecordIndex | None:
    """The index mapped from `cache_path`, None when it is missing or not a whole cache of this version."""
    header = _read_cache_header(cache_path)
    if header is None:
        return None
    num_entries = header["num_entries"]

    def mapped(slot: int) -> np.ndarray:
        if num_entries == 0:
            return np.zeros(0, dtype=np.int64)
        return np.memmap(cache_path, dtype="<i8", mode="r", offset=CACHE_HEADER_BYTES + 8 * slot * num_entries,
                         shape=(num_entries,))

    order = None if header["consecutive"] else mapped(2)
    return RecordIndex(mapped(0), mapped(1), order, header["fingerprint"], header["furthest"], cache_path,
                       header)


def _load_cache(cache_path: Path, idx_path: Path, idx_stat: os.stat_result) -> RecordIndex | None:
    """The cache at `cache_path` if it was built from `idx_path` as it is now (size, mtime, the digest of
    its ends when the cache holds one), else None."""
    header = _read_cache_header(cache_path)
    if header is None or (header["idx_size"], header["idx_mtime_ns"]) != (idx_stat.st_size,
                                                                            idx_stat.st_mtime_ns):
        return None
    if header.get("idx_sample") is not None and header["idx_sample"] != _idx_sample(idx_path, idx_stat.st_size):
        return None
    if header["idx_path"] != os.fsdecode(idx_path.resolve()) and cache_path != beside_cache_path(idx_path):
        return None  # a cache folder's file of another index (the names collide only by a hash collision)
    return _map_cache(cache_path)


def _open_lock(cache_path: Path) -> int:
    """A descriptor of `.<cache name>.lock` beside `cache_path`, created if missing (OSError when the folder
    cannot be written)."""
    return os.open(cache_path.with_name(f".{cache_path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)


_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _build_at(cache_path: Path, idx_path: Path, idx_stat: os.stat_result) -> RecordIndex | None:
    """The index from the cache at `cache_path`, built under an exclusive flock on its lock file unless
    another process built it meanwhile; None when the folder cannot be written. Where the file system has
    no locks, builders race and the first complete rename wins. A damaged `.idx` raises its UserError."""
    try:
        make_folder(cache_path.parent)
        lock = _open_lock(cache_path)
    except UserError:  # make_folder's: the folder cannot be created
        return None
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        return None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            logger.warning("cannot lock '%s'; processes opening it at once may each build it", cache_path)
        index = _load_cache(cache_path, idx_path, idx_stat)
        if index is not None:
            return index
        remove_stale_temporaries(cache_path.parent, of=cache_path)  # a killed builder's (a cache is large)
        logger.info("building the index cache '%s' of '%s' (once; later opens map it)", cache_path, idx_path)
        parsed = parse_index(idx_path)
        try:
            _write_cache(cache_path, idx_path, idx_stat, parsed)
        except UserError as exc:  # atomic_open's: a full disk, a quota
            logger.warning("%s; this process keeps the index in memory", exc)
            return parsed
        mapped = _load_cache(cache_path, idx_path, idx_stat)
        return mapped if mapped is not None else parsed
    finally:
        os.close(lock)  # drops the lock


def open_index(idx_path: str | Path, cache: str = "") -> RecordIndex:
    """The index of `idx_path`, from its cache when it has a valid one, built on first use (see the module
    docstring for `cache`: `""`, a folder, or `"off"`). An index smaller than MIN_CACHED_INDEX_BYTES, or one
    whose cache cannot be written anywhere (a warning says so), is parsed into memory."""
    idx_path = Path(idx_path)
    try:
        idx_stat = idx_path.stat()
    except OSError:
        return parse_index(idx_path)  # the missing file's UserError
    if cache == INDEX_CACHE_OFF or idx_stat.st_size < MIN_CACHED_INDEX_BYTES:
        return parse_index(idx_path)
    folder = Path(cache) if cache else default_cache_folder()
    beside, in_folder = beside_cache_path(idx_path), folder_cache_path(idx_path, folder)
    for candidate in (beside, in_folder):
        index = _load_cache(candidate, idx_path, idx_stat)
        if index is not None:
            return index
    destinations = (in_folder,) if cache else (beside, in_folder)
    for destination in destinations:
        index = _build_at(destination, idx_path, idx_stat)
        if index is not None:
            return index
    logger.warning("no writable place for the index cache of '%s' (tried %s); every process parses it and "
                   "holds its own copy: set config.index_cache to a writable folder", idx_path,
                   " and ".join(f"'{path.parent}'" for path in destinations))
    return parse_index(idx_path)
