"""Every margin loss in training (issue 24 items 5 and 7): a few steps of the real train_step with DPAP, EHSM
and sampled centres, its running state in the checkpoint, `--resume auto` bitwise exact, the state kept when a
run resumes on another world size, gradient accumulation, and the one-line errors of train.py."""

from __future__ import annotations

import copy

import pytest
import torch

import losses
import train
from tests.dist_utils import run_distributed
from tests.test_train import (  # noqa: F401 - face_folder and one_thread are fixtures (one_thread autouse)
    REPO,
    assert_same_weights,
    face_folder,
    load_weights,
    one_thread,
    write_config,
)
from utils import distributed
from utils.config import derive, load_config

LOSSES = [name for name in losses.LOSS_NAMES if name != "combined"]
# Heads with entries of their own in the Partial FC state_dict: running statistics, a generator, a bias.
STATEFUL = {"adaface", "curricularface", "elasticface_arc", "elasticface_cos", "elasticface_arc_plus",
            "elasticface_cos_plus", "uniface"}


def _config(loss: str, **overrides):
    """A tiny run: vit_nano with DPAP and EHSM, half the centres sampled, SGD (linear in the gradient)."""
    values = dict(network="vit_nano", embedding_size=16, num_classes=10, num_image=64, batch_size=8,
                  precision="fp32", dpap_prob=0.5, sample_rate=0.5, lr=0.1, optimizer="sgd", loss=loss,
                  clip_grad_norm=0.0)
    cfg = load_config(REPO / "configs" / "base.py", [f"{k}={v!r}" for k, v in {**values, **overrides}.items()])
    return derive(cfg, world_size=1)


def _batches(num: int, size: int):
    generator = torch.Generator().manual_seed(3)
    return [(torch.rand(size, 3, 112, 112, generator=generator) * 2 - 1,
             torch.randint(0, 10, (size,), generator=generator)) for _ in range(num)]


def _margin_state(head: torch.nn.Module) -> dict:
    """The margin head's entries of the Partial FC state_dict (buffers, parameters, extra state), copied."""
    return _margin_state_of(copy.deepcopy(head.state_dict()))


def _margin_state_of(head_state: dict) -> dict:
    return {key: value for key, value in head_state.items() if key.startswith("margin_loss.")}


def _same(a, b) -> bool:
    """Equal tensors (bitwise), or equal containers of them, or equal values."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _changed(before: dict, after: dict) -> list[str]:
    return [key for key in before if not _same(before[key], after[key])]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_a_few_steps_with_dpap_ehsm_and_sampled_centres(loss):
    """The same batch three times: the loss is finite and falls, and a head with state updates it."""
    torch.manual_seed(0)
    run = train.build_run(_config(loss), distributed.setup("cpu"))
    before = _margin_state(run.head)
    batch = _batches(1, 8)
    values = []
    for _ in range(3):
        stats = train.train_step(run, batch)
        assert stats is not None, f"{loss}: a step was skipped as non-finite"
        values.append(stats["loss"])
    assert all(map(torch.isfinite, torch.tensor(values))) and values[-1] < values[0], values
    after = _margin_state(run.head)
    assert after.keys() == before.keys() and bool(before) == (loss in STATEFUL), sorted(before)
    assert not before or _changed(before, after), f"{loss}: its state {sorted(before)} did not change"


@pytest.mark.parametrize("loss", ["adaface", "magface", "uniface"])
def test_a_cnn_trains_with_the_norm_based_and_per_class_losses(loss):
    """mbf (no patch information: DPAP and EHSM off): AdaFace and MagFace read its embedding norms, MagFace
    and UniFace back-propagate into them; two steps on one batch lower the loss."""
    torch.manual_seed(0)
    cfg = _config(loss, network="mbf", dpap=False, ehsm=False, lr=0.01, clip_grad_norm=5.0)
    run = train.build_run(cfg, distributed.setup("cpu"))
    batch = _batches(1, 8)
    values = [train.train_step(run, batch)["loss"] for _ in range(2)]
    assert all(map(torch.isfinite, torch.tensor(values))) and values[1] < values[0], values


@pytest.mark.parametrize("loss", ["adaface", "magface", "uniface"])
def test_under_bf16_autocast_the_head_and_its_state_stay_float32(loss):
    """The backbone runs in bf16; the head's margin, softmax or per-class terms, and its state, in fp32."""
    torch.manual_seed(0)
    run = train.build_run(_config(loss, precision="bf16"), distributed.setup("cpu"))
    before = _margin_state(run.head)
    stats = train.train_step(run, _batches(1, 8))
    assert stats is not None and torch.isfinite(torch.tensor(stats["loss"]))
    after = _margin_state(run.head)
    assert all(value.dtype == torch.float32 for value in after.values() if torch.is_tensor(value))
    assert run.head.weight.dtype == torch.float32 and (not before or _changed(before, after))


