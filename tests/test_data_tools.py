"""Data tools: pack_rec, shuffle_rec, rec2image and make_bin round trips and their errors."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import ImageFolderDataset, RecordDataset
from tests.rec_utils import iter_chunks
from tools import make_bin, pack_rec, rec2image, shuffle_rec
from tools.pack_rec import EncodeOptions, pack_folder
from utils import record_index
from utils.binfile import load_bin
from utils.decode import PNG_START
from utils.errors import UserError
from utils.opencv import cv2
from utils.recordio import MAGIC_BYTES, IndexedRecordReader, IndexedRecordWriter, IRHeader, first_label, unpack

FIXTURES = Path(__file__).parent / "data" / "recordio"


def smooth_face(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """A smooth random RGB image [H, W, 3], so JPEG stays close to it."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    return cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def write_folder(root: Path, counts: list[int], suffix: str = ".png", size: int = 112,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Identity folders person_0, person_1, ...; returns {relative path: RGB array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, count in enumerate(counts):
        (root / f"person_{label}").mkdir(parents=True)
        for index in range(count):
            rgb = smooth_face(rng, size)
            relative = f"person_{label}/{index:02d}{suffix}"
            cv2.imwrite(str(root / relative), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            written[relative] = rgb
    return written


def jpeg_with_magic_comment(rgb: np.ndarray) -> bytes:
    """A JPEG whose comment segment puts the RecordIO magic at 4-byte aligned record offsets.

    In a record the payload starts at byte 24; the comment's data starts 6 bytes into the JPEG
    (SOI, marker, length), i.e. at record offset 30, so magic at data offset 2 + 4k is aligned.
    """
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    comment = b"ab" + MAGIC_BYTES * 3 + b"cdef" + MAGIC_BYTES + b"g" + MAGIC_BYTES  # the last is unaligned
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return jpeg[:2] + segment + jpeg[2:]


def records_by_key(folder: Path) -> dict[int, tuple]:
    reader = IndexedRecordReader(folder / "train.rec")
    return {key: unpack(reader.read(key)) for key in reader.keys.tolist()}


def test_packed_png_folder_reads_back_pixel_exact_in_insightface_layout(tmp_path):
    written = write_folder(tmp_path / "faces", [3, 1, 2])
    summary = pack_folder(tmp_path / "faces", tmp_path / "rec", EncodeOptions(encoding="png"))
    assert (summary.num_images, summary.num_classes) == (6, 3)
    assert (tmp_path / "rec" / "property").read_text() == "3,112,112\n"
    records = records_by_key(tmp_path / "rec")
    assert sorted(records) == list(range(10))  # header, 6 images, 3 identities
    assert records[0][0].flag == 2 and records[0][0].label == (7.0, 10.0) and records[0][1] == b""
    assert [records[key][0].label for key in (7, 8, 9)] == [(1.0, 4.0), (4.0, 5.0), (5.0, 7.0)]
    dataset = RecordDataset(tmp_path / "rec")
    folder = ImageFolderDataset(tmp_path / "faces")
    for index, (relative, rgb) in enumerate(sorted(written.items())):
        image, label = dataset[index]
        assert label == int(relative.split("/")[0].split("_")[1]) == folder[index][1]
        assert torch.equal(image, torch.from_numpy(rgb).permute(2, 0, 1))


def test_packed_jpeg_is_close_and_quality_matters(tmp_path):
    written = write_folder(tmp_path / "faces", [2, 2])
    pack_folder(tmp_path / "faces", tmp_path / "q95", EncodeOptions(quality=95))
    pack_folder(tmp_path / "faces", tmp_path / "q30", EncodeOptions(quality=30))
    fine = RecordDataset(tmp_path / "q95")
    for index, rgb in enumerate(written[key] for key in sorted(written)):
        original = torch.from_numpy(rgb).permute(2, 0, 1).float()
        assert (fine[index][0].float() - original).abs().mean() < 2.0
        assert unpack(fine.reader.read(index + 1))[1][:2] == b"\xff\xd8"
    assert (tmp_path / "q30" / "train.rec").stat().st_size < (tmp_path / "q95" / "train.rec").stat().st_size


def test_record_split_over_chunks_packs_and_reads_back(tmp_path):
    rgb = smooth_face(np.random.default_rng(3))
    (tmp_path / "faces" / "only").mkdir(parents=True)
    payload = jpeg_with_magic_comment(rgb)
    (tmp_path / "faces" / "only" / "a.jpg").write_bytes(payload)
    pack_folder(tmp_path / "faces", tmp_path / "rec", EncodeOptions(keep_bytes=True))
    chunks = list(iter_chunks(tmp_path / "rec" / "train.rec"))
    assert [chunk.cflag for chunk in chunks[1:-1]] == [1, 2, 2, 2, 3]  # header | 4 aligned magics | identity
    dataset = RecordDataset(tmp_path / "rec")
    assert unpack(dataset.reader.read(1))[1] == payload
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert torch.equal(dataset[0][0], torch.from_numpy(decoded).permute(2, 0, 1))


def test_keep_bytes_stores_files_unchanged_and_workers_do_not_change_output(tmp_path):
    write_folder(tmp_path / "faces", [2, 3], suffix=".jpg")
    pack_folder(tmp_path / "faces", tmp_path / "one", EncodeOptions(keep_bytes=True), num_workers=1)
    pack_folder(tmp_path / "faces", tmp_path / "two", EncodeOptions(keep_bytes=True), num_workers=2)
    assert (tmp_path / "one" / "train.rec").read_bytes() == (tmp_path / "two" / "train.rec").read_bytes()
    files = sorted((tmp_path / "faces").glob("*/*.jpg"))
    records = records_by_key(tmp_path / "one")
    assert [records[key][1] for key in range(1, 6)] == [path.read_bytes() for path in files]


def test_pack_unpack_pack_is_byte_identical(tmp_path):
    write_folder(tmp_path / "faces", [2, 1, 12], suffix=".jpg")  # >10 images: keys need zero-padding
    pack_folder(tmp_path / "faces", tmp_path / "rec", EncodeOptions(keep_bytes=True))
    written, skipped = rec2image.unpack_records(tmp_path / "rec", tmp_path / "unpacked")
    assert (written, skipped) == (15, [])
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["0", "1", "2"]
    pack_folder(tmp_path / "unpacked", tmp_path / "again", EncodeOptions(keep_bytes=True))
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "rec" / name).read_bytes()


