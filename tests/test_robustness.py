"""Issue 19: no output follows a planted symlink or stays partial, readers take only regular files, hostile
headers are refused before large allocations, and values are checked where they enter."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset as dataset_module
import train
from dataset import DataError, ImageFolderDataset, RecordDataset
from eval import verification
from eval.ijb_data import MetaPaths, read_image_meta, read_pairs
from tests.test_data_tools import write_folder
from tools import make_bin
from tools.inference import (
    build_parser,
    collect_landmarks,
    list_images,
    load_face,
    read_landmarks_file,
    write_embeddings,
)
from tools.pack_rec import EncodeOptions, encode_file, pack_folder
from tools.rec2image import unpack_records
from tools.shuffle_rec import shuffle_records
from utils.binfile import decode_bin_images, load_bin, save_bin
from utils.checkpoint import CheckpointManager
from utils.config import load_config
from utils.decode import image_size_of
from utils.errors import UserError
from utils.files import open_append, read_bytes
from utils.monitor import setup_logging
from utils.opencv import cv2
from utils.recordio import IndexedRecordWriter, IRHeader, pack


def plant(path: Path, victim: Path) -> None:
    """A symlink at `path` pointing at `victim`, a file an attacker wants overwritten."""
    victim.write_text("precious")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(victim)


def test_pack_rec_outputs_replace_planted_symlinks_instead_of_writing_through(tmp_path):
    write_folder(tmp_path / "faces", [2, 1])
    out = tmp_path / "packed"
    names = ("train.rec", "train.idx", "property", "train.rec.tmp", "train.idx.tmp")
    for name in names:
        plant(out / name, tmp_path / f"victim_{name}")
    pack_folder(tmp_path / "faces", out, overwrite=True)
    for name in names:
        assert (tmp_path / f"victim_{name}").read_text() == "precious"
    assert (out / "property").read_text() == "2,112,112\n" and not (out / "property").is_symlink()


def test_make_bin_and_embeddings_replace_planted_symlinks(tmp_path):
    write_folder(tmp_path / "faces", [2, 2])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("person_0/00.png person_0/01.png 1\nperson_0/00.png person_1/00.png 0\n")
    for name in ("set.bin", "set.bin.tmp", "emb.npy", "emb.txt"):
        plant(tmp_path / "out" / name, tmp_path / f"victim_{name}")
    make_bin.make_bin(pairs, tmp_path / "faces", tmp_path / "out" / "set.bin")
    write_embeddings(tmp_path / "out" / "emb.npy", np.ones((2, 4), dtype=np.float32), ["a", "b"])
    for name in ("set.bin", "set.bin.tmp", "emb.npy", "emb.txt"):
        assert (tmp_path / f"victim_{name}").read_text() == "precious"
    assert np.load(tmp_path / "out" / "emb.npy").shape == (2, 4)


def test_training_log_refuses_a_planted_symlink(tmp_path):
    plant(tmp_path / "run" / "training.log", tmp_path / "victim")
    with pytest.raises(UserError, match="training.log' is a symlink"):
        setup_logging(tmp_path / "run", rank=0)
    assert (tmp_path / "victim").read_text() == "precious"


def test_training_log_appends_across_runs(tmp_path):
    for message in ("first run", "second run"):
        setup_logging(tmp_path, rank=0)
        logging.getLogger("transface.test").info(message)
    setup_logging(tmp_path, rank=1)  # closes the file handler of the rank-0 setup
    text = (tmp_path / "training.log").read_text()
    assert "first run" in text and "second run" in text


def test_tensorboard_folder_that_is_a_symlink_is_refused(tmp_path):
    from utils.monitor import Scalars

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tensorboard").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="tensorboard' is a symlink"):
        Scalars(tmp_path, tensorboard=True)


@pytest.mark.parametrize("layout, message", [
    ("folder", "is a folder"),
    ("under_file", "cannot create folder"),
])
def test_an_unwritable_output_path_is_one_user_error(tmp_path, layout, message):
    if layout == "folder":
        (tmp_path / "emb.npy").mkdir()
        target = tmp_path / "emb.npy"
    else:
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "emb.npy"
    with pytest.raises(UserError, match=message):
        write_embeddings(target, np.ones((1, 2), dtype=np.float32), ["a"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_user_error(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="Permission denied"):
        write_embeddings(tmp_path / "ro" / "emb.npy", np.ones((1, 2), dtype=np.float32), ["a"])


def test_record_writer_that_fails_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), IndexedRecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, b"x" * 40)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_open_append_and_read_bytes_refuse_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(UserError, match="not a regular file"):
        read_bytes(tmp_path / "x.jpg", "image")
    with pytest.raises(UserError, match="not a regular file"):
        open_append(tmp_path / "x.jpg")


# ---- readers: regular files only, headers before allocation ----

@pytest.fixture
def no_hang():
    """Fail instead of hanging forever when a reader blocks on a FIFO (the bug this section guards)."""
    def alarm(*_):
        raise TimeoutError("a reader blocked on a FIFO")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_named_like_an_image_is_refused_by_every_folder_reader(tmp_path, no_hang):
    write_folder(tmp_path / "faces", [2, 2])
    os.mkfifo(tmp_path / "faces" / "person_1" / "x.jpg")
    with pytest.raises(UserError, match="x.jpg' is not a regular file"):
        pack_folder(tmp_path / "faces", tmp_path / "packed")
    with pytest.raises(UserError, match="x.jpg' is not a regular file"):
        ImageFolderDataset(tmp_path / "faces")
    with pytest.raises(UserError, match="x.jpg' is not a regular file"):
        list_images(tmp_path / "faces")
    with pytest.raises(UserError, match="x.jpg' is not a regular file"):
        load_face(tmp_path / "faces" / "person_1" / "x.jpg")


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header is rewritten to claim `width` x `height` pixels."""
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "imdecode", lambda *_: pytest.fail("decoded despite the header"))
    (tmp_path / "bomb.png").write_bytes(png_claiming(30000, 30000))
    with pytest.raises(UserError, match="claims 30000x30000 pixels"):
        load_face(tmp_path / "bomb.png")
    with pytest.raises(UserError, match="bomb.png. claims 30000x30000"):
        encode_file(str(tmp_path / "bomb.png"), EncodeOptions())
    with pytest.raises(UserError, match="image 1 of .set.bin. claims 30000x30000"):
        decode_bin_images([png_claiming(112, 112), png_claiming(30000, 30000)], source="set.bin")


