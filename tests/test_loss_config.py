"""The loss keys of a config (issue 24 item 2): `loss` names a head of losses.get_margin_loss, `loss_params` its
parameters, checked against losses.loss_defaults; "combined" reads the margin_* keys as before. Also the
"step" learning-rate schedule the AdaFace and ElasticFace recipes use, and those recipes."""

from pathlib import Path

import pytest
import torch

import losses
import train
from utils.config import derive, load_config
from utils.errors import UserError
from utils.optim import lr_at

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path, body: str) -> Path:
    path = tmp_path / "exp.py"
    path.write_text("from easydict import EasyDict\nconfig = EasyDict(" + body + ")\n")
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_default_loss_is_combined_and_builds_the_head_of_the_margin_keys(tmp_path):
    """Every config written before the loss key keeps its head: same class, same numbers."""
    cfg = load_config(write_config(tmp_path, "margin_list=(1.0, 0.0, 0.35), margin_scale=30.0, "
                                             "margin_exact_gradient=True, interclass_filtering_threshold=0.2"))
    assert cfg.loss == "combined" and cfg.loss_params == {}
    head = train.margin_loss(cfg)
    expected = losses.CombinedMarginLoss(30.0, 1.0, 0.0, 0.35, 0.2, exact_gradient=True)
    assert type(head) is losses.CombinedMarginLoss and head.extra_repr() == expected.extra_repr()


@pytest.mark.parametrize("name", [n for n in losses.LOSS_NAMES if n != "combined"])
def test_every_registered_loss_loads_with_its_published_defaults_written_out(tmp_path, name):
    cfg = load_config(write_config(tmp_path, f"loss={name!r}"))
    assert cfg.loss_params == losses.loss_defaults(name)
    assert isinstance(train.margin_loss(cfg), torch.nn.Module)


def test_loss_params_override_some_defaults_and_ints_become_floats(tmp_path):
    cfg = load_config(write_config(tmp_path, "loss='cosface', loss_params=dict(m=0, s=32)"))
    assert cfg.loss_params == {**losses.loss_defaults("cosface"), "m": 0.0, "s": 32.0}
    assert isinstance(cfg.loss_params["s"], float)
    assert train.margin_loss(cfg).extra_repr() == losses.CombinedMarginLoss(32.0, 1.0, 0.0, 0.0).extra_repr()


def test_a_misspelled_loss_is_one_line_naming_the_closest_loss(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, "loss='cosfce'"))
    assert "'cosfce'" in one_line(err) and "did you mean 'cosface'?" in str(err.value)
    assert "exp.py" in str(err.value)


def test_a_misspelled_loss_parameter_is_one_line_naming_the_closest_parameter(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, "loss='arcface', loss_params=dict(ss=32.0)"))
    message = one_line(err)
    assert "loss_params key 'ss' is not a parameter of loss 'arcface'" in message and "did you mean 's'?" in message


def test_a_loss_parameter_of_the_wrong_type_names_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, "loss='arcface', loss_params=dict(m='0.5')"))
    assert "key 'loss_params.m' must be a finite number" in one_line(err)


def test_loss_params_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match=r"key 'loss_params' must be a dict of names to values"):
        load_config(write_config(tmp_path, "loss='arcface', loss_params=(0.5,)"))
    cfg = load_config(write_config(tmp_path, "loss='arcface'"), ["loss_params={'m': 0.45}"])  # a plain dict
    assert cfg.loss_params["m"] == 0.45


def test_combined_takes_its_parameters_from_the_margin_keys_only(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, "loss_params=dict(s=32.0)"))
    assert "loss 'combined' takes no loss_params" in one_line(err) and "margin_list" in str(err.value)


@pytest.mark.parametrize("body", ["margin_list=(1.0, 0.0, 0.4)", "margin_scale=32.0", "margin_exact_gradient=True",
                                  "interclass_filtering_threshold=0.1"])
def test_a_margin_key_changed_for_another_loss_is_an_error_not_ignored(tmp_path, body):
    key = body.split("=")[0]
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, f"loss='cosface', {body}"))
    assert f"key '{key}'" in one_line(err) and "only loss 'combined' reads it" in str(err.value)


def test_overrides_set_one_loss_parameter_or_switch_the_loss(tmp_path):
    path = write_config(tmp_path, "loss='arcface', loss_params=dict(m=0.45)")
    cfg = load_config(path, ["loss_params.s=48"])
    assert (cfg.loss_params["m"], cfg.loss_params["s"]) == (0.45, 48.0)
    switched = load_config(path, ["loss=cosface"])  # the arcface parameters do not follow
    assert switched.loss_params == losses.loss_defaults("cosface")
    with pytest.raises(UserError, match="--set: loss_params key 'mm'"):
        load_config(path, ["loss_params.mm=0.3"])