def labelled_payloads(folder: Path) -> tuple[list[tuple[bytes, int]], int]:
    """([(payload, label)] sorted, class count) of a packed set, read through the training dataset."""
    dataset = RecordDataset(folder, decode=False)
    pairs = sorted((unpack(dataset.reader.read(key))[1], int(first_label(unpack(dataset.reader.read(key))[0])))
                   for key in dataset.image_keys.tolist())
    return pairs, dataset.num_classes


def test_round_trip_keeps_every_label_with_gaps_and_empty_identities(tmp_path, caplog):
    """rec2image -> pack_rec once turned 40 classes into 39 and relabelled most images when class 3 was empty."""
    rng = np.random.default_rng(5)
    images = {label: [cv2.imencode(".jpg", smooth_face(rng))[1].tobytes() for _ in range(2)]
              for label in (0, 1, 3, 5, 6, 7, 8, 9, 10, 11)}  # 2 and 4 empty (gaps), 12 empty at the end
    blocks = [(label, images.get(label, [])) for label in range(13)]
    records = ((IRHeader(0, float(label), 0, 0), payload) for label, payloads in blocks for payload in payloads)
    (tmp_path / "rec").mkdir()
    pack_rec.write_records(tmp_path / "rec", [label for label, _ in blocks], [len(items) for _, items in blocks],
                           records, 13, (112, 112))
    rec2image.unpack_records(tmp_path / "rec", tmp_path / "unpacked")
    with caplog.at_level(logging.WARNING):
        pack_folder(tmp_path / "unpacked", tmp_path / "again", EncodeOptions(keep_bytes=True))
    assert "get another label" not in caplog.text  # integer names are the labels: nothing renumbered
    original, num_classes = labelled_payloads(tmp_path / "rec")
    assert labelled_payloads(tmp_path / "again") == (original, 13) and num_classes == 13
    assert (tmp_path / "again" / "property").read_text() == (tmp_path / "rec" / "property").read_text()