def test_uniface_bias_is_stepped_and_decayed_by_the_head_optimizer_also_with_sampled_centre_updates():
    """The bias is a head parameter outside DDP: the head optimizer owns it, with the weight decay of the
    centres (UniFace's released SGD decays it; no_weight_decay_on_norm_bias is the backbone's rule)."""
    for update, optimizer in (("all", "sgd"), ("sampled", "adamw")):
        torch.manual_seed(0)
        cfg = _config("uniface", centre_update=update, optimizer=optimizer, no_weight_decay_on_norm_bias=True,
                      weight_decay=5e-4)
        run = train.build_run(cfg, distributed.setup("cpu"))
        bias = run.head.margin_loss.bias
        groups = [g for g in run.head_optimizer.param_groups if any(p is bias for p in g["params"])]
        assert len(groups) == 1 and groups[0]["weight_decay"] == 5e-4, update
        before = bias.detach().clone()
        assert train.train_step(run, _batches(1, 8)) is not None
        assert not torch.equal(bias.detach(), before), update


def _steps_with_accumulation(loss: str, split: int, batches) -> dict:
    torch.manual_seed(0)
    cfg = _config(loss, batch_size=16 // split, gradient_accumulation=split, dpap=False, sample_rate=1.0)
    run = train.build_run(cfg, distributed.setup("cpu"))
    for module in run.backbone.modules():  # running statistics: a step then does not depend on the split
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eval()
    for images, labels in batches:
        assert train.train_step(run, list(zip(images.chunk(split), labels.chunk(split)))) is not None
    return {**run.backbone.state_dict(), **{f"head.{k}": v for k, v in run.head.state_dict().items()
                                             if torch.is_tensor(v)}}


@pytest.mark.parametrize("loss", ["magface", "uniface"])
def test_gradient_accumulation_equals_one_large_batch(loss):
    """MagFace (its regulariser is a per-sample mean) and UniFace (a per-class sum over the batch, and a
    learnable bias): two micro-batches of 8 give the step of one batch of 16."""
    batches = _batches(2, 16)
    whole = _steps_with_accumulation(loss, 1, batches)
    accumulated = _steps_with_accumulation(loss, 2, batches)
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, atol=2e-5, rtol=1e-4, msg=key)


TWO_RANK_LOSSES = ("adaface", "elasticface_arc_plus", "uniface")


