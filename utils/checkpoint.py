"""The one owner of training checkpoints: atomic writes, retention, and finding the newest complete one.

A checkpoint is a folder `<output>/checkpoints/step_<N>/` holding
  world_size      written first by rank 0: how many rank files make the checkpoint complete;
  common.pt       written by rank 0: backbone, its optimizer, scaler, step, world size, config;
  rank_<r>.pt     written by every rank: its class-centre shard, that shard's optimizer state and the
                  rank's random states;
  <file>.sha256   beside each .pt: the SHA-256 of its bytes, checked on load, so a file damaged on disk
                  (a flipped bit) is treated like a torn one instead of resuming with corrupt weights.
Every file is written to a temporary name and renamed, so a file that exists is whole; a .pt and its checksum
are one unit: the checksum is renamed into place first (utils.files.atomic_write with checksum=True), so a
part without its checksum is a save a kill interrupted, and its folder is incomplete. Saving needs no
collective, so every rank can save on preemption. Loading tries folders newest first; all ranks must load
their part of a folder (they agree through a collective) or all move on to the previous one, so a torn or
truncated checkpoint is skipped consistently. Folders must be on a file system every rank sees.
Files are memory-mapped on load (no in-memory copy); when the world size changed, each rank maps only the
saved rank files whose classes overlap its new range and copies only those rows (PartialFC.load_resharded).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError
from utils.files import ChecksumMismatch, atomic_write, atomic_write_text, checksum_path, verify_checksum

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state(generators: dict[str, torch.Generator] | None = None,
              device: torch.device | None = None) -> dict[str, Any]:
    """Every random state of this process: Python, NumPy, torch, this rank's CUDA device, named generators."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # NumPy's key array travels as a tensor so the file loads with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None,
                  device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, generator in (generators or {}).items():
        if name in state["generators"]:
            generator.set_state(state["generators"][name])