def test_pack_rec_warns_when_integer_folder_names_are_not_the_labels(tmp_path, caplog):
    for name in ("3", "7"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "faces" / name / "a.png"), smooth_face(np.random.default_rng(0)))
    with caplog.at_level(logging.WARNING):
        pack_folder(tmp_path / "faces", tmp_path / "rec")
    assert "so 2 folders get another label (first: '3' -> 0)" in caplog.text


def test_rec2image_unpacks_mxnet_fixture_with_labels(tmp_path):
    written, skipped = rec2image.unpack_records(FIXTURES / "ms1m_style", tmp_path / "out")
    assert (written, skipped) == (21, [])
    counts = [len(list(folder.iterdir())) for folder in sorted((tmp_path / "out").iterdir())]
    assert counts == [3, 5, 4, 2, 4, 3]
    payload = unpack(IndexedRecordReader(FIXTURES / "ms1m_style" / "train.rec").read(4))[1]
    assert (tmp_path / "out" / "1" / "04.jpg").read_bytes() == payload


def image_signature(folder: Path) -> Counter:
    """Multiset of (label, payload hash) over the images of a record dataset."""
    dataset = RecordDataset(folder, decode=False)
    return Counter((int(first_label(unpack(dataset.reader.read(int(key)))[0])),
                    hashlib.sha256(unpack(dataset.reader.read(int(key)))[1]).hexdigest())
                   for key in dataset.image_keys)


def test_shuffled_copy_keeps_images_labels_and_a_valid_layout(tmp_path):
    write_folder(tmp_path / "faces", [4, 1, 3, 5], suffix=".jpg")
    pack_folder(tmp_path / "faces", tmp_path / "rec", EncodeOptions(keep_bytes=True))
    assert shuffle_rec.shuffle_records(tmp_path / "rec", tmp_path / "shuffled", seed=1) == 13
    assert image_signature(tmp_path / "shuffled") == image_signature(tmp_path / "rec")
    shuffled, original = records_by_key(tmp_path / "shuffled"), records_by_key(tmp_path / "rec")
    assert [shuffled[key][1] for key in range(1, 14)] != [original[key][1] for key in range(1, 14)]
    first_identity, end = (int(v) for v in shuffled[0][0].label)
    assert (first_identity, end) == (14, 18)
    for label, key in enumerate(range(first_identity, end)):  # each identity record names its images
        start, stop = (int(v) for v in shuffled[key][0].label)
        assert {int(shuffled[k][0].label) for k in range(start, stop)} == {label}
        assert all(shuffled[k][0].id == k for k in range(start, stop))
    assert RecordDataset(tmp_path / "shuffled").num_classes == 4


def test_shuffling_a_file_without_header_keeps_keys_and_records(tmp_path):
    shuffle_rec.shuffle_records(FIXTURES / "plain", tmp_path / "out", seed=3)
    original, shuffled = records_by_key(FIXTURES / "plain"), records_by_key(tmp_path / "out")
    assert original == shuffled
    order = IndexedRecordReader(tmp_path / "out" / "train.rec").keys.tolist()
    assert sorted(order) == [0, 5, 7, 100, 101] and order != [0, 5, 7, 100, 101]


def test_make_bin_writes_pairs_that_load_back(tmp_path):
    write_folder(tmp_path / "faces", [2, 2], suffix=".jpg")
    (tmp_path / "pairs.txt").write_text(
        "# a comment\nperson_0/00.jpg person_0/01.jpg 1\n\nperson_0/00.jpg person_1/01.jpg 0\n")
    assert make_bin.make_bin(tmp_path / "pairs.txt", tmp_path / "faces", tmp_path / "sets" / "mine.bin") == 2
    images, issame = load_bin(tmp_path / "sets" / "mine.bin")
    assert issame == [True, False]
    names = ["person_0/00.jpg", "person_0/01.jpg", "person_0/00.jpg", "person_1/01.jpg"]
    assert images == [(tmp_path / "faces" / name).read_bytes() for name in names]


