"""utils.files: the one atomic write every output goes through."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.errors import UserError
from utils.files import atomic_save, atomic_write, atomic_write_text, remove_stale_temporaries


def test_new_file_gets_the_permissions_of_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o640  # 0666 & ~0027; mkstemp alone gives 0600


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    (tmp_path / "config.json").symlink_to(target)
    atomic_write_text(tmp_path / "config.json", "ours")
    assert target.read_text() == "precious"
    assert not (tmp_path / "config.json").is_symlink()
    assert (tmp_path / "config.json").read_text() == "ours"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def write_half_then_fail(stream):
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left on device"):  # a full disk is the user's to fix
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_atomic_save_round_trips_with_weights_only(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "step": 7}
    atomic_save(state, tmp_path / "common.pt")
    loaded = torch.load(tmp_path / "common.pt", weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["weight"], state["weight"])


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    script = ("import os, sys; from utils.files import atomic_write; "
              "atomic_write(sys.argv[1], lambda s: (s.write(b'x'), s.flush(), os._exit(9)))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "rank_00000.pt")],
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 9
    (tmp_path / "keep.pt").write_bytes(b"k")
    (tmp_path / ".hidden_user_file").write_bytes(b"h")
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".rank_00000.pt.")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden_user_file", "keep.pt"]
