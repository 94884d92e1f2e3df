"""The binary cache of train.idx: same table as the text, rebuilt when the text changes, a cache folder for
read-only data, one builder among processes opening at once, the resume fingerprint kept in it."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train
import utils.record_index as record_index
from dataset import RecordDataset, data_identity
from tests.test_dataset import png_bytes, random_face, write_rec
from utils.errors import UserError
from utils.record_index import beside_cache_path, open_index, parse_index
from utils.recordio import IndexedRecordReader, IndexedRecordWriter, IRHeader, pack

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cached(monkeypatch, tmp_path):
    """Every index is cached (however small); the user cache folder is inside tmp_path."""
    monkeypatch.setattr(record_index, "MIN_CACHED_INDEX_BYTES", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def faces(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [png_bytes(random_face(rng)) for _ in range(count)]


def write_set(folder: Path, num_images: int = 6, seed: int = 0) -> None:
    """insightface's layout: header record, `num_images` images of 2 classes, identity records, property."""
    write_rec(folder, [(payload, index % 2) for index, payload in enumerate(faces(num_images, seed))],
              prop="2,112,112")


def write_shuffled_plain(folder: Path) -> None:
    """No header record and keys out of order: the cache needs its `order` array."""
    folder.mkdir(parents=True)
    with IndexedRecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        for key, payload in zip([7, 3, 12, 5], faces(4)):
            writer.write(key, pack(IRHeader(0, key % 2, key, 0), payload))
    (folder / "property").write_text("2,112,112")


def labels(dataset: RecordDataset) -> list[int]:
    return [dataset[index][1] for index in range(len(dataset))]


@pytest.mark.parametrize("layout", ["insightface", "plain_shuffled"])
def test_the_cache_gives_the_table_and_labels_of_the_parsed_text(cached, layout):
    root = cached / "data"
    write_set(root) if layout == "insightface" else write_shuffled_plain(root)
    parsed = RecordDataset(root, index_cache="off")
    built = RecordDataset(root)  # builds the cache
    assert beside_cache_path(root / "train.idx").is_file()
    mapped = RecordDataset(root)  # maps it
    assert isinstance(mapped.reader.offsets, np.memmap)
    assert mapped.reader.index.consecutive == (layout == "insightface")
    for dataset in (built, mapped):
        assert dataset.reader.keys.tolist() == parsed.reader.keys.tolist()
        assert dataset.reader.offsets.tolist() == parsed.reader.offsets.tolist()
        assert dataset.image_keys.tolist() == parsed.image_keys.tolist()
        assert dataset.image_offsets.tolist() == parsed.image_offsets.tolist()
        assert labels(dataset) == labels(parsed)
    some = parsed.reader.keys[[2, 0]]
    assert mapped.reader.offsets_of(some).tolist() == parsed.reader.offsets_of(some).tolist()
    assert mapped.num_classes == parsed.num_classes == 2
    with pytest.raises(KeyError, match="key 99 is not in"):
        mapped.reader.offsets_of(np.array([99]))


def test_image_arrays_are_views_of_the_mapped_index_and_pickle_without_a_copy(cached):
    import pickle

    write_set(cached / "data", num_images=12)
    RecordDataset(cached / "data")
    dataset = RecordDataset(cached / "data")
    assert np.shares_memory(dataset.image_offsets, dataset.reader.offsets)
    blob = pickle.dumps(dataset)
    assert dataset.image_offsets.tobytes() not in blob  # a spawned worker maps the file again
    copy = pickle.loads(blob)
    assert isinstance(copy.reader.offsets, np.memmap) and labels(copy) == labels(dataset)


def test_a_changed_idx_rebuilds_the_cache(cached):
    root, idx = cached / "data", cached / "data" / "train.idx"
    write_set(root, num_images=6)
    assert len(RecordDataset(root)) == 6
    write_set(root, num_images=8, seed=1)  # other records
    assert len(RecordDataset(root)) == 8
    text = idx.read_bytes()
    built = open_index(idx).fingerprint
    idx.write_bytes(text.replace(b"\t", b"\t0", 1))  # the same table, one byte longer, mtime set back
    os.utime(idx, ns=(idx.stat().st_atime_ns, beside_cache_path(idx).stat().st_mtime_ns - 10**9))
    assert open_index(idx).fingerprint == parse_index(idx).fingerprint != built
    idx.write_bytes(text)
    os.utime(idx, ns=(idx.stat().st_atime_ns, idx.stat().st_mtime_ns + 10**9))  # same size, another mtime
    index = open_index(idx)
    assert index.header["idx_mtime_ns"] == idx.stat().st_mtime_ns and index.fingerprint == built


