"""The one way this project writes a file (whole or not at all, never through a planted symlink) and reads
an input file (regular files only, so a FIFO or device named like an input never blocks a reader).

Every output (checkpoints, model.pt, config.json, evaluation results, ONNX files, packed data, embeddings) goes
through `atomic_write`: the bytes go to a temporary file created exclusively (O_EXCL, so a planted file or
symlink is never followed) in the destination's folder, are flushed and fsynced, get the permissions the
user's umask gives a new file, and are renamed over the destination, which replaces a symlink there instead of
writing through it. On any failure (full disk, Ctrl-C) the temporary file is removed and the destination is
left as it was. A destination the user cannot write (a folder, a path under a file, a read-only folder, a
full disk) is a `UserError` naming the path. The two appended streams (training.log, TensorBoard events)
use `open_append`, which refuses a symlink or anything but a regular file at the path.

Readers use `read_bytes` / `read_text`, which open without blocking, refuse anything that is not a
regular file (after following symlinks, which users place on purpose for data) and say "is a folder"
rather than "does not exist" when that is the problem.

Weight files (checkpoint parts, model.pt, ONNX exports) are written with `checksum=True`: the SHA-256 of
the bytes, computed as they are written, goes to `<name>.sha256` under its final name *before* the data
file is renamed into place. So a data file the project wrote always has its checksum: a kill between the
two renames leaves a checksum without its data file (a new file) or beside the previous data file (a
replaced one), which `verify_checksum` reports as a mismatch, never as verified. Every loader calls
`verify_checksum` (through `check_weights_file` where a file without a checksum, a released model, may
load with one warning).

Temporary files are named `.<name>.<pid>@<host>.<random>.tmp`, so a starting run removes only those
whose writer on this host has ended (`remove_stale_temporaries`), never one another tool is writing.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from utils.errors import UserError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
CHECKSUM_SUFFIX = ".sha256"
_HASH_CHUNK = 1 << 22  # bytes read per step when hashing a file: 4 MiB, whatever the file's size
# `.<name>.<pid>@<host>.<random>.tmp`: the writer of a temporary file, so only an ended one's is removed.
_TEMPORARY_NAME = re.compile(r"^\..*\.(\d+)@([^/]*)\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")


def _umask() -> int:
    """The process umask; os.umask can only be read by setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_prefix(path: Path) -> str:
    """The name prefix of `path`'s temporary files (hidden, so folder readers skip them)."""
    return f".{path.name}."


def _host() -> str:
    """This machine's name as it can stand in a file name."""
    return socket.gethostname().replace("/", "_") or "unknown"


def _create_temporary(path: Path) -> tuple[int, Path]:
    """(descriptor, path) of a new temporary file beside `path`, created exclusively (mode 0600) and named
    after this process and host (see _TEMPORARY_NAME)."""
    while True:
        temporary = path.parent / (f"{temporary_prefix(path)}{os.getpid()}@{_host()}."
                                   f"{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), temporary
        except FileExistsError:
            continue


class _HashingWriter:
    """A write-only stream that feeds every byte to `digest` on its way to `stream` (one pass, no copy)."""

    def __init__(self, stream: IO[bytes], digest):
        self.stream, self.digest = stream, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of the weight file `path` is kept: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


@contextmanager
def atomic_open(path: str | os.PathLike, checksum: bool = False) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces `path` when the block ends without an exception.

    With `checksum`, the SHA-256 of everything written goes to `checksum_path(path)` (atomically) before
    the data file is renamed into place (see the module docstring). Raises UserError for what a user
    fixes (missing folder, no space, read-only); the temporary file is removed then and `path` is untouched.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"output '{path}' is a folder; give a file path.")
    try:
        handle, temporary = _create_temporary(path)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    digest = hashlib.sha256() if checksum else None
    try:
        with os.fdopen(handle, "wb") as stream:
            yield _HashingWriter(stream, digest) if checksum else stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # created 0600; a file the user writes gets their umask
        if checksum:
            atomic_write_text(checksum_path(path), digest.hexdigest() + "\n")
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        cause = _user_os_error(exc)
        if cause is not None:
            raise _unwritable(path, cause) from None
        raise


def _user_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError a user fixes behind `exc`, if any: torch.save, for one, turns a full disk's OSError into
    a RuntimeError whose context is the OSError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# Write failures a user fixes (a path, permissions, space), as opposed to faults of the program.
_USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENOSPC, errno.EDQUOT}


def _unwritable(path: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write '{path}' ({exc.strerror or exc}); choose a writable location, or free "
                     "space if the disk is full.")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], checksum: bool = False) -> None:
    """Call `write(binary file object)` and put the result at `path` atomically, with its SHA-256 beside it
    when `checksum` (see the module docstring)."""
    with atomic_open(path, checksum) as stream:
        write(stream)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, checksum: bool = False) -> None:
    atomic_write(path, lambda stream: stream.write(data), checksum)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) to `path`, atomically, with its SHA-256 in `<path>.sha256` (a weight file)."""
    import torch  # here, not at the top: writers of plain files (eval_ijbc --features) start without PyTorch

    atomic_write(path, lambda stream: torch.save(obj, stream), checksum=True)


class ChecksumMismatch(UserError):
    """A weight file whose bytes differ from those its writer recorded: damaged on disk, or torn."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of the file at `path`, read in 4 MiB pieces (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, data: bytes | None = None) -> bool:
    """Whether the weight file `path` has a checksum file (`checksum_path`); if it has, its bytes (`data`
    when the caller already read them, else read from disk) must match it.

    The one check of every weight file (checkpoint parts, model.pt, ONNX exports). Returns False when there
    is no checksum file (the caller decides: a checkpoint part is then incomplete, a released model loads
    unverified). Raises ChecksumMismatch (a UserError) naming the file and both digests.
    """
    path = Path(path)
    try:
        expected = checksum_path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError) as exc:
        raise ChecksumMismatch(f"the checksum file '{checksum_path(path)}' of '{path}' is unreadable ({exc}); "
                               "restore both files, or write them again.") from None
    actual = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    if actual != expected:
        raise ChecksumMismatch(f"'{path}' has SHA-256 {actual[:16]}..., but its checksum file records "
                               f"{expected[:16]}...: the file is damaged or was not written whole; restore it "
                               "or write it again.")
    return True