def test_make_bin_stores_other_formats_as_png_of_the_same_pixels(tmp_path):
    rgb = write_folder(tmp_path / "faces", [1], suffix=".bmp")["person_0/00.bmp"]
    (tmp_path / "pairs.txt").write_text("person_0/00.bmp person_0/00.bmp 1\n")
    make_bin.make_bin(tmp_path / "pairs.txt", tmp_path / "faces", tmp_path / "set.bin")
    images, _ = load_bin(tmp_path / "set.bin")
    assert images[0].startswith(PNG_START)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], rgb)


@pytest.mark.parametrize("content, message", [
    (b"", "has no image header this project can read"),  # an empty file once gave an OpenCV traceback
    (b"not an image", "has no image header this project can read"),
    (None, "is 120x120, not 112x112"),
])
def test_make_bin_and_pack_rec_refuse_a_bad_image_naming_it(tmp_path, content, message):
    write_folder(tmp_path / "faces", [1], size=120 if content is None else 112)
    bad = tmp_path / "faces" / "person_0" / "00.png"
    if content is not None:
        bad.write_bytes(content)
    (tmp_path / "pairs.txt").write_text("person_0/00.png person_0/00.png 1\n")
    with pytest.raises(UserError, match=re.escape(f"'{bad}' {message}")):
        make_bin.make_bin(tmp_path / "pairs.txt", tmp_path / "faces", tmp_path / "set.bin")
    with pytest.raises(UserError, match=re.escape(f"'{bad}' {message}")):
        pack_folder(tmp_path / "faces", tmp_path / "rec")


def test_make_bin_names_the_bad_pairs_line(tmp_path):
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\na.jpg b.jpg yes\n")
    with pytest.raises(UserError, match=r"line 2 is 'a.jpg b.jpg yes', not 'path_a path_b 0\|1'"):
        make_bin.read_pairs(tmp_path / "pairs.txt")


def test_pack_refuses_unaligned_images_and_existing_output(tmp_path):
    write_folder(tmp_path / "big", [1], size=120)
    with pytest.raises(UserError, match=r"is 120x120, not 112x112; training needs aligned 112x112 faces"):
        pack_folder(tmp_path / "big", tmp_path / "rec")
    write_folder(tmp_path / "faces", [1])
    pack_folder(tmp_path / "faces", tmp_path / "rec")
    with pytest.raises(UserError, match="already exists; choose another output folder or pass --overwrite"):
        pack_folder(tmp_path / "faces", tmp_path / "rec")


@pytest.mark.parametrize("tool, argv", [
    (pack_rec, ["{tmp}/missing", "{tmp}/out"]),
    (shuffle_rec, ["{tmp}/missing", "{tmp}/out"]),
    (rec2image, ["{tmp}/missing", "{tmp}/out"]),
    (make_bin, ["--pairs", "{tmp}/missing.txt", "--images", "{tmp}", "--output", "{tmp}/x.bin"]),
])
def test_tools_report_user_errors_without_traceback(tool, argv, tmp_path, capsys):
    assert tool.main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


def test_pack_rec_command_line(tmp_path, capsys):
    write_folder(tmp_path / "faces", [1, 2])
    argv = [str(tmp_path / "faces"), str(tmp_path / "rec"), "--encoding", "png", "--shuffle", "--workers", "1"]
    assert pack_rec.main(argv) == 0
    assert "packed 3 images of 2 identities" in capsys.readouterr().out
    assert RecordDataset(tmp_path / "rec").num_classes == 2


# ---- at WebFace42M's scale ----

