"""RecordIO format and .bin files against what MXNet 1.9.1 wrote and read back (tests/data/recordio)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.rec_utils import iter_chunks, iter_records
from utils.binfile import decode_bin_images, load_bin, save_bin
from utils.decode import decode_chw
from utils.errors import UserError
from utils.record_index import read_index
from utils.recordio import (
    MAGIC,
    MAGIC_BYTES,
    IndexedRecordReader,
    IndexedRecordWriter,
    IRHeader,
    RecordIOError,
    decode_record,
    encode_record,
    pack,
    unpack,
)

FIXTURES = Path(__file__).parent / "data" / "recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
REC_FIXTURES = ("plain", "ms1m_style", "split")


def mxnet_writer_reference(record: bytes) -> bytes:
    """MXNet's RecordIOWriter::WriteRecord transcribed loop for loop: scan every aligned word."""
    out = bytearray()
    length = len(record)
    lower_align, upper_align = (length >> 2) << 2, ((length + 3) >> 2) << 2
    dptr = 0
    for i in range(0, lower_align, 4):
        if record[i:i + 4] == MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, (1 if dptr == 0 else 2) << 29 | (i - dptr)) + record[dptr:i]
            dptr = i + 4
    out += struct.pack("<II", MAGIC, (3 if dptr != 0 else 0) << 29 | (length - dptr)) + record[dptr:]
    return bytes(out + b"\0" * (upper_align - length))


def label_list(header: IRHeader) -> list[float]:
    return list(header.label) if header.flag > 0 else [header.label]


@pytest.mark.parametrize("name", REC_FIXTURES)
def test_every_fixture_record_reads_as_mxnet_read_it(name):
    expected = EXPECTED[name]
    reader = IndexedRecordReader(FIXTURES / name / "train.rec")
    assert reader.keys.tolist() == expected["keys_in_idx_order"]
    for key in reader.keys.tolist():
        header, payload = unpack(reader.read(key))
        want = expected["records"][str(key)]
        assert (header.flag, label_list(header), header.id, header.id2) == (
            want["flag"], want["label"], want["id"], want["id2"])
        assert len(payload) == want["payload_len"]
        assert hashlib.sha256(payload).hexdigest() == want["payload_sha256"]


@pytest.mark.parametrize("name", REC_FIXTURES)
def test_fixture_images_decode_to_mxnet_rgb(name):
    reader = IndexedRecordReader(FIXTURES / name / "train.rec")
    decoded = 0
    for key, want in EXPECTED[name]["records"].items():
        if "decoded_mean_rgb" not in want:
            continue
        image = decode_chw(unpack(reader.read(int(key)))[1])  # [3, H, W]
        assert list(image.shape) == [want["decoded_shape"][2], *want["decoded_shape"][:2]]
        mean_rgb = image.double().mean(dim=(1, 2))
        assert torch.allclose(mean_rgb, torch.tensor(want["decoded_mean_rgb"], dtype=torch.double), atol=1.0)
        # Red marker top-left, blue bottom-right: channel 0 must be red, channel 2 blue.
        assert image[:, 0, 0].tolist() == want["decoded_top_left_rgb"]
        assert image[:, -1, -1].tolist() == want["decoded_bottom_right_rgb"]
        assert image[0, 0, 0] > 200 and image[2, 0, 0] < 50 and image[2, -1, -1] > 200 and image[0, -1, -1] < 50
        decoded += 1
    assert decoded > 0


def test_split_fixture_chunks_and_payloads_match_mxnet():
    expected = EXPECTED["split"]
    chunks = [list(chunk) for chunk in iter_chunks(FIXTURES / "split" / "train.rec")]
    assert chunks == expected["chunks_offset_cflag_length"]
    reader = IndexedRecordReader(FIXTURES / "split" / "train.rec")
    for key, payload_hex in expected["payload_hex"].items():
        assert unpack(reader.read(int(key)))[1].hex() == payload_hex


@pytest.mark.parametrize("name", REC_FIXTURES)
def test_rewriting_fixture_records_reproduces_mxnet_bytes(name, tmp_path):
    reader = IndexedRecordReader(FIXTURES / name / "train.rec")
    with IndexedRecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key in reader.keys.tolist():
            header, payload = unpack(reader.read(key))
            writer.write(key, pack(header, payload))  # re-packed from parsed fields, not copied bytes
    assert (tmp_path / "train.rec").read_bytes() == (FIXTURES / name / "train.rec").read_bytes()
    assert (tmp_path / "train.idx").read_bytes() == (FIXTURES / name / "train.idx").read_bytes()