def check_weights_file(path: str | os.PathLike, what: str = "weights file") -> bool:
    """`verify_checksum` for a file a user names (--weights, --init, --onnx): a mismatch stops; a file
    without a checksum (a released or third-party model) loads with one warning. Returns whether it was
    verified."""
    verified = verify_checksum(path)
    if not verified:
        log.warning("%s '%s' has no checksum file '%s' (a released or third-party file): loading it unverified",
                    what, path, checksum_path(path).name)
    return verified


def open_append(path: str | os.PathLike) -> IO[str]:
    """A text stream appending to `path` (created with the user's umask), for logs that grow during a run.

    Opened with O_NOFOLLOW: a symlink planted at `path` is refused, not written through; so is anything
    that is not a regular file (a FIFO would block the run). Raises UserError naming the path.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        handle = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"'{path}' is a symlink; remove it, this run appends to a file of its own.") from None
        if exc.errno != errno.ENXIO:  # ENXIO: a FIFO without a reader, refused below like any non-file
            raise _unwritable(path, exc) from None
        handle = None
    if handle is None or not stat.S_ISREG(os.fstat(handle).st_mode):
        if handle is not None:
            os.close(handle)
        raise UserError(f"'{path}' is not a regular file; remove it, this run appends to a file of its own.")
    os.set_blocking(handle, True)
    return os.fdopen(handle, "a", encoding="utf-8")


def make_folder(path: str | os.PathLike) -> Path:
    """`path` created with its parents if missing; a path under a file or without permission is a UserError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder '{path}' ({exc.strerror or exc}); choose a writable location.") from None
    return path


def real_folder(path: str | os.PathLike) -> Path:
    """`path` as a folder this run writes into, created if missing; a symlink or a file there is a UserError
    (files created inside a planted symlink would land in its target)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"'{path}' is {'a symlink' if path.is_symlink() else 'not a folder'}; remove it or choose "
                        "another output.")
    return make_folder(path)


def read_bytes(path: str | os.PathLike, what: str = "input file", hint: str = "check the path") -> bytes:
    """The content of the regular file at `path` (symlinks followed).

    Raises UserError naming `what` and the path, ending with `hint`, when it is missing, a folder, or not a
    regular file (a FIFO or device is refused without blocking on it).
    """
    path = Path(path)
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise unreadable(path, what, exc, hint) from None
    with os.fdopen(handle, "rb") as stream:
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise UserError(f"{what} '{path}' is {kind}; {hint}.")
        os.set_blocking(handle, True)
        return stream.read()


def read_text(path: str | os.PathLike, what: str = "input file", hint: str = "check the path") -> str:
    """`read_bytes` decoded as UTF-8; a file in another encoding is a UserError naming the byte offset."""
    data = read_bytes(path, what, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None


def check_regular_file(path: str | os.PathLike, what: str, hint: str = "check the path") -> Path:
    """`path` if it is a regular file (symlinks followed); otherwise a UserError that says what it is."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise unreadable(path, what, exc, hint) from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UserError(f"{what} '{path}' is {kind}; {hint}.")
    return path


def unreadable(path: Path, what: str, exc: OSError, hint: str = "check the path") -> UserError:
    """The UserError for an input that cannot be opened: missing, a folder, or unreadable."""
    if exc.errno == errno.ENOENT:
        return UserError(f"{what} '{path}' does not exist; {hint}.")
    if exc.errno == errno.EISDIR or path.is_dir():
        return UserError(f"{what} '{path}' is a folder; {hint}.")
    return UserError(f"cannot read {what} '{path}' ({exc.strerror or exc}); {hint}.")


def cache_folder() -> Path:
    """This user's cache folder of the project: `$XDG_CACHE_HOME/transface`, else `~/.cache/transface`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transface"


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_writer_ended(path: Path) -> bool:
    """Whether `path` is a temporary file of this module whose writer, a process on this host, has ended.

    A temporary of another host, or of a name this module does not make, is never counted as ended.
    """
    match = _TEMPORARY_NAME.match(path.name)
    return bool(match) and match.group(2) == _host() and not process_alive(int(match.group(1)))


def remove_stale_temporaries(folder: str | os.PathLike, of: Path | None = None) -> list[Path]:
    """Delete the temporary files in `folder` whose writers have ended (killed); returns what was removed.

    Only names this module makes (`.<name>.<pid>@<host>.<random>.tmp`) whose process on this host is
    gone are touched, so a tool writing into `folder` right now (an export, an evaluation) keeps its file.
    With `of`, only the temporaries of that destination file.
    """
    removed = []
    pattern = f"{temporary_prefix(of)}*{TEMP_SUFFIX}" if of is not None else f".*{TEMP_SUFFIX}"
    for candidate in Path(folder).glob(pattern):
        if candidate.is_file() and not candidate.is_symlink() and temporary_writer_ended(candidate):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