def write_webface42m_tree(root: Path, counts: dict[str, list[int]]) -> list[bytes]:
    """WebFace42M as distributed: <root>/<part>/<part>_0_<7 digits>/<part>_<running number>.jpg; returns
    the JPEGs in label order (parts, then identities, then names, as pack_rec orders them)."""
    rng = np.random.default_rng(1)
    payloads = []
    for part, sizes in counts.items():
        number = 0
        for identity, size in enumerate(sizes):
            folder = root / part / f"{part}_0_{identity:07d}"
            folder.mkdir(parents=True)
            names = sorted(f"{part}_{number + index}.jpg" for index in range(size))
            number += size
            for name in names:
                payload = cv2.imencode(".jpg", smooth_face(rng))[1].tobytes()
                (folder / name).write_bytes(payload)
                payloads.append(payload)
    return payloads


def test_webface42m_layout_as_distributed_packs_with_one_command(tmp_path, capsys):
    payloads = write_webface42m_tree(tmp_path / "WebFace42M", {"0": [2, 1, 3], "1": [2], "2": [1, 2]})
    argv = [str(tmp_path / "WebFace42M"), str(tmp_path / "rec"), "--keep-bytes", "--workers", "1"]
    assert pack_rec.main(argv) == 0
    assert "packed 11 images of 6 identities" in capsys.readouterr().out
    dataset = RecordDataset(tmp_path / "rec", decode=False)
    records = [unpack(dataset.reader.read(int(key))) for key in dataset.image_keys]
    assert [payload for _, payload in records] == payloads
    assert [int(header.label) for header, _ in records] == [0, 0, 1, 2, 2, 2, 3, 3, 4, 5, 5]
    assert dataset.num_classes == 6


def test_a_part_holding_images_next_to_parts_holding_identities_is_refused(tmp_path):
    write_webface42m_tree(tmp_path / "faces", {"0": [1], "1": [1]})
    cv2.imwrite(str(tmp_path / "faces" / "1" / "stray.png"), smooth_face(np.random.default_rng(0)))
    with pytest.raises(UserError, match=r"'.*faces/1' holds images or no folders, but '.*faces/0' holds identity"):
        pack_folder(tmp_path / "faces", tmp_path / "rec")


def test_shuffled_pack_order_draws_what_shuffling_python_lists_drew():
    """Arrays instead of lists must keep the files of `pack_rec --shuffle --seed` (and shuffle_rec) unchanged."""
    labels = np.array([2, 0, 1, 2, 2, 0, 3, 1, 2, 0], dtype=np.int32)  # shuffle_rec's labels: any order
    order, block_labels, block_sizes = pack_rec.pack_order(labels, 5, shuffle=True, seed=7)
    blocks = [(label, [p for p in range(len(labels)) if labels[p] == label]) for label in range(5)]
    rng = random.Random(7)  # the earlier pack_order, on lists
    rng.shuffle(blocks)
    for _, positions in blocks:
        rng.shuffle(positions)
    assert order.tolist() == [p for _, positions in blocks for p in positions]
    assert block_labels.tolist() == [label for label, _ in blocks]
    assert block_sizes.tolist() == [len(positions) for _, positions in blocks]


class _ReadyPool:
    """A pool that runs each task at once and counts the tasks submitted but not yet consumed."""

    def __init__(self):
        self.submitted = self.consumed = self.most_in_flight = 0

    def submit(self, function, task):
        self.submitted += 1
        self.most_in_flight = max(self.most_in_flight, self.submitted - self.consumed)
        pool, result = self, function(task)

        class Result:
            def result(self):
                pool.consumed += 1
                return result
        return Result()


def test_encoding_keeps_a_bounded_number_of_chunks_ahead_of_the_writer():
    """Pool.imap submitted every task at once: with workers faster than the writer, memory grew without bound."""
    pool = _ReadyPool()
    items = pack_rec.ordered_map(pool, lambda task: [task] * 3, iter(range(1000)), max_in_flight=4)
    assert [next(items) for _ in range(6)] == [0, 0, 0, 1, 1, 1]
    assert pool.submitted <= 6 and pool.most_in_flight <= 4
    assert list(items) == [task for task in range(2, 1000) for _ in range(3)] and pool.most_in_flight <= 4


def _die_on_three(task: int) -> list[int]:
    if task == 3:
        os._exit(1)  # as the kernel's OOM killer ends a worker
    return [task]