def test_training_refuses_a_wrong_size_from_the_header_before_decoding(tmp_path, monkeypatch):
    write_folder(tmp_path / "faces", [2])
    dataset = ImageFolderDataset(tmp_path / "faces")
    (tmp_path / "faces" / "person_0" / "01.png").write_bytes(png_claiming(30000, 30000))
    monkeypatch.setattr(dataset_module, "decode_chw", lambda *_: pytest.fail("decoded despite the header"))
    with pytest.raises(DataError, match="01.png' is 30000x30000, not 112x112"):
        dataset[1]


def test_the_first_image_checked_at_construction_is_not_decoded(tmp_path, monkeypatch):
    """Regression: the size check of the first image at construction decoded it in full, a bomb too."""
    write_folder(tmp_path / "faces", [2])
    (tmp_path / "faces" / "person_0" / "00.png").write_bytes(png_claiming(12000, 11000))
    monkeypatch.setattr(cv2, "imdecode", lambda *_: pytest.fail("decoded despite the header"))
    with pytest.raises(UserError, match="00.png' is 12000x11000, not 112x112"):
        ImageFolderDataset(tmp_path / "faces")


def test_image_size_of_reads_jpeg_png_and_other_headers():
    for suffix in (".jpg", ".png", ".bmp", ".webp"):
        assert image_size_of(cv2.imencode(suffix, np.zeros((50, 70, 3), np.uint8))[1].tobytes()) == (70, 50)
    assert image_size_of(b"not an image") is None