def test_resuming_with_another_loss_is_one_line(tmp_path):
    cfg = load_config(write_config(tmp_path, "loss='cosface', num_classes=10"))
    saved = {"config": '{"network": "vit_t", "embedding_size": 512, "num_classes": 10}'}  # before the loss key
    with pytest.raises(UserError) as err:
        train._check_compatible(cfg, saved)
    assert "loss 'combined' -> 'cosface'" in one_line(err)


def test_the_step_schedule_multiplies_by_gamma_at_each_milestone():
    rates = [lr_at(samples, 0.1, 100, 0, schedule="step", milestones=(30, 60), gamma=0.1) for samples in
             (0, 29, 30, 59, 60, 99)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_at(5, 0.1, 100, 10, schedule="step", milestones=(30,)) == pytest.approx(0.05)  # warm-up first


def test_milestones_are_epochs_and_need_the_step_schedule(tmp_path):
    cfg = load_config(write_config(tmp_path, "lr_scheduler='step', lr_milestones=(2, 5), num_image=1000, "
                                             "batch_size=100"))
    assert derive(cfg, world_size=2).lr_milestone_samples == (2 * 5 * 200, 5 * 5 * 200)
    with pytest.raises(UserError, match="set lr_scheduler='step'"):
        load_config(write_config(tmp_path, "lr_milestones=(2, 5)"))
    with pytest.raises(UserError, match="increasing non-negative epochs"):
        load_config(write_config(tmp_path, "lr_scheduler='step', lr_milestones=(5, 2)"))
    with pytest.raises(UserError, match="'lr_milestones' must be a sequence of ints"):
        load_config(write_config(tmp_path, "lr_scheduler='step', lr_milestones=(2.5,)"))


def _released_step_rate(base_lr: float, epoch: int, drops_from: tuple[int, ...]) -> float:
    return base_lr * 0.1 ** sum(epoch >= m for m in drops_from)


@pytest.mark.parametrize(("name", "world_size", "drops_from"), [
    # AdaFace train_val.py: MultiStepLR(milestones=[12, 20, 24]) stepped after each epoch.
    ("ms1mv2_r100_adaface", 2, (12, 20, 24)),
    # ElasticFace config.py: lr_step_func(epoch) = 0.1 ** len([m for m in [8, 14, 20, 25] if m - 1 <= epoch]).
    ("ms1mv2_r100_elasticface_arc_plus", 4, tuple(m - 1 for m in (8, 14, 20, 25))),
])
def test_cnn_loss_recipes_have_the_released_learning_rate_in_every_epoch(name, world_size, drops_from):
    cfg = derive(load_config(REPO / "configs" / f"{name}.py"), world_size)
    assert cfg.total_batch_size == 512 and cfg.gradient_accumulation == 1 and cfg.num_epoch == 26
    epoch_samples = cfg.steps_per_epoch * cfg.total_batch_size
    for epoch in range(cfg.num_epoch):
        for samples in (epoch * epoch_samples, (epoch + 1) * epoch_samples - cfg.total_batch_size):
            rate = lr_at(samples, cfg.lr, cfg.total_samples, cfg.warmup_samples, schedule=cfg.lr_scheduler,
                         milestones=cfg.lr_milestone_samples, gamma=cfg.lr_gamma)
            assert rate == pytest.approx(_released_step_rate(0.1, epoch, drops_from)), (epoch, samples)


def test_cnn_loss_recipes_have_the_released_loss_and_optimizer():
    adaface = load_config(REPO / "configs" / "ms1mv2_r100_adaface.py")
    assert adaface.loss_params == {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01}
    assert (adaface.optimizer, adaface.momentum, adaface.weight_decay, adaface.precision) == ("sgd", 0.9, 5e-4, "fp16")
    assert adaface.clip_grad_norm == 0.0 and adaface.no_weight_decay_on_norm_bias and adaface.seed == 42
    elastic = load_config(REPO / "configs" / "ms1mv2_r100_elasticface_arc_plus.py")
    assert elastic.loss == "elasticface_arc_plus"
    assert {k: elastic.loss_params[k] for k in ("s", "m", "std")} == {"s": 64.0, "m": 0.5, "std": 0.0175}
    assert (elastic.optimizer, elastic.weight_decay, elastic.precision, elastic.clip_grad_norm) == ("sgd", 5e-4,
                                                                                                 "fp32", 5.0)
    assert not elastic.no_weight_decay_on_norm_bias
    for cfg in (adaface, elastic):
        assert cfg.network == "r100" and cfg.num_classes == 85742 and not cfg.dpap and not cfg.ehsm


def test_transface_s_with_adaface_is_the_released_vit_s_recipe_but_its_loss():
    released = load_config(REPO / "configs" / "ms1mv2_vit_s.py")
    adaface = load_config(REPO / "configs" / "ms1mv2_vit_s_adaface.py")
    differing = {key for key in released if released[key] != adaface[key]}
    assert differing == {"loss", "loss_params", "output"}
    assert adaface.loss == "adaface" and adaface.loss_params["m"] == 0.4 and adaface.loss_params["h"] == 0.333
    assert adaface.dpap and adaface.ehsm and adaface.network == "vit_s_dp005_mask_0"