def _save(obj: dict[str, Any], path: Path) -> None:
    """torch.save `obj` atomically with its SHA-256: `<name>.sha256` is renamed into place before the data
    file (utils.files.atomic_write with checksum=True), so a data file never stands without its checksum."""
    atomic_write(path, lambda stream: torch.save(obj, stream), checksum=True)


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint file, memory-mapped, after checking its bytes against the saved SHA-256
    (ChecksumMismatch if they differ, or if the checksum file is missing: a part without one is not complete).

    The checksum streams the file once through the page cache; the load then maps the same pages
    (torch.load mmap=True, weights_only=True): tensors are views of the file, read when touched, so no
    in-memory copy of the file is made and a caller that slices a tensor reads only those pages.
    """
    if not verify_checksum(path):
        raise ChecksumMismatch(f"{path} has no checksum file {checksum_path(path).name} (a save that was "
                               "interrupted)")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


class CheckpointManager:
    """Decides when to save, and saves, prunes and finds checkpoints under `<output>/checkpoints`.

    Args:
        output: the run's output folder.
        rank, world_size: this process in the run.
        keep_last: complete checkpoints kept; older ones are deleted after each save.
        save_every: also save after every this many optimizer steps (0: only at the points below).
        epoch_ends: save at the end of every epoch (the caller says when one ends: `is_due(epoch_end=...)`).
    """

    def __init__(self, output: str | Path, rank: int, world_size: int, keep_last: int = 3, *,
                 save_every: int = 0, epoch_ends: bool = False):
        self.root = Path(output) / "checkpoints"
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.save_every = save_every
        self.epoch_ends = epoch_ends

    def is_due(self, step: int, last_step: int, stop: bool = False, epoch_end: bool = False) -> bool:
        """The save policy, after optimizer step `step`: on a stop request, at the run's last step, at the
        end of an epoch (`epoch_end`: the run's epoch counter says this step ended one; a step count cannot,
        since a resume with another global batch moves the epoch ends off multiples of any step count), and
        every `save_every` steps."""
        return (stop or step == last_step or (self.epoch_ends and epoch_end)
                or bool(self.save_every and step % self.save_every == 0))

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:09d}"

    def save(self, step: int, common: dict[str, Any], local: dict[str, Any]) -> Path:
        """Write this rank's part of the checkpoint of `step` (rank 0 also writes `common`)."""
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(folder / "world_size", str(self.world_size))
            _save({"schema": SCHEMA_VERSION, "world_size": self.world_size, **common}, folder / "common.pt")
        _save({"schema": SCHEMA_VERSION, "rank": self.rank, **local}, folder / f"rank_{self.rank:05d}.pt")
        if self.rank == 0:
            self._prune(keep=folder)
        return folder

    def has_checkpoints(self) -> bool:
        return bool(self._step_dirs())

    def _step_dirs(self) -> list[Path]:
        """Checkpoint folders, newest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    @staticmethod
    def _saved_world_size(folder: Path) -> int | None:
        """The marker's world size; None (an incomplete checkpoint) when it is missing, unreadable or < 1."""
        try:
            world_size = int((folder / "world_size").read_text())
        except (OSError, ValueError):
            return None
        return world_size if world_size >= 1 else None

    def _complete(self, folder: Path) -> bool:
        """Whether every part of the checkpoint in `folder` is there, each with its checksum file."""
        world_size = self._saved_world_size(folder)
        parts = [folder / "common.pt", *(folder / f"rank_{r:05d}.pt" for r in range(world_size or 0))]
        return world_size is not None and all(part.is_file() and checksum_path(part).is_file() for part in parts)

    def _prune(self, keep: Path) -> None:
        """Delete folders older than the newest `keep_last` complete ones. `keep`, just written by rank 0, is
        never deleted, and counts only once every rank has written its part."""
        kept = [p for p in self._step_dirs() if self._complete(p)][:self.keep_last]
        if len(kept) < self.keep_last:
            return
        for folder in self._step_dirs():
            if folder.name < kept[-1].name and folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _load_parts(self, folder: Path, needed_ranks: Callable[[int], Iterable[int]] | None
                    ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """(common, {rank: part}), memory-mapped: this rank's part only when the world size is unchanged,
        else the saved parts `needed_ranks(saved world size)` names (every part when it is None), whose
        class centres are then re-sharded."""
        if not self._complete(folder):
            raise FileNotFoundError(f"{folder} lacks files (a save that was interrupted)")
        saved_world = self._saved_world_size(folder)
        common = _load(folder / "common.pt")
        if saved_world == self.world_size:
            ranks = [self.rank]
        else:
            ranks = sorted(needed_ranks(saved_world)) if needed_ranks is not None else range(saved_world)
        return common, {r: _load(folder / f"rank_{r:05d}.pt") for r in ranks}

    def load_latest(self, all_agree: Callable[[bool], bool] = bool,
                    needed_ranks: Callable[[int], Iterable[int]] | None = None
                    ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]] | None:
        """(common, {rank: part}) of the newest checkpoint every rank can load, or None when there is none.

        `all_agree(ok)` must return True on every rank only if `ok` is True on every rank (a collective
        in a distributed run), so that all ranks resume from the same folder. When the checkpoint was
        saved by another number of ranks, `needed_ranks(saved_world_size)` names the saved rank files this
        rank reads (e.g. partial_fc.saved_ranks_overlapping); None reads them all. Every file is
        memory-mapped (see _load): its tensors are read from disk as they are touched.
        """
        folders = self._step_dirs()
        for folder in folders:
            try:
                loaded, problem = self._load_parts(folder, needed_ranks), None
            except Exception as exc:  # a torn or truncated file: every rank falls back together
                loaded, problem = None, f"{type(exc).__name__}: {exc}"
            if not all_agree(loaded is not None):
                log.warning("checkpoint %s is incomplete or unreadable (%s); trying an older one",
                            folder, problem or "on another rank")
                continue
            common, parts = loaded
            if common.get("schema") != SCHEMA_VERSION:
                raise UserError(f"checkpoint {folder} has schema {common.get('schema')}, this version reads "
                                f"{SCHEMA_VERSION}; resume it with the version that wrote it.")
            log.info("resuming from %s", folder)
            return common, parts
        # Folders with missing files are saves a crash interrupted; starting afresh is right. Folders whose
        # files are all there but do not load are damage a user must see.
        if any(self._complete(folder) for folder in folders):
            raise UserError(f"none of the {len(folders)} checkpoints in {self.root} could be loaded (see the "
                            "warnings above); remove that folder to start afresh, or restore a checkpoint.")
        if folders:
            log.warning("no checkpoint in %s was ever completed; starting from the beginning", self.root)
        return None