def _steps_on_ranks(rank: int, world_size: int, batches) -> dict:
    """Two SGD steps of each of TWO_RANK_LOSSES with this rank's share of the global batches of 16."""
    ctx = distributed.DistContext(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"))
    results = {}
    for loss in TWO_RANK_LOSSES:
        torch.manual_seed(0)
        # Clipped: small steps keep float-level differences of the split float-level over the second step.
        run = train.build_run(_config(loss, batch_size=16 // world_size, dpap=False, sample_rate=1.0,
                                      clip_grad_norm=0.05), ctx)
        for module in run.backbone.modules():  # running statistics: a step then does not depend on the split
            if isinstance(module, torch.nn.BatchNorm1d):
                module.eval()
        for images, labels in batches:
            share = slice(rank * 16 // world_size, (rank + 1) * 16 // world_size)
            assert train.train_step(run, [(images[share], labels[share])]) is not None
        results[loss] = {"backbone": run.backbone.state_dict(), "weight": run.head.weight.detach().clone(),
                         "state": _margin_state(run.head)}
    return results


def test_two_processes_train_as_one_with_stateful_losses():
    """Through train.py: AdaFace's statistics, ElasticFace+'s margins (drawn alike on every rank from the run's
    seed, ordered over the global batch) and UniFace's bias make two ranks take one process's steps."""
    batches = _batches(2, 16)
    single = _steps_on_ranks(0, 1, batches)
    ranks = run_distributed(_steps_on_ranks, 2, batches)
    for loss in TWO_RANK_LOSSES:
        for result in ranks:
            for key, value in single[loss]["backbone"].items():
                torch.testing.assert_close(result[loss]["backbone"][key], value, atol=2e-5, rtol=1e-4,
                                           msg=f"{loss} {key}")
            for key, value in single[loss]["state"].items():
                if torch.is_tensor(value):
                    torch.testing.assert_close(result[loss]["state"][key], value, atol=1e-6, rtol=1e-5,
                                               msg=f"{loss} {key}")
                else:
                    assert _same(result[loss]["state"][key], value), f"{loss} {key}"
        torch.testing.assert_close(torch.cat([r[loss]["weight"] for r in ranks]), single[loss]["weight"],
                                   atol=2e-5, rtol=1e-4, msg=loss)


def _head_state(output, step: int) -> dict:
    return load_weights(output / "checkpoints" / f"step_{step:09d}" / "rank_00000.pt")["head"]


def _checkpoint(output, step: int) -> dict:
    """The backbone and the rank-0 head (tensors) of the checkpoint of `step`."""
    folder = output / "checkpoints" / f"step_{step:09d}"
    head = load_weights(folder / "rank_00000.pt")["head"]
    return {**load_weights(folder / "common.pt")["backbone"],
            **{f"head.{k}": v for k, v in head.items() if torch.is_tensor(v)}}


@pytest.mark.parametrize("loss", ["adaface", "elasticface_arc_plus", "uniface"])
def test_resume_auto_is_bitwise_the_run_that_never_stopped(tmp_path, face_folder, loss):  # noqa: F811
    """AdaFace's norm statistics, ElasticFace's margin generator and UniFace's bias (and its momentum) come
    back from the checkpoint: the resumed run ends with the same backbone, centres and state, bit for bit."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
    settings = dict(loss=loss, optimizer="sgd", lr=0.1)
    assert train.main([str(write_config(whole, face_folder, **settings)), "--max-steps", "5"]) == 0
    config = str(write_config(stopped, face_folder, **settings))
    assert train.main([config, "--max-steps", "2"]) == 0
    assert train.main([config, "--resume", "auto", "--max-steps", "5"]) == 0
    assert_same_weights(_checkpoint(stopped / "out", 5), _checkpoint(whole / "out", 5))
    state_end = _margin_state_of(_head_state(whole / "out", 5))
    state_middle = _margin_state_of(_head_state(stopped / "out", 2))
    assert state_end and _changed(state_middle, state_end), "the state did not move between steps 2 and 5"
    assert not _changed(state_end, _margin_state_of(_head_state(stopped / "out", 5)))


def _restored_margin_state(rank, world_size, config):
    cfg = derive(load_config(config, ["num_classes=8", "num_image=64"]), world_size)
    run = train.build_run(cfg, distributed.setup("cpu"))
    assert train.restore(run, train.CheckpointManager(cfg.output, rank, world_size))
    return {"state": _margin_state(run.head), "rows": len(run.head.weight)}


def test_resuming_on_two_processes_keeps_the_adaface_state_of_one(tmp_path, face_folder):  # noqa: F811
    """Re-sharding takes the margin head's state (replicated: it comes from the global batch) from the first
    saved shard: every new rank holds the saved state exactly."""
    config = write_config(tmp_path, face_folder, loss="adaface", sample_rate=1.0)
    assert train.main([str(config), "--max-steps", "3"]) == 0
    saved = _margin_state_of(_head_state(tmp_path / "out", 3))
    ranks = run_distributed(_restored_margin_state, 2, str(config))
    assert [r["rows"] for r in ranks] == [4, 4]
    for result in ranks:
        assert result["state"].keys() == saved.keys() and not _changed(saved, result["state"])


def test_a_misspelled_loss_or_parameter_stops_train_py_with_one_line(tmp_path, face_folder, capsys):  # noqa: F811
    assert train.main([str(write_config(tmp_path, face_folder, loss="adafce"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'adaface'?" in err
    assert train.main([str(write_config(tmp_path, face_folder, loss="adaface", loss_params={"hh": 0.3}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'h'?" in err


def test_resuming_a_run_with_another_loss_stops_with_one_line(tmp_path, face_folder, capsys):  # noqa: F811
    assert train.main([str(write_config(tmp_path, face_folder)), "--max-steps", "1"]) == 0
    config = str(write_config(tmp_path, face_folder, loss="adaface"))
    assert train.main([config, "--resume", "auto"]) == 2
    assert "loss 'combined' -> 'adaface'" in capsys.readouterr().err
