"""utils.files: the one atomic write every output goes through."""

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.errors import UserError
from utils.files import (
    ChecksumMismatch,
    atomic_save,
    atomic_write,
    atomic_write_text,
    check_weights_file,
    checksum_path,
    remove_stale_temporaries,
    verify_checksum,
)


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


def test_a_temporary_a_live_process_is_writing_is_kept(tmp_path):
    """Regression: a starting run deleted the temporary file of an export writing into its output."""
    script = ("import os, sys, time; from utils.files import atomic_write; "
              "atomic_write(sys.argv[1], lambda s: (s.write(b'x'), s.flush(), print('writing', flush=True), "
              "time.sleep(120)))")
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m.onnx")],
                              cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        (tmp_path / ".legacy.pt.abc123.tmp").write_bytes(b"no writer named")
        assert remove_stale_temporaries(tmp_path) == []
        assert len(list(tmp_path.glob(".m.onnx.*.tmp"))) == 1
    finally:
        writer.kill()
        writer.wait()
    assert [p.name.startswith(".m.onnx.") for p in remove_stale_temporaries(tmp_path)] == [True]


def test_a_weight_file_and_its_checksum_round_trip_and_a_flipped_bit_is_caught(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"w": torch.arange(100.0)}, path)
    assert verify_checksum(path) and verify_checksum(path, path.read_bytes())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="model.pt' has SHA-256 .* its checksum file records"):
        verify_checksum(path)


def test_the_checksum_is_in_place_before_the_data_file(tmp_path, monkeypatch):
    """A kill between the two renames must never leave a data file without its checksum."""
    replaced = []
    real_replace = os.replace

    def record(source, destination):
        replaced.append(Path(destination).name)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", record)
    atomic_write(tmp_path / "rank_00000.pt", lambda stream: stream.write(b"weights"), checksum=True)
    assert replaced == ["rank_00000.pt.sha256", "rank_00000.pt"]
    assert checksum_path(tmp_path / "rank_00000.pt").read_text().strip() == hashlib.sha256(b"weights").hexdigest()


def test_a_file_without_a_checksum_loads_unverified_with_one_warning(tmp_path, caplog):
    path = tmp_path / "released.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert check_weights_file(path) is False
    assert [r.getMessage() for r in caplog.records if "unverified" in r.getMessage()] == [
        f"weights file '{path}' has no checksum file 'released.pt.sha256' (a released or third-party file): "
        "loading it unverified"]
