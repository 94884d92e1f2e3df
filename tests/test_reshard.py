"""Resuming on another world size: the class centres and their AdamW state re-sharded from the saved rank
files, reading only the rows each rank needs (issue 23), and checkpoint files loaded without a copy."""

from __future__ import annotations

from pathlib import Path

import torch

import train
from losses import CombinedMarginLoss
from partial_fc import PartialFC, class_range, init_class_centres, saved_ranks_overlapping
from tests.dist_utils import run_distributed
from utils.checkpoint import CheckpointManager, _load, _save

NUM_CLASSES = 23  # uneven over 3, 2 and 5 processes
EMBEDDING_SIZE = 4


def _rss_kib(field: str) -> int:
    """VmRSS or VmHWM (peak) of this process, in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def _head_and_optimizer(num_classes: int, embedding_size: int):
    head = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), embedding_size, num_classes)
    return head, torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.1)


def _one_adamw_step(head: PartialFC, optimizer: torch.optim.Optimizer) -> None:
    """A step whose gradient depends only on the class, so every world size takes the same step."""
    classes = torch.arange(head.class_start, head.class_stop, dtype=torch.float32)[:, None]  # [C, 1]
    head.weight.grad = torch.cos(classes * torch.arange(1.0, head.embedding_size + 1))  # [C, D]
    optimizer.step()


def _resume_and_save(rank: int, world_size: int, root: str, step: int) -> dict:
    """Load the newest checkpoint under `root` (saved by another world size, or none), save it at `step`."""
    head, optimizer = _head_and_optimizer(NUM_CLASSES, EMBEDDING_SIZE)
    manager = CheckpointManager(root, rank, world_size)
    found = manager.load_latest(needed_ranks=lambda saved_world: saved_ranks_overlapping(
        NUM_CLASSES, saved_world, rank, world_size))
    if found is None:
        _one_adamw_step(head, optimizer)
    else:
        _, parts = found
        read = sorted(parts)
        head.load_resharded(train._handed_over(parts), optimizer)
    manager.save(step, {}, {"head": head.state_dict(), "head_optimizer": optimizer.state_dict()})
    state = optimizer.state_dict()["state"][0]
    return {"weight": head.weight.detach().clone(), "exp_avg": state["exp_avg"].clone(),
            "exp_avg_sq": state["exp_avg_sq"].clone(), "step": state["step"].clone(),
            "read": read if found is not None else []}


def test_resharding_3_to_2_to_5_to_1_ranks_equals_the_one_process_result(tmp_path):
    for step, world_size in enumerate((3, 2, 5, 1), start=1):
        ranks = run_distributed(_resume_and_save, world_size, str(tmp_path / "resharded"), step)
        if world_size == 2:  # classes [0, 12) and [12, 23) of the shards [0, 8), [8, 16), [16, 23)
            assert [r["read"] for r in ranks] == [[0, 1], [1, 2]]
    single = _resume_and_save(0, 1, str(tmp_path / "single"), 1)  # one process throughout, no group
    (resharded,) = ranks
    for key in ("weight", "exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(resharded[key], single[key]), key


def _save_run(root: Path, num_classes: int, embedding_size: int, saved_world: int) -> int:
    """The rank files of a run of `saved_world` processes (each shard's centres and AdamW moments),
    written without a process group; returns the size of its common.pt in bytes."""
    for rank in range(saved_world):
        start, stop = class_range(num_classes, rank, saved_world)
        weight = init_class_centres(num_classes, embedding_size, start, stop)  # [C_r, D]
        head = {"weight": weight,
                "_extra_state": {"num_classes": num_classes, "class_start": start, "class_stop": stop}}
        optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": weight * 0.5, "exp_avg_sq": weight ** 2}},
                     "param_groups": [{"lr": 0.1, "weight_decay": 0.1, "params": [0]}]}
        folder = CheckpointManager(root, rank, saved_world).save(
            7, {"backbone": torch.ones(1 << 18)}, {"head": head, "head_optimizer": optimizer})
    return (folder / "common.pt").stat().st_size


def _peak_while_resharding(rank: int, world_size: int, root: str, num_classes: int, embedding_size: int) -> dict:
    """Peak host memory (above the process before loading) of loading and re-sharding, as train.restore."""
    head, optimizer = _head_and_optimizer(num_classes, embedding_size)
    manager = CheckpointManager(root, rank, world_size)
    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    _, parts = manager.load_latest(needed_ranks=lambda saved_world: saved_ranks_overlapping(
        num_classes, saved_world, rank, world_size))
    head.load_resharded(train._handed_over(parts), optimizer)
    peak = (_rss_kib("VmHWM") - before) * 1024
    return {"peak_bytes": peak, "shard_state_bytes": 3 * head.weight.numel() * head.weight.element_size()}


def test_peak_memory_of_resharding_stays_under_twice_the_new_shard_state(tmp_path):
    """Regression (issue 23): every rank joined the whole saved head (centres and both moments) in memory."""
    num_classes, embedding_size = 60_000, 128  # 92 MB of head state over 3 saved ranks
    common_bytes = _save_run(tmp_path, num_classes, embedding_size, 3)
    for result in run_distributed(_peak_while_resharding, 2, str(tmp_path), num_classes, embedding_size):
        assert result["peak_bytes"] < 2 * result["shard_state_bytes"] + common_bytes, result


def test_a_checkpoint_file_is_loaded_without_a_second_copy(tmp_path):
    """Regression (issue 23): common.pt was read into bytes, hashed, then deserialised from a copy."""
    path = tmp_path / "common.pt"
    # 64 MB: large beside the fixed costs of reading it (two 4 MiB hash chunks alive at once, the
    # interpreter's own pages), which made a 16 MB file's margin depend on the allocator's timing.
    _save({"backbone": torch.randn(16_000_000)}, path)
    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    total = _load(path)["backbone"].sum()  # touches every page
    peak = (_rss_kib("VmHWM") - before) * 1024
    assert torch.isfinite(total) and peak < 1.25 * path.stat().st_size, peak