def test_a_worker_that_dies_is_one_clear_error_not_a_hang():
    """multiprocessing.Pool replaced a killed worker and waited for its task's result for ever."""
    with pack_rec._pool(2) as pool:
        items = pack_rec.ordered_map(pool, _die_on_three, iter(range(8)), max_in_flight=4)
        with pytest.raises(UserError, match="an encoding worker process died .* fewer --workers"):
            list(items)


def test_a_workers_user_error_is_the_one_line_and_nothing_is_written(tmp_path, capsys):
    write_folder(tmp_path / "faces", [2, 3], suffix=".jpg")
    bad = sorted((tmp_path / "faces").glob("*/*.jpg"))[-1]
    bad.write_bytes(b"\xff\xd8 not a JPEG")
    argv = [str(tmp_path / "faces"), str(tmp_path / "rec"), "--workers", "2"]
    assert pack_rec.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: '{bad}' ") and "Traceback" not in err
    assert not (tmp_path / "rec" / "train.rec").exists()


def test_pack_and_shuffle_bookkeeping_is_at_most_50_bytes_per_image():
    from bench.bench_pack import pack_bookkeeping_bytes_per_image, shuffle_bookkeeping_bytes_per_image

    assert pack_bookkeeping_bytes_per_image(10_000) <= 50
    assert shuffle_bookkeeping_bytes_per_image(10_000) <= 50


def test_record_writer_refuses_a_repeated_key_and_writes_nothing(tmp_path):
    writer = IndexedRecordWriter(tmp_path / "train.rec")
    writer.write(3, b"a")
    writer.write(1, b"b")
    writer.write(3, b"c")
    with pytest.raises(ValueError, match="key 3 was written twice"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_more_classes_than_float32_tells_apart_is_refused(tmp_path):
    """Image labels are float32: above 2^24 classes two classes would read back as one."""
    records = iter([(IRHeader(0, 0.0, 0, 0), b"")])
    with pytest.raises(UserError, match=r"16777217 classes is more than RecordIO's float32 labels tell apart"):
        pack_rec.write_records(tmp_path, [], [], records, 2**24 + 1, (112, 112))


@pytest.mark.parametrize("tool", ["pack_rec", "shuffle_rec", "shuffle_rec without header"])
def test_the_tools_leave_a_valid_index_cache_so_no_rank_parses(tmp_path, monkeypatch, tool):
    """A large index gets its train.idx.cache when it is written; a small one has a leftover cache removed."""
    write_folder(tmp_path / "faces", [3, 2], suffix=".jpg")
    output = tmp_path / "out"
    output.mkdir()
    (output / "train.idx.cache").write_bytes(b"left by an earlier, larger index")

    def write():
        if tool == "pack_rec":
            pack_folder(tmp_path / "faces", output, EncodeOptions(keep_bytes=True), overwrite=True)
        elif tool == "shuffle_rec":
            pack_folder(tmp_path / "faces", tmp_path / "rec", EncodeOptions(keep_bytes=True), overwrite=True)
            shuffle_rec.shuffle_records(tmp_path / "rec", output, seed=2, overwrite=True)
        else:  # a copy: opening the input with every index cached would write a cache beside the fixture
            shutil.copytree(FIXTURES / "plain", tmp_path / "plain", dirs_exist_ok=True)
            shuffle_rec.shuffle_records(tmp_path / "plain", output, seed=2, overwrite=True)

    write()  # an index of a few hundred bytes: below the cached size
    assert not (output / "train.idx.cache").exists()
    monkeypatch.setattr(record_index, "MIN_CACHED_INDEX_BYTES", 0)
    write()
    cache = output / "train.idx.cache"
    assert cache.stat().st_mtime_ns >= (output / "train.idx").stat().st_mtime_ns

    expected = IndexedRecordReader(output / "train.rec", index_cache="off").keys.tolist()

    def no_parse(*args):
        raise AssertionError("the index was parsed again: the tool's cache was not valid")

    monkeypatch.setattr(record_index, "parse_index", no_parse)
    assert record_index.open_index(output / "train.idx").keys.tolist() == expected
