"""The run's output folder: one owner at a time (an exclusive lock held for the run's lifetime), checked
writable before any work, and cleared of the temporary files that killed runs left behind.

The lock is `fcntl.flock` on `<output>/run.lock`, taken by rank 0 (ranks share the folder); the kernel
releases it when the process ends, however it ends, so a killed run never leaves a stale lock. The file
itself stays and names the last holder (PID and host), which a second run reports when it is refused.
flock works on local file systems; on NFS it depends on the server (Linux NFS clients map it to POSIX locks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from utils.errors import UserError
from utils.files import make_folder, remove_stale_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class OutputLock:
    """The exclusive lock of one output folder; `release()` (or process exit) frees it."""

    def __init__(self, output: str | Path):
        self.path = Path(output) / LOCK_NAME
        try:
            self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UserError(f"cannot create the lock file '{self.path}' ({exc.strerror or exc}); the output "
                            "folder must be writable and the lock file a regular file.") from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._handle, 200, 0).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(self._handle)
            raise UserError(f"output folder '{output}' is in use by another training run ({holder}); wait for "
                            "it to finish, or set another output (--set output=...).") from None
        os.ftruncate(self._handle, 0)
        os.pwrite(self._handle, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops the flock
            self._handle = None


def claim_output(output: str | Path) -> OutputLock:
    """Make `output` a folder this process owns, before any work: UserError when another run holds it, it or
    `output/checkpoints` is not a folder, or nothing can be written there."""
    output = make_folder(output)
    checkpoints = output / "checkpoints"
    if checkpoints.is_symlink() or (checkpoints.exists() and not checkpoints.is_dir()):
        raise UserError(f"'{checkpoints}' is not a folder; move it away so checkpoints can be saved there.")
    return OutputLock(output)  # creating the lock file proves the folder writable


def clean_stale_temporaries(output: str | Path) -> list[Path]:
    """Remove the temporary files killed runs left in `output`, `output/checkpoints` and its step folders;
    call only while holding the output's lock (no other writer can be active). Returns what was removed."""
    output = Path(output)
    folders = [output, output / "checkpoints"]
    if folders[1].is_dir():
        folders += [path for path in folders[1].iterdir() if path.is_dir() and not path.is_symlink()]
    removed = [path for folder in folders for path in remove_stale_temporaries(folder)]
    if removed:
        log.warning("removed %d temporary files of an interrupted run: %s", len(removed),
                    ", ".join(str(path) for path in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed
