"""Peak host memory of one rank resuming on another world size: row-sliced re-sharding against joining.

Builds the rank files of a run of --saved-world processes (class centres and both AdamW moments of each
shard, [C_r, D] float32, written one shard at a time under --root), then measures in a fresh subprocess
the peak resident memory (VmHWM above the process before loading) of rank 0 of --world processes:

  ours    CheckpointManager.load_latest(needed_ranks=saved_ranks_overlapping) memory-maps the overlapping
          files; their rows are copied with copy_overlapping_rows / add_optimizer_rows (what
          PartialFC.load_resharded does, without a process group), one saved shard released at a time.
  joined  the previous path: every saved file read into memory and deserialised, every tensor joined into
          the full [num_classes, D] matrix and this rank's rows cut out of it (run only where the machine
          holds it: --joined-max-classes).

    python -m bench.bench_reshard --classes 360232 1000000 2059906 --saved-world 16 --world 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from partial_fc import (
    add_optimizer_rows,
    class_range,
    copy_overlapping_rows,
    init_class_centres,
    saved_ranks_overlapping,
)
from utils.checkpoint import CheckpointManager

STEP = 1


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def build(root: Path, num_classes: int, embedding_size: int, saved_world: int) -> None:
    """The checkpoint of a `saved_world`-process run, one shard in memory at a time."""
    for rank in range(saved_world):
        start, stop = class_range(num_classes, rank, saved_world)
        weight = init_class_centres(num_classes, embedding_size, start, stop)  # [C_r, D]
        head = {"weight": weight,
                "_extra_state": {"num_classes": num_classes, "class_start": start, "class_stop": stop}}
        optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": weight * 0.5, "exp_avg_sq": weight ** 2}},
                     "param_groups": [{"lr": 1e-3, "weight_decay": 0.1, "params": [0]}]}
        CheckpointManager(root, rank, saved_world).save(STEP, {"backbone": torch.zeros(1)},
                                                        {"head": head, "head_optimizer": optimizer})
        del weight, head, optimizer


def _ours(root: Path, num_classes: int, embedding_size: int, rank: int, world: int) -> None:
    start, stop = class_range(num_classes, rank, world)
    weight = torch.zeros(stop - start, embedding_size)  # the new shard's parameter, built before restore
    _, parts = CheckpointManager(root, rank, world).load_latest(
        needed_ranks=lambda saved_world: saved_ranks_overlapping(num_classes, saved_world, rank, world))
    state = None
    for saved_rank in sorted(parts):
        part = parts.pop(saved_rank)
        saved_start = part["head"]["_extra_state"]["class_start"]
        copy_overlapping_rows(weight, start, part["head"]["weight"], saved_start)
        state = add_optimizer_rows(state, part["head_optimizer"], saved_start, start, stop)
        del part


def _joined(root: Path, num_classes: int, embedding_size: int, rank: int, world: int) -> None:
    folder = root / "checkpoints" / f"step_{STEP:09d}"
    saved_world = int((folder / "world_size").read_text())
    parts = [torch.load(io.BytesIO((folder / f"rank_{r:05d}.pt").read_bytes()), weights_only=True)
             for r in range(saved_world)]
    start, stop = class_range(num_classes, rank, world)
    weight = torch.cat([p["head"]["weight"] for p in parts])[start:stop].clone()  # [C, D]
    moments = {key: torch.cat([p["head_optimizer"]["state"][0][key] for p in parts])[start:stop].clone()
               for key in ("exp_avg", "exp_avg_sq")}
    del weight, moments


def child(mode: str, root: Path, num_classes: int, embedding_size: int, rank: int, world: int) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kib("VmRSS")
    (_ours if mode == "ours" else _joined)(root, num_classes, embedding_size, rank, world)
    print(json.dumps({"peak_bytes": (_kib("VmHWM") - before) * 1024}))


def measure(mode: str, root: Path, num_classes: int, embedding_size: int, rank: int, world: int) -> int:
    command = [sys.executable, "-m", "bench.bench_reshard", "--child", mode, "--root", str(root),
               "--classes", str(num_classes), "--embedding-size", str(embedding_size),
               "--rank", str(rank), "--world", str(world)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ,
                                                                                    "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[360232, 1000000, 2059906])
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--saved-world", type=int, default=16)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--joined-max-classes", type=int, default=400_000,
                        help="run the joining baseline only up to this many classes (it holds the whole head)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_reshard"))
    parser.add_argument("--child", choices=("ours", "joined"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.root, args.classes[0], args.embedding_size, args.rank, args.world)
        return 0
    print(f"load average {os.getloadavg()}; rank {args.rank} of {args.world} resuming from {args.saved_world} ranks")
    print("| classes | whole head GB | new shard state GB | one saved shard GB | ours peak GB | ours / shard state "
          "| joined peak GB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for num_classes in args.classes:
        root = args.root / str(num_classes)
        shutil.rmtree(root, ignore_errors=True)
        try:
            build(root, num_classes, args.embedding_size, args.saved_world)
            row_bytes = 3 * args.embedding_size * 4  # centre + two moments, float32
            start, stop = class_range(num_classes, args.rank, args.world)
            saved_start, saved_stop = class_range(num_classes, 0, args.saved_world)
            ours = measure("ours", root, num_classes, args.embedding_size, args.rank, args.world)
            joined = (measure("joined", root, num_classes, args.embedding_size, args.rank, args.world)
                      if num_classes <= args.joined_max_classes else None)
            shard_state = (stop - start) * row_bytes
            print(f"| {num_classes:,} | {num_classes * row_bytes / 1e9:.2f} | {shard_state / 1e9:.3f} | "
                  f"{(saved_stop - saved_start) * row_bytes / 1e9:.3f} | {ours / 1e9:.3f} | {ours / shard_state:.2f} | "
                  f"{f'{joined / 1e9:.2f} ({joined / ours:.1f}x ours)' if joined else 'not run'} |", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
