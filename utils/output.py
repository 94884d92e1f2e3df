"""The run's output folder: one owner at a time (an exclusive lock held for the run's lifetime), checked
writable before any work, and cleared of the temporary files that killed runs left behind.

The lock is `fcntl.flock` on `<output>/run.lock`, taken by rank 0 (ranks share the folder); the kernel
releases it when the process ends, however it ends, so a killed run never leaves a stale lock. The file
itself stays and names the last holder (PID and host), which a second run reports when it is refused. The
file can be stale: when the kernel's lock table (/proc/locks, Linux) names another process as the holder, or
the process the file names has ended, something that is not a training run took the lock (`flock` of a
shell, another tool), and the refusal names that process instead of the stale run.

The holder proves it is still the owner before each checkpoint (`OutputLock.check_still_owner`): when the
folder or the lock file was removed or replaced (`rm -rf` of the output under a live run, and a second run
then locking a new file there), the two would mix checkpoints, so the holder stops with one line.
flock works on local file systems; on NFS it depends on the server (Linux NFS clients map it to POSIX locks).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from pathlib import Path

from utils.errors import UserError
from utils.files import make_folder, process_alive, remove_stale_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
PROC_LOCKS = "/proc/locks"  # the kernel's table of file locks and their holders (Linux)


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
            holders = _flock_holders(self._handle)  # before the text: a new holder writes it just after locking
            named = os.pread(self._handle, 200, 0).decode("utf-8", "replace").strip()
            os.close(self._handle)
            raise UserError(f"output folder '{output}' is {_describe_holder(named, holders)}; wait for it to "
                            "finish, or set another output (--set output=...).") from None
        os.ftruncate(self._handle, 0)
        os.pwrite(self._handle, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        info = os.fstat(self._handle)
        self._identity = (info.st_dev, info.st_ino)

    def check_still_owner(self) -> None:
        """UserError when `self.path` is no longer the file this lock holds (the folder or the lock file was
        removed or replaced while the run held it), so two runs never write one folder unnoticed."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
            identity = (info.st_dev, info.st_ino)
        except OSError:
            identity = None
        if identity != self._identity:
            what = "removed" if identity is None else "replaced"
            raise UserError(f"the lock file '{self.path}' of this run was {what} while the run held it "
                            "(the output folder was deleted or replaced); stopping before "
                            "this checkpoint so two runs never mix their files: set another output, then resume.")

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops the flock
            self._handle = None


def _flock_holders(handle: int) -> list[int] | None:
    """The PIDs holding a flock on the file open at `handle`, from the kernel's lock table; None where there
    is none to read (not Linux). Empty when the table does not list the file (a network file system, or the
    holder just let go). A PID of another PID namespace reads as 0 and is left out."""
    info = os.fstat(handle)
    file_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        table = Path(PROC_LOCKS).read_text().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 17092 fe:00:2163058 0 EOF"; a waiter's line has "->" after its number.
    rows = [line.split() for line in table]
    return [int(row[4]) for row in rows if len(row) >= 6 and row[1] == "FLOCK" and row[5] == file_id
            and row[4].isdigit() and int(row[4]) > 0]


def _command_of(pid: int) -> str:
    """`PID <pid>` and, where /proc shows it, its command line (shortened), e.g. `PID 812 (flock out/run.lock sh)`."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"PID {pid}"
    command = " ".join(word.decode("utf-8", "replace") for word in words if word)
    return f"PID {pid} ({command[:77] + '...' if len(command) > 80 else command})" if command else f"PID {pid}"


def _describe_holder(named: str, holders: list[int] | None) -> str:
    """What holds a lock: the training run the lock file names (`PID <pid> on host <host>`, written by each
    holder), unless the kernel names another holder (`holders`, see _flock_holders) or that run has ended."""
    match = re.fullmatch(r"PID (\d+) on host (\S+)", named)
    local = match is not None and match.group(2) == socket.gethostname()
    named_pid = int(match.group(1)) if local else None
    file_says = f"the lock file names {named}" if match else "the lock file names none"
    if holders and named_pid not in holders:
        ended = ", which has ended" if named_pid is not None and not process_alive(named_pid) else ""
        return (f"locked by a process that is not a training run of this project ({_command_of(holders[0])}; "
                f"{file_says}{ended})")
    if match is None:
        return f"locked by a process that is not a training run of this project ({file_says})"
    if named_pid is not None and not process_alive(named_pid):
        return f"locked by a process that is not a training run of this project ({file_says}, which has ended)"
    return f"in use by another training run ({named})"


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
