"""LR schedules, weight-decay groups, and the checkpoint manager's atomic writes, retention and fallback."""

import math

import pytest
import torch
from easydict import EasyDict

from backbones import get_model
from utils.checkpoint import CheckpointManager
from utils.errors import UserError
from utils.optim import build_optimizer, lr_at, param_groups


def test_polynomial_schedule_matches_the_released_formula():
    total, warmup, base = 100, 10, 0.1
    for step in range(total):
        if step < warmup:
            expected = base * step / warmup
        else:
            expected = base * (1 - (step - warmup) / (total - warmup)) ** 2
        assert lr_at(step, base, total, warmup) == pytest.approx(expected)
    assert lr_at(total, base, total, warmup) == 0.0


@pytest.mark.parametrize("global_batch", [16, 4096])
@pytest.mark.parametrize("schedule", ["polynomial", "cosine"])
def test_the_schedule_in_samples_gives_exactly_the_per_step_values_at_a_fixed_global_batch(global_batch, schedule):
    """Issue 28: counting progress in samples must not change one learning rate of an existing run."""
    total, warmup, base = 1423, 121, 1e-3  # MS1MV2 at 4096: 1421 steps per epoch

    def per_step(step):  # the released per-step schedule
        if step < warmup:
            return base * step / warmup
        progress = (step - warmup) / (total - warmup)
        return base * ((1 - progress) ** 2 if schedule == "polynomial" else 0.5 * (1 + math.cos(math.pi * progress)))

    for step in range(total):
        assert lr_at(step * global_batch, base, total * global_batch, warmup * global_batch,
                     schedule=schedule) == per_step(step)


def test_cosine_schedule_halves_at_mid_decay_and_ends_at_zero():
    assert lr_at(0, 1.0, 110, 10, schedule="cosine") == 0.0
    assert lr_at(10, 1.0, 110, 10, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(60, 1.0, 110, 10, schedule="cosine") == pytest.approx(0.5)
    assert lr_at(110, 1.0, 110, 10, schedule="cosine") == pytest.approx(0.0, abs=1e-12)


def test_schedule_without_warmup_starts_at_the_base_rate():
    assert lr_at(0, 0.5, 10, 0) == 0.5 and math.isfinite(lr_at(0, 0.5, 1, 0))


def test_norms_biases_and_tokens_can_be_excluded_from_weight_decay():
    model = get_model("vit_nano", mask_ratio=0.1)
    groups = param_groups([model], weight_decay=0.1, exclude_norm_bias=True)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert {"pos_embed", "mask_token", "norm.weight", "blocks.0.attn.proj.bias"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay and groups[1]["weight_decay"] == 0.0
    every = param_groups([model], weight_decay=0.1, exclude_norm_bias=False)
    assert len(every) == 1 and len(every[0]["params"]) == len(list(model.parameters()))


def test_build_optimizer_uses_the_configured_kind():
    cfg = EasyDict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, betas=(0.9, 0.999),
                   no_weight_decay_on_norm_bias=False)
    assert isinstance(build_optimizer(cfg, [torch.nn.Linear(2, 2)]), torch.optim.SGD)
    cfg.optimizer = "adamw"
    assert isinstance(build_optimizer(cfg, [torch.nn.Linear(2, 2)]), torch.optim.AdamW)


def _save(manager, step, value):
    return manager.save(step, {"value": torch.tensor(value)}, {"rank_value": torch.tensor(value)})


def test_checkpoints_round_trip_and_only_the_last_n_are_kept(tmp_path):
    manager = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2)
    for step in (10, 20, 30):
        _save(manager, step, float(step))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_000000020", "step_000000030"]
    common, parts = manager.load_latest()
    assert common["value"].item() == 30.0 and parts[0]["rank_value"].item() == 30.0 and set(parts) == {0}
    assert common["world_size"] == 1 and not list((tmp_path / "checkpoints").rglob(".*tmp*"))


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    manager = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=3)
    _save(manager, 1, 1.0)
    newest = _save(manager, 2, 2.0)
    data = (newest / "rank_00000.pt").read_bytes()
    (newest / "rank_00000.pt").write_bytes(data[: len(data) // 2])
    common, _ = manager.load_latest()
    assert common["value"].item() == 1.0


def test_checkpoint_missing_a_rank_file_is_incomplete(tmp_path):
    rank0 = CheckpointManager(tmp_path, rank=0, world_size=2)
    rank1 = CheckpointManager(tmp_path, rank=1, world_size=2)
    for manager in (rank0, rank1):
        _save(manager, 5, 5.0)
    _save(rank0, 6, 6.0)  # rank 1 never wrote step 6
    common, parts = rank1.load_latest()
    assert common["value"].item() == 5.0 and set(parts) == {1}  # same world size: only its own part


def test_no_checkpoint_means_none(tmp_path):
    assert CheckpointManager(tmp_path, rank=0, world_size=1).load_latest() is None


def test_a_folder_still_being_written_never_causes_the_last_complete_one_to_be_pruned(tmp_path):
    rank0 = CheckpointManager(tmp_path, rank=0, world_size=2, keep_last=1)
    rank1 = CheckpointManager(tmp_path, rank=1, world_size=2, keep_last=1)
    for manager in (rank0, rank1):
        _save(manager, 1, 1.0)
    _save(rank0, 2, 2.0)  # rank 1 has not written step 2 yet
    assert (tmp_path / "checkpoints" / "step_000000001").is_dir()
    _save(rank1, 2, 2.0)
    _save(rank0, 3, 3.0)  # now step 2 is complete, so step 1 may go
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000002", "step_000000003"]


def test_ranks_fall_back_together_when_one_rank_cannot_load(tmp_path):
    managers = [CheckpointManager(tmp_path, rank=r, world_size=2) for r in range(2)]
    for step in (1, 2):
        for manager in managers:
            _save(manager, step, float(step))
    (tmp_path / "checkpoints" / "step_000000002" / "rank_00001.pt").write_bytes(b"torn")
    # rank 0 alone could load step 2; the agreement says rank 1 cannot, so both take step 1
    rank1_loads = {"step_000000002": False, "step_000000001": True}
    attempts = iter(["step_000000002", "step_000000001"])
    common, parts = managers[0].load_latest(all_agree=lambda ok: ok and rank1_loads[next(attempts)])
    assert common["value"].item() == 1.0 and set(parts) == {0}


def test_resume_fails_clearly_when_no_checkpoint_loads(tmp_path):
    manager = CheckpointManager(tmp_path, rank=0, world_size=1)
    folder = _save(manager, 1, 1.0)
    (folder / "common.pt").write_bytes(b"torn")
    with pytest.raises(UserError, match="none of the 1 checkpoints"):
        manager.load_latest()


def test_only_interrupted_saves_mean_starting_afresh(tmp_path):
    rank0 = CheckpointManager(tmp_path, rank=0, world_size=2)
    _save(rank0, 1, 1.0)  # rank 1 crashed before writing its part
    assert rank0.load_latest() is None


def test_save_policy_is_every_n_steps_epoch_ends_the_last_step_and_stop_requests(tmp_path):
    manager = CheckpointManager(tmp_path, 0, 1, save_every=3, epoch_ends=True)
    epoch_ends = {4, 7}  # where the run's epoch counter says an epoch ended, not a multiple of a step count
    assert [step for step in range(1, 11) if manager.is_due(step, last_step=10, epoch_end=step in epoch_ends)] == [
        3, 4, 6, 7, 9, 10]
    assert manager.is_due(5, last_step=10, stop=True)
    # neither every-n nor epoch ends set
    assert not CheckpointManager(tmp_path, 0, 1).is_due(4, last_step=10, epoch_end=True)


def test_a_part_without_its_checksum_makes_its_step_incomplete(tmp_path):
    """Regression: a kill between a part's two writes left it loading "unverified", bit flips included."""
    manager = CheckpointManager(tmp_path, rank=0, world_size=1)
    _save(manager, 1, 1.0)
    newest = _save(manager, 2, 2.0)
    (newest / "rank_00000.pt.sha256").unlink()
    common, _ = manager.load_latest()
    assert common["value"].item() == 1.0
