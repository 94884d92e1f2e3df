"""Run a function in several CPU processes joined by a gloo process group, for multi-process tests.

    from tests.dist_utils import run_distributed

    def worker(rank, world_size, data):       # module level: it is pickled into the processes
        ...                                     # torch.distributed is initialised (gloo) here
        return {"loss": loss.detach()}          # tensors, numbers, strings, lists, dicts

    results = run_distributed(worker, 2, data)  # [result of rank 0, result of rank 1]

Each call starts `world_size` processes (forked from a fork server that has imported torch, one
thread each), joins them through a FileStore in a new temporary directory (no ports), and returns their
results by rank. `fn` and `args` are pickled, so `fn` must be a module-level function. An exception in any
process fails the call with the tracebacks of the failing processes; the others are stopped. The first
call pays for importing torch in the fork server (seconds); later calls start in well under a second.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run_rank(fn: Callable, rank: int, world_size: int, workdir: str, args: tuple, timeout_s: float) -> None:
    torch.set_num_threads(1)
    result_path = Path(workdir) / f"result_{rank}.pt"
    try:
        dist.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
        outcome = {"result": fn(rank, world_size, *args)}
    except BaseException:
        outcome = {"error": traceback.format_exc()}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(outcome, result_path)
    if "error" in outcome:
        sys.exit(1)  # a non-zero exit code tells the parent to stop the ranks still waiting on this one


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 120.0) -> list:
    """`fn(rank, world_size, *args)` in `world_size` gloo processes; returns their results by rank.

    Raises RuntimeError with the tracebacks of the failing ranks, or TimeoutError after timeout_s.
    """
    context = mp.get_context("forkserver")
    # The fork server imports these once; every process after that is a cheap fork of it. DDP's
    # constructor imports torch._dynamo, seconds of work that would otherwise repeat in every process.
    context.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo"])
    workdir = tempfile.mkdtemp(prefix="dist_test_")
    try:
        processes = [context.Process(target=_run_rank, args=(fn, rank, world_size, workdir, args, timeout_s))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        _wait(processes, timeout_s)
        outcomes = [_read_outcome(Path(workdir), rank, process) for rank, process in enumerate(processes)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    errors = [f"rank {rank} of {world_size} failed:\n{outcome['error']}"
              for rank, outcome in enumerate(outcomes) if "error" in outcome]
    if errors:
        raise RuntimeError("\n".join(errors))
    return [outcome["result"] for outcome in outcomes]


def _wait(processes: list, timeout_s: float) -> None:
    """Join all processes; once one fails, or at the deadline, stop the rest (they would wait forever)."""
    deadline = time.monotonic() + timeout_s
    while any(process.is_alive() for process in processes):
        failed = any(process.exitcode not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            time.sleep(1.0)  # let the others write their own errors first
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join()
            if not failed:
                raise TimeoutError(f"distributed test did not finish in {timeout_s} s")
            return
        time.sleep(0.05)
    for process in processes:
        process.join()


def _read_outcome(workdir: Path, rank: int, process) -> dict:
    path = workdir / f"result_{rank}.pt"
    if not path.exists():
        return {"error": f"process exited with code {process.exitcode} before reporting a result"}
    return torch.load(path, weights_only=True)
