"""Issue 19: no output follows a planted symlink or stays partial, readers take only regular files, hostile
headers are refused before large allocations, and values are checked where they enter."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from tests.test_data_tools import write_folder
from tools import make_bin
from tools.inference import write_embeddings
from tools.pack_rec import pack_folder
from utils.errors import UserError
from utils.files import open_append, read_bytes
from utils.monitor import setup_logging
from utils.recordio import IndexedRecordWriter


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
        Scalars(tmp_path, enabled=True)


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
