"""The one way this project writes a file: whole or not at all, never through a planted symlink.

Every output (checkpoints, model.pt, config.json, evaluation results, ONNX files, packed data, embeddings) goes
through `atomic_write`: the bytes go to a temporary file created exclusively (O_EXCL, so a planted file or
symlink is never followed) in the destination's folder, are flushed and fsynced, get the permissions the
user's umask gives a new file, and are renamed over the destination, which replaces a symlink there instead of
writing through it. On any failure (full disk, Ctrl-C) the temporary file is removed and the destination is
left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask; os.umask can only be read by setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_prefix(path: Path) -> str:
    """The name prefix of `path`'s temporary files (hidden, so folder readers skip them)."""
    return f".{path.name}."


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces `path` when the block ends without an exception.

    Raises whatever the file system raises (missing folder, no space, read-only); the temporary file is
    removed then and `path` is untouched.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; a file the user writes gets their umask
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(binary file object)` and put the result at `path` atomically (see the module docstring)."""
    with atomic_open(path) as stream:
        write(stream)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 at `path`, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) to `path`, atomically."""
    atomic_write(path, lambda stream: torch.save(obj, stream))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left in `folder`; returns what was removed.

    Only names this module makes (`.<name>.<random>.tmp`) are touched; call it only where no other process
    is writing into `folder` at the same time.
    """
    removed = []
    for candidate in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if candidate.is_file() and not candidate.is_symlink():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
