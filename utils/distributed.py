"""Process-group setup from torchrun's environment, the device of this rank, seeding and DDP wrapping.

`python train.py cfg` runs as one process without a process group; `torchrun` sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and we start NCCL on CUDA or gloo on CPU from them. The rest of
the code asks `DistContext` for ranks and the device and never reads the environment itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer; launch with torchrun or "
                        "unset it.") from None


def pick_device(local_rank: int, device: str | None = None) -> torch.device:
    """`device` if given ("cpu", "cuda", "cuda:1"), else this rank's GPU when CUDA exists, else the CPU."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"device '{device}' is not a device name; use cpu, cuda or cuda:N.") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device '{device}' was asked for but CUDA is not available; use --device cpu.")
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
        return chosen
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                            "start at most one process per GPU, or pass --device cpu to train on the CPU.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str | None = None, timeout_minutes: float = 30.0) -> DistContext:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1), or use the one already started;
    return this rank's context."""
    if dist.is_available() and dist.is_initialized():  # started by the caller (e.g. a test harness)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
    else:
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        world_size = _env_int("WORLD_SIZE", 1)
    chosen = pick_device(local_rank, device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, timeout), rank=rank,
                                world_size=world_size, timeout=timeout, **kwargs)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun, the rendezvous store seen through a prefix unique to this restart attempt.

    torchrun's agent keeps one store across `--max-restarts` restarts; without a fresh prefix the
    restarted workers read the dead workers' addresses from it and hang connecting to them.
    Returns None outside torchrun (init_process_group then reads MASTER_ADDR/PORT itself).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    return dist.PrefixStore(f"transface/attempt_{attempt}", store)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is true on any rank (one small all-reduce)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_ranks(flag: bool, ctx: DistContext) -> bool:
    """True on every rank only when `flag` is true on every rank."""
    return not any_rank(not flag, ctx)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, **kwargs) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there are several processes, else the model itself."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)