def test_an_idx_replaced_within_one_tick_of_a_coarse_clock_rebuilds_the_cache(cached):
    """A re-shuffled copy moved over the set: same size (same keys, offsets of as many digits) and, on a file
    system with 1 s times or after a copy that keeps times, the same mtime. The stale cache's offsets and
    fingerprint (which guards resume) were used."""
    root, idx = cached / "data", cached / "data" / "train.idx"
    write_set(root, num_images=6)
    old = open_index(idx)
    old_offsets, old_stat = old.offsets.tolist(), idx.stat()
    lines = idx.read_bytes().splitlines(keepends=True)
    key, offset = lines[2].split(b"\t")
    shifted = b"%s\t%0*d\n" % (key, len(offset) - 1, int(offset) + 1)  # another offset, as many digits
    idx.write_bytes(b"".join([*lines[:2], shifted, *lines[3:]]))
    os.utime(idx, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
    assert idx.stat().st_size == old_stat.st_size
    index = open_index(idx)
    assert index.offsets.tolist() != old_offsets
    assert index.fingerprint == parse_index(idx).fingerprint != old.fingerprint


def test_a_cache_written_before_the_ends_digest_is_still_used(cached):
    """Caches pack_rec wrote before the digest (WebFace42M's: 680 MiB, 23 s to rebuild) keep working."""
    import json

    root, idx = cached / "data", cached / "data" / "train.idx"
    write_set(root)
    cache = open_index(idx).cache_path
    data = cache.read_bytes()
    magic = record_index.CACHE_MAGIC
    length = int.from_bytes(data[len(magic):len(magic) + 4], "little")
    header = json.loads(data[len(magic) + 4:len(magic) + 4 + length])
    del header["idx_sample"]
    encoded = json.dumps(header, sort_keys=True).encode()
    head = (magic + len(encoded).to_bytes(4, "little") + encoded).ljust(record_index.CACHE_HEADER_BYTES, b"\0")
    cache.write_bytes(head + data[record_index.CACHE_HEADER_BYTES:])
    index = open_index(idx)
    assert index.header == header and index.offsets.tolist() == parse_index(idx).offsets.tolist()


def test_a_cache_of_another_version_or_cut_short_is_rebuilt(cached):
    root = cached / "data"
    write_set(root)
    cache = open_index(root / "train.idx").cache_path
    data = cache.read_bytes()
    cache.write_bytes(data[:-8])  # cut short
    assert open_index(root / "train.idx").keys.tolist() == parse_index(root / "train.idx").keys.tolist()
    assert cache.stat().st_size == len(data)


def _writes_are_refused(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
    except PermissionError:
        return True
    (folder / ".probe").unlink()
    return False


def test_read_only_data_is_cached_in_the_user_cache_folder(cached, monkeypatch):
    root = cached / "data"
    write_set(root)
    root.chmod(0o555)
    if not _writes_are_refused(root):  # root ignores the mode: refuse the lock file there as a read-only folder would
        real_lock = record_index._open_lock

        def refused_in_data(cache_path):
            if cache_path.parent == root:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_lock(cache_path)

        monkeypatch.setattr(record_index, "_open_lock", refused_in_data)
    try:
        RecordDataset(root)
        mapped = RecordDataset(root)
        assert not beside_cache_path(root / "train.idx").exists()
        assert mapped.reader.index.cache_path.parent == cached / "xdg" / "transface" / "index"
        assert labels(mapped) == labels(RecordDataset(root, index_cache="off"))
    finally:
        root.chmod(0o755)


def test_a_configured_cache_folder_holds_the_cache(cached):
    root, folder = cached / "data", cached / "node_local"
    write_set(root)
    dataset = RecordDataset(root, index_cache=str(folder))
    assert dataset.reader.index.cache_path.parent == folder
    assert not beside_cache_path(root / "train.idx").exists()
    assert RecordDataset(root, index_cache=str(folder)).reader.index.header == dataset.reader.index.header


_OPENER = """
import sys, time
from pathlib import Path
import utils.record_index as record_index
record_index.MIN_CACHED_INDEX_BYTES = 0
write = record_index._write_cache
def slow_write(*args):  # holds the build open long enough for every process to reach it
    print("built", flush=True)
    time.sleep(0.5)
    return write(*args)
record_index._write_cache = slow_write
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
index = record_index.open_index(sys.argv[1])
print(index.fingerprint, index.cache_path, int(index.offsets[-1]), flush=True)
"""


def test_processes_opening_at_once_build_one_cache(cached):
    root = cached / "data"
    write_set(root)
    go = cached / "go"
    openers = [subprocess.Popen([sys.executable, "-c", _OPENER, str(root / "train.idx"), str(go)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(0.3)  # let the interpreters start
    go.touch()
    outputs = [opener.communicate(timeout=60)[0].split("\n") for opener in openers]
    assert all(opener.returncode == 0 for opener in openers)
    assert sum(line == "built" for output in outputs for line in output) == 1
    results = {line for output in outputs for line in output if line and line != "built"}
    expected = parse_index(root / "train.idx")
    assert results == {f"{expected.fingerprint} {beside_cache_path(root / 'train.idx')} {int(expected.offsets[-1])}"}
    assert sorted(path.name for path in root.iterdir()) == [".train.idx.cache.lock", "property", "train.idx",
                                                            "train.idx.cache", "train.rec"]


def test_the_fingerprint_is_read_from_the_cache_not_the_text(cached, monkeypatch):
    monkeypatch.setattr(record_index, "IDX_SAMPLE_BYTES", 8)  # the cache checks 8 bytes of each end
    root = cached / "data"
    write_set(root)
    idx = root / "train.idx"
    text = idx.read_bytes()
    old_way = f"idx {len(text)} bytes sha256 {hashlib.sha256(text).hexdigest()}"  # what checkpoints recorded
    assert data_identity(RecordDataset(root))["fingerprint"] == old_way
    before = idx.stat()
    middle = text.index(b"\t", len(text) // 2)
    idx.write_bytes(text[:middle] + b" " + text[middle + 1:])  # other bytes between the ends, same size and
    os.utime(idx, ns=(before.st_atime_ns, before.st_mtime_ns))  # (restored) mtime: not re-read
    assert data_identity(RecordDataset(root))["fingerprint"] == old_way


def test_resume_refuses_a_different_recordio_dataset(cached, capsys):
    from tests.test_train import write_config

    root = cached / "data"
    write_rec(root, [(payload, index % 2) for index, payload in enumerate(faces(8))], prop="2,112,112")
    config = write_config(cached, root, dataset="recordio", num_epoch=3)
    assert train.main([str(config), "--max-steps", "1"]) == 0
    assert beside_cache_path(root / "train.idx").is_file()
    write_rec(root, [(payload, index % 2) for index, payload in enumerate(faces(8, seed=5))], prop="2,112,112")
    assert train.main([str(config), "--resume", "auto", "--max-steps", "2"]) == 2
    assert "fingerprint 'idx" in capsys.readouterr().err


@pytest.mark.parametrize("block_bytes", [5, 7, 64, 1 << 26])
def test_parsing_in_blocks_gives_the_table_and_fingerprint_of_the_whole_text(tmp_path, monkeypatch, block_bytes):
    write_set(tmp_path / "data")
    idx = tmp_path / "data" / "train.idx"
    text = idx.read_bytes()
    lines = [line.split(b"\t") for line in text.splitlines()]
    monkeypatch.setattr(record_index, "_PARSE_BLOCK_BYTES", block_bytes)  # lines cut across blocks
    assert record_index._parse_index_blocks(idx) is not None  # not the line-by-line fallback
    index = parse_index(idx)
    assert index.keys.tolist() == [int(key) for key, _ in lines]
    assert index.offsets.tolist() == [int(offset) for _, offset in lines]
    assert index.fingerprint == f"idx {len(text)} bytes sha256 {hashlib.sha256(text).hexdigest()}"
    idx.write_bytes(text.rstrip(b"\n") + b"\r\n")  # not MXNet's exact layout: parsed line by line
    assert parse_index(idx).keys.tolist() == index.keys.tolist()


def test_a_killed_builders_temporary_is_removed_and_no_other(cached):
    root = cached / "data"
    write_set(root)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tag = f"{int(ended.stdout)}@{socket.gethostname().replace('/', '_') or 'unknown'}.{'0' * 16}.tmp"
    (root / f".train.idx.cache.{tag}").write_bytes(b"partial")
    (root / f".train.rec.{tag}").write_bytes(b"another tool's")
    RecordDataset(root)
    assert not (root / f".train.idx.cache.{tag}").exists() and (root / f".train.rec.{tag}").exists()


def test_a_damaged_idx_is_reported_not_cached(cached):
    root = cached / "data"
    write_set(root)
    with open(root / "train.idx", "a") as idx:
        idx.write("3\t0\n")  # key 3 twice
    with pytest.raises(UserError, match="lists key 3 more than once"):
        RecordDataset(root)
    assert not beside_cache_path(root / "train.idx").exists()


def test_an_index_below_the_threshold_is_parsed_without_a_cache(tmp_path):
    write_set(tmp_path / "data")
    reader = IndexedRecordReader(tmp_path / "data" / "train.rec", index_cache="")
    assert reader.index.cache_path is None and not beside_cache_path(tmp_path / "data" / "train.idx").exists()
