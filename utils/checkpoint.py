"""The one owner of training checkpoints: atomic writes, retention, and finding the newest complete one.

A checkpoint is a folder `<output>/checkpoints/step_<N>/` holding
  common.pt       written by rank 0: backbone, its optimizer, scaler, step, epoch, world size, config;
  rank_<r>.pt     written by every rank: its class-centre shard, that shard's optimizer state, the
                  rank's RNG states and data position.
Every file is written to a temporary name and renamed, so a file that exists is whole. A checkpoint is
complete when common.pt and one rank file per saved rank exist and load; a torn or truncated one is
skipped in favour of the previous. No collective is needed to save, so a rank can save on preemption.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state of this process: Python, NumPy, torch CPU and CUDA, and named generators."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # NumPy's key array travels as a tensor so the file loads with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        if name in state["generators"]:
            generator.set_state(state["generators"][name])


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointManager:
    """Saves, prunes and finds checkpoints under `<output>/checkpoints`."""

    def __init__(self, output: str | Path, rank: int, world_size: int, keep_last: int = 3):
        self.root = Path(output) / "checkpoints"
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last

    def step_dir(self, step: int) -> Path:
        return self.root / f"step_{step:09d}"

    def save(self, step: int, common: dict[str, Any], local: dict[str, Any]) -> Path:
        """Write this rank's part of the checkpoint of `step` (rank 0 also writes `common`)."""
        folder = self.step_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_save({"schema": SCHEMA_VERSION, "world_size": self.world_size, **common},
                        folder / "common.pt")
        atomic_save({"schema": SCHEMA_VERSION, "rank": self.rank, **local}, folder / f"rank_{self.rank:05d}.pt")
        if self.rank == 0:
            self._prune()
        return folder

    def _step_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    @staticmethod
    def _files_present(folder: Path) -> bool:
        common = folder / "common.pt"
        if not common.is_file():
            return False
        ranks = sorted(folder.glob("rank_*.pt"))
        return bool(ranks) and ranks[-1].name == f"rank_{len(ranks) - 1:05d}.pt"

    def _prune(self) -> None:
        """Delete checkpoints older than the newest `keep_last` whose files are all present."""
        complete = [p for p in self._step_dirs() if self._files_present(p)]
        if len(complete) < self.keep_last:
            return
        oldest_kept = int(_STEP_DIR.match(complete[self.keep_last - 1].name).group(1))
        for folder in self._step_dirs():
            if int(_STEP_DIR.match(folder.name).group(1)) < oldest_kept:
                shutil.rmtree(folder, ignore_errors=True)

    def has_checkpoints(self) -> bool:
        return bool(self._step_dirs())

    def load_latest(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(common, every rank's part) of the newest checkpoint that loads whole, or None."""
        for folder in self._step_dirs():
            try:
                common = _load(folder / "common.pt")
                saved_world = int(common["world_size"])
                parts = [_load(folder / f"rank_{r:05d}.pt") for r in range(saved_world)]
            except Exception as exc:  # a torn or truncated checkpoint: fall back to the previous one
                log.warning("checkpoint %s is incomplete or unreadable (%s: %s); trying an older one",
                            folder, type(exc).__name__, exc)
                continue
            if common.get("schema") != SCHEMA_VERSION:
                raise UserError(f"checkpoint {folder} has schema {common.get('schema')}, this version reads "
                                f"{SCHEMA_VERSION}; resume it with the version that wrote it.")
            log.info("resuming from %s", folder)
            return common, parts
        return None