def bin_pickle(images_code: bytes, num_pairs: int) -> bytes:
    """A protocol-2 .bin pickle: `images_code` builds the image list, then `num_pairs` True labels."""
    labels = b"]" + (b"(" + b"\x88" * num_pairs + b"e" if num_pairs else b"")
    return b"\x80\x02(" + images_code + labels + b"t."


def test_a_bin_repeating_one_image_by_reference_is_refused_before_decoding(tmp_path):
    image = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    num_images = 20_000  # 40 KB of pickle; decoding would allocate 750 MB
    one = b"T" + struct.pack("<i", len(image)) + image + b"q\x01"  # BINSTRING, then memo slot 1
    images = b"](" + one + b"h\x01" * (num_images - 1) + b"e"  # BINGET 1 for every other image
    (tmp_path / "hostile.bin").write_bytes(bin_pickle(images, num_images // 2))
    with pytest.raises(UserError, match="refers to the same image data many times"):
        load_bin(tmp_path / "hostile.bin")


def test_a_bin_with_no_pairs_is_one_user_error(tmp_path):
    (tmp_path / "empty.bin").write_bytes(bin_pickle(b"]", 0))
    with pytest.raises(UserError, match="holds no pairs"):
        load_bin(tmp_path / "empty.bin")


def _small_bin(path: Path, issame: list[bool]) -> None:
    image = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    save_bin(path, [image] * (2 * len(issame)), issame)


@pytest.mark.parametrize("issame, message", [
    ([True, False] * 2, "at least 10 pairs"),
    ([True] * 12, "only genuine pairs"),
])
def test_an_unusable_verification_set_stops_training_before_step_1(tmp_path, issame, message, capsys):
    from tests.test_train import write_config

    write_folder(tmp_path / "faces", [4, 4])
    _small_bin(tmp_path / "faces" / "lfw.bin", issame)
    config = write_config(tmp_path, tmp_path / "faces", val_targets=("lfw",), num_epoch=1)
    assert train.main([str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoints").exists()


# ---- values checked where they enter ----

@pytest.mark.parametrize("row, message", [
    ("2.jpg nan 60.0 80.0 60.0 60.0 80.0 45.0 95.0 75.0 95.0 0.5", "line 2: expected"),
    ("2.jpg 40.0 60.0 inf 60.0 60.0 80.0 45.0 95.0 75.0 95.0 0.5", "line 2: expected"),
    ("2.jpg 40.0 60.0 40.0 60.0 40.0 60.0 40.0 60.0 40.0 60.0 0.5", "landmarks of '2.jpg' are within 0 pixels"),
    ("2.jpg 40.0 60.0 80.0 60.0 60.0 80.0 45.0 95.0 75.0 95.0 nan", "line 2: expected"),
    ("2.jpg 40.0 60.0 80.0 60.0 60.0 80.0 45.0 95.0 75.0 95.0 1.5", "faceness score of '2.jpg' is 1.5"),
])
def test_ijb_landmarks_and_faceness_are_checked_naming_the_image(tmp_path, row, message):
    paths = MetaPaths.of(tmp_path, "IJBC")
    paths.landmarks.parent.mkdir(parents=True)
    paths.landmarks.write_text("1.jpg 46.0 62.0 87.7 60.3 68.8 77.6 52.1 99.8 86.4 98.6 0.999\n" + row + "\n")
    paths.media.write_text("1.jpg 1 10\n2.jpg 1 11\n")
    with pytest.raises(UserError, match=message):
        read_image_meta(paths)


@pytest.mark.parametrize("text, message", [
    ("1,2,3,4,5,6,7,8,9,nan", "landmarks of 'b.jpg' are not finite"),
    ("5,5,5,5,5,5,5,5,5,5", "landmarks of 'b.jpg' are within 0 pixels"),
])
def test_inference_landmarks_are_checked_naming_the_image(text, message):
    args = build_parser().parse_args(["a.jpg", "b.jpg", "--landmarks", "38,51,73,51,56,71,41,92,70,92",
                                      "--landmarks", text])
    with pytest.raises(UserError, match=message):
        collect_landmarks(args, ["a.jpg", "b.jpg"])


@pytest.mark.parametrize("labels, kind", [((1, 1), "genuine"), ((0, 0), "impostor")])
def test_a_pair_file_without_both_kinds_of_pairs_is_refused(tmp_path, labels, kind):
    (tmp_path / "pairs.txt").write_text("".join(f"1 {2 + i} {label}\n" for i, label in enumerate(labels)))
    with pytest.raises(UserError, match=f"holds only {kind}"):
        read_pairs(tmp_path / "pairs.txt")


def _rec(folder: Path, labels: list[float], num_classes: int | None = None, identities: bool = True) -> None:
    """insightface's layout: header, images with `labels`, identity records (unless `identities` is False);
    the header claims `num_classes` identities (default: as many as the labels name)."""
    num_classes = num_classes or int(max(labels)) + 1
    image = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    first = len(labels) + 1
    folder.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        writer.write(0, pack(IRHeader(0, (first, first + num_classes), 0, 0)))
        for key, label in enumerate(labels, start=1):
            writer.write(key, pack(IRHeader(0, label, key, 0), image))
        for label in range(num_classes if identities else 0):
            writer.write(first + label, pack(IRHeader(0, (1, 2), 0, 0)))


def test_a_header_claiming_identities_without_records_is_refused(tmp_path):
    _rec(tmp_path / "data", [0.0, 1.0], num_classes=100_000, identities=False)
    with pytest.raises(UserError, match="claims 100000 identity records"):
        RecordDataset(tmp_path / "data")
    with pytest.raises(UserError, match="claims 100000 identity records"):
        shuffle_records(tmp_path / "data", tmp_path / "shuffled")
    assert not (tmp_path / "shuffled" / "property").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.5])
def test_labels_that_are_not_whole_numbers_are_one_line_errors(tmp_path, bad):
    _rec(tmp_path / "data", [0.0, bad, 1.0], num_classes=2)
    with pytest.raises(UserError, match=f"record key 2 .*has label {bad}, not a whole class number"):
        shuffle_records(tmp_path / "data", tmp_path / "shuffled")
    num_written, skipped = unpack_records(tmp_path / "data", tmp_path / "unpacked")
    assert num_written == 2 and "record key 2 has label" in skipped[0]
    data = RecordDataset(tmp_path / "data", max_corrupt_fraction=0.0)
    with pytest.raises(DataError, match="record key 2 .*not a whole class number"):
        data[1]


def test_an_empty_or_truncated_index_is_blamed_not_the_header(tmp_path):
    _rec(tmp_path / "data", [0.0, 1.0])
    index = (tmp_path / "data" / "train.idx").read_text().splitlines(keepends=True)
    (tmp_path / "data" / "train.idx").write_text("".join(index[:3]))  # header and the two images
    with pytest.raises(UserError, match="key 3 is not in .*train.idx.*the index is truncated"):
        RecordDataset(tmp_path / "data")
    (tmp_path / "data" / "train.idx").write_text("")
    with pytest.raises(UserError, match="train.idx' lists no records"):
        RecordDataset(tmp_path / "data")


@pytest.mark.parametrize("content, what", [
    (b"\xff\xfe1,112,112", "property file"),
])
def test_a_non_utf8_property_file_is_one_line(tmp_path, content, what):
    _rec(tmp_path / "data", [0.0, 1.0])
    (tmp_path / "data" / "property").write_bytes(content)
    with pytest.raises(UserError, match=f"{what} .* is not UTF-8 text"):
        RecordDataset(tmp_path / "data")


def test_non_utf8_pairs_and_landmarks_files_are_one_line(tmp_path):
    (tmp_path / "pairs.txt").write_bytes(b"a.jpg b.jpg 1\n\xe9.jpg c.jpg 0\n")
    with pytest.raises(UserError, match="pairs file .* is not UTF-8 text"):
        make_bin.read_pairs(tmp_path / "pairs.txt")
    (tmp_path / "landmarks.txt").write_bytes(b"\xe9.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(UserError, match="landmarks file .* is not UTF-8 text"):
        read_landmarks_file(tmp_path / "landmarks.txt", ["a.jpg"])


def _config(tmp_path: Path, text: str = "", **values) -> Path:
    path = tmp_path / "exp.py"
    body = ", ".join(f"{key}={value!r}" for key, value in {"output": str(tmp_path / "out"), **values}.items())
    path.write_text(f"from easydict import EasyDict\n{text}\nconfig = EasyDict({body})\n")
    return path


@pytest.mark.parametrize("override, message", [
    ("lr=1e999", "key 'lr' must be a finite number"),
    ("lr=float('nan')", "key 'lr' must be a finite number"),
    ("seed=-1", "key 'seed' is -1; it must be in"),
    (f"seed={2**64}", "key 'seed' is 18446744073709551616; it must be in"),
    ("output=''", "key 'output' is ''; it must be a folder path"),
])
def test_config_values_are_checked_where_they_enter(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_config(_config(tmp_path), [override])


def test_a_config_that_calls_sys_exit_is_exit_2_naming_the_file(tmp_path, capsys):
    config = _config(tmp_path, "import sys\nsys.exit(0)")
    assert train.main([str(config)]) == 2
    assert f"config file '{config}' called sys.exit(0)" in capsys.readouterr().err


def test_a_config_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(UserError, match="config file '.*' is a folder"):
        load_config(tmp_path)


def test_max_steps_below_one_is_exit_2(tmp_path, capsys):
    assert train.main([str(_config(tmp_path)), "--max-steps", "-5"]) == 2
    assert "--max-steps must be at least 1" in capsys.readouterr().err


def test_verification_batch_size_zero_is_exit_2(tmp_path, capsys):
    assert verification.main(["--model-prefix", "m.pt", "--network", "vit_nano", "--bins", "x.bin",
                              "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer" in capsys.readouterr().err


# ---- the output folder's owner, resume identity, checkpoint checksums, temporaries ----

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_run(tmp_path):
    """A folder dataset of 2 identities x 4 images (one step per epoch) and its config."""
    from tests.test_train import write_config

    write_folder(tmp_path / "faces", [4, 4])
    return tmp_path / "faces", write_config(tmp_path, tmp_path / "faces", num_epoch=3)


def test_a_second_run_on_a_locked_output_exits_2_naming_the_holder(tmp_path, small_run):
    _, config = small_run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from utils.output import claim_output; "
         "lock = claim_output(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(tmp_path / "out")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "train.py", str(config), "--max-steps", "1"], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert f"is in use by another training run (PID {holder.pid} on host {socket.gethostname()})" in second.stderr
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "config.json").exists()


def test_checkpoints_that_is_a_file_stops_before_any_work(tmp_path, small_run, capsys):
    _, config = small_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("not a folder")
    assert train.main([str(config), "--max-steps", "1"]) == 2
    assert "checkpoints' is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "training.log").exists()


def test_resume_refuses_changed_data_or_seed_unless_allowed(tmp_path, small_run, capsys):
    faces, config = small_run
    assert train.main([str(config), "--max-steps", "1"]) == 0
    assert train.main([str(config), "--resume", "auto", "--set", "seed=8"]) == 2
    assert "seed 7 -> 8" in capsys.readouterr().err
    shutil.copy(faces / "person_0" / "00.png", faces / "person_0" / "added.png")
    assert train.main([str(config), "--resume", "auto", "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "num_image 8 -> 9" in err and "fingerprint 'folder sha256" in err and "resume_allow_change" in err
    assert train.main([str(config), "--resume", "auto", "--max-steps", "2", "--set", "resume_allow_change=True"]) == 0
    assert "RESUMING WITH CHANGED DATA OR SEED" in (tmp_path / "out" / "training.log").read_text()


def test_a_flipped_bit_in_a_checkpoint_falls_back_to_the_previous_one(tmp_path, small_run):
    _, config = small_run
    assert train.main([str(config), "--max-steps", "2"]) == 0
    newest = tmp_path / "out" / "checkpoints" / "step_000000002" / "common.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    assert train.main([str(config), "--resume", "auto", "--max-steps", "3"]) == 0
    log_text = (tmp_path / "out" / "training.log").read_text()
    assert "ChecksumMismatch" in log_text and "trying an older one" in log_text
    assert "resumed at step 1" in log_text


def test_a_world_size_marker_of_zero_falls_back_to_the_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, rank=0, world_size=1)
    for step in (1, 2):
        manager.save(step, {"step": step}, {"part": step})
    (manager.step_dir(2) / "world_size").write_text("0")
    common, parts = manager.load_latest()
    assert common["step"] == 1 and parts[0]["part"] == 1


def test_stale_temporaries_are_removed_at_start_up(tmp_path, small_run):
    _, config = small_run
    step = tmp_path / "out" / "checkpoints" / "step_000000009"
    step.mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    writer = f"{int(ended.stdout)}@{socket.gethostname()}"  # a process that has ended
    stale = [tmp_path / "out" / f".config.json.{writer}.{'1' * 16}.tmp", step / f".common.pt.{writer}.{'2' * 16}.tmp",
             step / f".rank_00000.pt.{writer}.{'3' * 16}.tmp"]
    for path in stale:
        path.write_bytes(b"partial")  # what kill -9 during the first save leaves
    assert train.main([str(config), "--resume", "auto", "--max-steps", "1"]) == 0
    assert not any(path.exists() for path in stale)
    assert "removed 3 temporary files" in (tmp_path / "out" / "training.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_during_a_save_leaves_no_temporary(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        manager = CheckpointManager(disk, rank=0, world_size=1)
        with pytest.raises(UserError, match="No space left on device"):
            manager.save(1, {"weights": torch.zeros(1_000_000)}, {})  # 4 MB on a 1 MB disk
        assert [path.name for path in disk.rglob("*.tmp")] == []
        assert manager.load_latest() is None  # the torn folder is not a checkpoint
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_run_whose_output_was_deleted_and_relocked_stops_before_its_next_checkpoint(tmp_path):
    """Regression: `rm -rf O` under a live run, then a second run on O: both finished in one folder."""
    from utils.output import claim_output

    first = claim_output(tmp_path / "out")
    first.check_still_owner()  # nothing happened yet
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(UserError, match="run.lock' of this run was removed"):
        train._check_still_owner(first, train.distributed.DistContext(0, 0, 1, torch.device("cpu")))
    second = claim_output(tmp_path / "out")  # the new lock file: another inode
    try:
        with pytest.raises(UserError, match="run.lock' of this run was replaced"):
            first.check_still_owner()
        second.check_still_owner()
    finally:
        first.release()
        second.release()


def test_a_lock_held_by_another_process_is_not_reported_as_the_stale_run_it_names(tmp_path):
    from utils.output import claim_output

    claim_output(tmp_path / "out").release()  # the file now names this process...
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out" / "run.lock").write_text(f"PID {int(ended.stdout)} on host {socket.gethostname()}\n")
    holder = subprocess.Popen(  # ...but a plain flock, not a training run, holds it
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(120)", str(tmp_path / "out" / "run.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"not a training run of this project .*PID {int(ended.stdout)}.*ended"):
            claim_output(tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="the kernel's lock table is Linux's /proc/locks")
def test_a_lock_held_by_another_process_is_not_reported_as_the_live_process_the_file_names(tmp_path):
    """Regression: the file named a live process that is not the holder (a reused PID), and the refusal
    called that process a training run."""
    from utils.output import claim_output

    claim_output(tmp_path / "out").release()
    bystander = subprocess.Popen(["sleep", "120"])  # alive, on this host, holds nothing
    (tmp_path / "out" / "run.lock").write_text(f"PID {bystander.pid} on host {socket.gethostname()}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(120)", str(tmp_path / "out" / "run.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as refused:
            claim_output(tmp_path / "out")
    finally:
        for process in (holder, bystander):
            process.kill()
            process.wait()
    message = str(refused.value)
    assert f"not a training run of this project (PID {holder.pid} (" in message and "-c import fcntl" in message
    assert f"the lock file names PID {bystander.pid} on host" in message and "training run (PID" not in message