def test_sequential_reading_finds_every_indexed_record():
    reader = IndexedRecordReader(FIXTURES / "split" / "train.rec")
    records = dict(iter_records(FIXTURES / "split" / "train.rec"))
    assert sorted(records) == sorted(reader.offsets.tolist())
    assert all(records[reader.offset_of(key)] == reader.read(key) for key in reader.keys.tolist())


@pytest.mark.parametrize("record", [
    b"",
    b"abc",
    MAGIC_BYTES,
    MAGIC_BYTES * 3,
    b"xxxx" + MAGIC_BYTES + b"yy",
    b"x" + MAGIC_BYTES + b"yyy",  # unaligned: stays in one chunk
    b"ab" + MAGIC_BYTES + MAGIC_BYTES + b"cc" + MAGIC_BYTES,  # aligned after an unaligned occurrence
    bytes(range(256)) * 8 + MAGIC_BYTES + b"tail" + MAGIC_BYTES,
])
def test_record_split_equals_mxnet_writer_and_joins_back(record):
    encoded = encode_record(record)
    assert encoded == mxnet_writer_reference(record)
    assert decode_record(encoded) == (record, len(encoded))


def test_random_records_with_many_magics_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        words = rng.choice([MAGIC, 0, 1, 0xFFFFFFFF], size=int(rng.integers(0, 40))).astype("<u4")
        record = words.tobytes() + bytes(rng.integers(0, 256, size=int(rng.integers(0, 4)), dtype=np.uint8))
        encoded = encode_record(record)
        assert encoded == mxnet_writer_reference(record)
        assert decode_record(encoded)[0] == record


def test_pack_stores_vector_labels_after_the_header_like_mxnet():
    record = pack(IRHeader(0, (2.0, 0.25, 0.75), 7, 9), b"img")
    assert record == struct.pack("<IfQQ3f", 3, 0.0, 7, 9, 2.0, 0.25, 0.75) + b"img"
    assert unpack(record) == (IRHeader(3, (2.0, 0.25, 0.75), 7, 9), b"img")
    scalar = pack(IRHeader(5, 4.0, 1, 0), b"")  # a numeric label forces flag 0, as in MXNet
    assert scalar == struct.pack("<IfQQ", 0, 4.0, 1, 0)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def test_truncated_rec_is_reported_at_open_with_file_and_offset(tmp_path):
    folder = copy_fixture("ms1m_style", tmp_path)
    rec = folder / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-20])
    with pytest.raises(RecordIOError, match=r"key 27 at byte 60448.*past the end of .*train.rec.*truncated"):
        IndexedRecordReader(rec)


def test_index_pointing_past_the_end_is_reported_at_open(tmp_path):
    folder = copy_fixture("plain", tmp_path)
    with (folder / "train.idx").open("a") as idx:
        idx.write("102\t999999\n")
    with pytest.raises(RecordIOError, match=r"key 102 at byte 999999 but .*train.rec' holds only 13184 bytes"):
        IndexedRecordReader(folder / "train.rec")


def test_record_whose_chunk_runs_past_the_end_names_key_and_offset(tmp_path):
    folder = copy_fixture("plain", tmp_path)
    data = bytearray((folder / "train.rec").read_bytes())
    struct.pack_into("<I", data, 2348 + 4, 20000)  # key 5's length now runs past the file end
    (folder / "train.rec").write_bytes(bytes(data))
    reader = IndexedRecordReader(folder / "train.rec")
    assert unpack(reader.read(0))[0].id == 0  # other records stay readable
    with pytest.raises(RecordIOError, match=r"record key 5 at byte 2348 is damaged: .*runs past the end"):
        reader.read(5)


def test_offset_that_is_no_record_start_is_reported(tmp_path):
    folder = copy_fixture("plain", tmp_path)
    (folder / "train.idx").write_text("0\t4\n5\t2348\n")
    reader = IndexedRecordReader(folder / "train.rec")
    with pytest.raises(RecordIOError, match=r"record key 0 at byte 4 is damaged: no RecordIO magic"):
        reader.read(0)
    (folder / "train.idx").write_text("0\t0\n5\t2352\n")
    with pytest.raises(RecordIOError, match=r"key 5 at byte 2352 but there is no record there"):
        IndexedRecordReader(folder / "train.rec")  # the furthest offset is checked at open


@pytest.mark.parametrize("text, line", [("0\t0\n1\tforty\n", 2), ("0\t0\n1\n", 2), ("0 0 0\n", 1)])
def test_malformed_index_line_is_named(tmp_path, text, line):
    (tmp_path / "train.idx").write_text(text)
    with pytest.raises(UserError, match=rf"line {line} is"):
        read_index(tmp_path / "train.idx")


def test_index_with_blank_lines_and_duplicate_keys(tmp_path):
    (tmp_path / "a.idx").write_text("0\t0\n\n5\t40\n")
    keys, offsets = read_index(tmp_path / "a.idx")
    assert keys.tolist() == [0, 5] and offsets.tolist() == [0, 40]
    (tmp_path / "b.idx").write_text("0\t0\n0\t40\n")
    with pytest.raises(UserError, match="key 0 more than once"):
        read_index(tmp_path / "b.idx")


def test_reader_pickles_without_its_handle_and_reopens_in_a_new_process():
    reader = IndexedRecordReader(FIXTURES / "plain" / "train.rec")
    first = reader.read(7)
    assert reader._handle is not None
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert clone.read(7) == first
    reader._pid = -1  # as seen from a forked child: the inherited handle must not be reused
    inherited = reader._handle
    assert reader.read(101) == clone.read(101)
    assert reader._handle is not inherited


def test_read_header_at_equals_full_unpack():
    for name in REC_FIXTURES:
        reader = IndexedRecordReader(FIXTURES / name / "train.rec")
        for key, offset in zip(reader.keys.tolist(), reader.offsets.tolist()):
            assert reader.read_header_at(offset, key) == unpack(reader.read(key))[0]


# ---- .bin verification sets ----

def test_bin_fixture_loads_with_mxnet_hashes_and_flags():
    expected = EXPECTED["lfw_style.bin"]
    images, issame = load_bin(FIXTURES / "lfw_style.bin")
    assert len(images) == expected["num_images"]
    assert [hashlib.sha256(image).hexdigest() for image in images] == expected["image_sha256"]
    assert issame == expected["issame"]


def test_save_bin_reproduces_the_python2_fixture_bytes(tmp_path):
    images, issame = load_bin(FIXTURES / "lfw_style.bin")
    save_bin(tmp_path / "copy.bin", images, issame)
    assert (tmp_path / "copy.bin").read_bytes() == (FIXTURES / "lfw_style.bin").read_bytes()
    assert pickle.loads((tmp_path / "copy.bin").read_bytes(), encoding="bytes") == (images, issame)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_numpy", ["array", "scalars"])
def test_bin_with_numpy_issame_loads_as_bools(tmp_path, protocol, as_numpy):
    images, issame = load_bin(FIXTURES / "lfw_style.bin")
    flags = np.array(issame) if as_numpy == "array" else [np.bool_(flag) for flag in issame]
    (tmp_path / "np.bin").write_bytes(pickle.dumps((images, flags), protocol=protocol))
    assert load_bin(tmp_path / "np.bin") == (images, issame)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


class _Plain:
    pass


@pytest.mark.parametrize("content", [
    ([b"a", b"b"], [_Payload()]),
    ([b"a", b"b"], [_Plain()]),
    ([b"a", b"b"], np.array([1.0])),
    ([b"a", b"b"], np.array([True], dtype=object)),
    ([b"a", b"b"], np.zeros((1, 1), dtype=bool)),
], ids=["os-system-reduce", "class-instance", "float-array", "object-array", "2d-bool-array"])
def test_pickle_with_other_globals_is_refused(tmp_path, content):
    (tmp_path / "bad.bin").write_bytes(pickle.dumps(content, protocol=2))
    refused = r"bad.bin' is not a readable insightface .bin verification set \(UnpicklingError: (global|numpy|only)"
    with pytest.raises(UserError, match=refused):
        load_bin(tmp_path / "bad.bin")


@pytest.mark.parametrize("content, message", [
    ({"images": []}, "not the pair"),
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
    (([1, 2], [True]), "not a list of encoded image bytes"),
    (([b"a", b"b"], ["yes"]), "not a list of booleans"),
])
def test_bin_with_wrong_layout_is_refused(tmp_path, content, message):
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(UserError, match=message):
        load_bin(tmp_path / "odd.bin")


def test_decode_bin_images_gives_rgb_batch_and_flip():
    images, _ = load_bin(FIXTURES / "lfw_style.bin")
    batch = decode_bin_images(images)
    assert batch.shape == (12, 3, 112, 112) and batch.dtype == torch.uint8
    assert batch[:, 0, 0, 0].min() > 200 and batch[:, 2, -1, -1].min() > 200  # red top-left, blue bottom-right
    assert torch.equal(decode_bin_images(images, flip=True), batch.flip(-1))
    assert torch.equal(batch[3], decode_chw(images[3]))
