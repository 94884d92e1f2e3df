"""CombinedMarginLoss against the direct margin formulas (values and both gradient modes), the registry of heads
by name, and EHSM weights against a NumPy computation."""

import math

import numpy as np
import pytest
import torch

from losses import LOSS_NAMES, CombinedMarginLoss, ehsm_weights, get_margin_loss, loss_defaults
from partial_fc import BatchRows
from utils.errors import UserError

S = 64.0
MARGINS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "combined": (1.0, 0.3, 0.2),
    "multiplicative": (1.2, 0.1, 0.05),
}


def direct_target(cos_target: torch.Tensor, m1: float, m2: float, m3: float) -> torch.Tensor:
    """cos(m1·θ + m2) − m3 written out with torch.arccos, differentiable (float64 for the reference)."""
    return torch.cos(m1 * torch.arccos(cos_target) + m2) - m3


def cosines_and_labels(num_rows=6, num_classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Away from ±1 and from the tail region θ > π − m2, where the direct formula wraps.
    cosine = torch.empty(num_rows, num_classes).uniform_(-0.6, 0.9, generator=generator)
    labels = torch.randint(0, num_classes, (num_rows,), generator=generator)
    labels[1] = -1  # this row's class lives in another shard
    return cosine, labels


@pytest.mark.parametrize("name", MARGINS)
def test_forward_equals_direct_formula_on_target_and_scaled_cosine_elsewhere(name):
    m1, m2, m3 = MARGINS[name]
    cosine, labels = cosines_and_labels()
    logits = CombinedMarginLoss(S, m1, m2, m3)(cosine, labels)
    expected = S * cosine.double()
    rows = torch.nonzero(labels >= 0).squeeze(1)  # [P]
    expected[rows, labels[rows]] = S * direct_target(cosine.double()[rows, labels[rows]], m1, m2, m3)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", MARGINS)
def test_released_gradient_is_straight_through_s_everywhere(name):
    cosine, labels = cosines_and_labels()
    cosine.requires_grad_(True)
    upstream = torch.randn(cosine.shape, generator=torch.Generator().manual_seed(1))
    (CombinedMarginLoss(S, *MARGINS[name])(cosine, labels) * upstream).sum().backward()
    torch.testing.assert_close(cosine.grad, S * upstream)


@pytest.mark.parametrize("name", MARGINS)
def test_exact_gradient_equals_autograd_of_direct_formula(name):
    m1, m2, m3 = MARGINS[name]
    cosine, labels = cosines_and_labels()
    cosine.requires_grad_(True)
    upstream = torch.randn(cosine.shape, generator=torch.Generator().manual_seed(1))
    (CombinedMarginLoss(S, m1, m2, m3, exact_gradient=True)(cosine, labels) * upstream).sum().backward()

    reference = cosine.detach().double().requires_grad_(True)
    rows = torch.nonzero(labels >= 0).squeeze(1)  # [P]
    is_target = torch.zeros(cosine.shape, dtype=torch.bool)
    is_target[rows, labels[rows]] = True
    adjusted = torch.where(is_target, direct_target(reference, m1, m2, m3), reference)
    (S * adjusted * upstream.double()).sum().backward()
    torch.testing.assert_close(cosine.grad.double(), reference.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m2", [0.5, 1.0])
def test_target_logit_past_pi_continues_monotonically_instead_of_wrapping(m2):
    """Guards against the released wrap-around: cos(θ + m2) rises again once θ + m2 > π."""
    margin = CombinedMarginLoss(1.0, 1.0, m2, 0.1)
    cos_target = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)
    value, slope = margin.margin_value_and_slope(cos_target)
    assert torch.all(value.diff() > 0)  # strictly increasing in cos θ, i.e. decreasing in θ
    assert torch.all(value <= cos_target)  # still a penalty on the target
    theta_star = math.pi - m2
    around_switch = torch.tensor([math.cos(theta_star) - 1e-9, math.cos(theta_star) + 1e-9], dtype=torch.float64)
    below, above = margin.margin_value_and_slope(around_switch)[0]
    assert abs(above - below) < 1e-8  # continuous where the tail takes over
    in_tail = torch.arccos(cos_target) > theta_star
    assert in_tail.any() and (~in_tail).any()
    tail_expected = cos_target - (1.0 + 0.1 + math.cos(theta_star))
    torch.testing.assert_close(value[in_tail], tail_expected[in_tail])
    torch.testing.assert_close(value[~in_tail], direct_target(cos_target[~in_tail], 1.0, m2, 0.1))
    assert torch.all(slope[in_tail] == 1.0)


def test_exact_gradient_stays_finite_at_cosine_one():
    cosine = torch.tensor([[1.0, 0.2], [0.3, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    CombinedMarginLoss(S, 1.0, 0.5, 0.0, exact_gradient=True)(cosine, labels).sum().backward()
    assert torch.isfinite(cosine.grad).all()


def test_inputs_outside_unit_interval_are_clamped_with_zero_gradient():
    cosine = torch.tensor([[1.5, -2.0, 0.5]], requires_grad=True)
    logits = CombinedMarginLoss(S, 1.0, 0.0, 0.4)(cosine, torch.tensor([2]))
    torch.testing.assert_close(logits, torch.tensor([[S, -S, S * 0.1]]))
    logits.sum().backward()
    torch.testing.assert_close(cosine.grad, torch.tensor([[0.0, 0.0, S]]))


def test_interclass_filtering_zeroes_non_target_cosines_above_threshold():
    cosine = torch.tensor([[0.9, 0.5, 0.1],   # target 0 above the threshold: kept
                           [0.6, 0.5, 0.45],  # target 2: column 0 and 1 filtered
                           [0.7, 0.3, 0.2]],  # class elsewhere: every column may be filtered
                          requires_grad=True)
    labels = torch.tensor([0, 2, -1])
    margin = CombinedMarginLoss(S, 1.0, 0.0, 0.0, interclass_filtering_threshold=0.4)
    logits = margin(cosine, labels)
    expected = S * torch.tensor([[0.9, 0.0, 0.1], [0.0, 0.0, 0.45], [0.0, 0.3, 0.2]])
    torch.testing.assert_close(logits, expected)
    logits.sum().backward()
    torch.testing.assert_close(cosine.grad, S * (expected != 0).float())


def test_zero_threshold_disables_filtering():
    cosine, labels = cosines_and_labels()
    torch.testing.assert_close(CombinedMarginLoss(S, 1.0, 0.0, 0.0)(cosine, labels), S * cosine)


def test_forward_leaves_the_callers_cosines_unchanged():
    cosine, labels = cosines_and_labels()
    before = cosine.clone()
    CombinedMarginLoss(S, 1.0, 0.5, 0.0, interclass_filtering_threshold=0.3)(cosine, labels)
    assert torch.equal(cosine, before)


def numpy_ehsm(patch_std: np.ndarray, gamma: float, top_k, rule: str) -> np.ndarray:
    std = np.sort(patch_std.astype(np.float64), axis=1)[:, ::-1]
    if top_k is not None:
        std = std[:, :top_k]
    if rule == "released":
        hardness = std.mean(axis=1)
    else:
        entropy = np.log(std) + 0.5 + 0.5 * np.log(2 * np.pi)
        hardness = entropy.mean(axis=1) if rule == "entropy_mean" else entropy.sum(axis=1)
    return 1.0 + np.exp(-gamma * hardness)


@pytest.mark.parametrize("rule", ["released", "entropy_mean", "entropy_sum"])
@pytest.mark.parametrize("top_k", [None, 1, 5])
def test_ehsm_weights_equal_numpy_computation(rule, top_k):
    generator = torch.Generator().manual_seed(3)
    patch_std = torch.rand(4, 16, generator=generator) * 0.8 + 0.6  # [B, N], σ where the sum is finite
    weights = ehsm_weights(patch_std, gamma=0.7, top_k=top_k, rule=rule)
    expected = numpy_ehsm(patch_std.numpy(), 0.7, top_k, rule)
    assert weights.shape == (4,) and weights.dtype == torch.float32
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_ehsm_released_default_is_one_plus_exp_of_minus_mean_std():
    patch_std = torch.tensor([[0.5, 1.5, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(ehsm_weights(patch_std), torch.tensor([1 + math.exp(-1.0), 2.0]))


def test_ehsm_weights_carry_no_gradient():
    patch_std = torch.rand(3, 8, requires_grad=True)
    assert not ehsm_weights(patch_std).requires_grad


@pytest.mark.parametrize("rule", ["entropy_mean", "entropy_sum"])
def test_ehsm_zero_std_is_clamped_not_nan(rule):
    patch_std = torch.tensor([[0.0, 1.0, 2.0]])
    weights = ehsm_weights(patch_std, gamma=0.0, rule=rule)  # 0 · ln 0 would be NaN without the clamp
    torch.testing.assert_close(weights, torch.tensor([2.0]))


def test_ehsm_bad_top_k_and_rule_raise_user_errors_naming_the_key():
    with pytest.raises(UserError, match="ehsm_top_k"):
        ehsm_weights(torch.rand(2, 8), top_k=9)
    with pytest.raises(UserError, match="ehsm_rule"):
        ehsm_weights(torch.rand(2, 8), rule="entropy")


def test_registry_builds_the_combined_margins_with_overrides():
    assert {"combined", "arcface", "cosface"} <= set(LOSS_NAMES)
    arcface = get_margin_loss("arcface")
    assert (arcface.s, arcface.m1, arcface.m2, arcface.m3) == (64.0, 1.0, 0.5, 0.0)
    cosface = get_margin_loss("cosface", m=0.35, s=30.0)
    assert (cosface.s, cosface.m1, cosface.m2, cosface.m3) == (30.0, 1.0, 0.0, 0.35)
    combined = get_margin_loss("combined", m1=1.0, m2=0.3, m3=0.2, exact_gradient=True)
    assert (combined.m2, combined.m3, combined.exact_gradient) == (0.3, 0.2, True)
    assert set(loss_defaults("combined")) == {"s", "m1", "m2", "m3", "interclass_filtering_threshold",
                                              "exact_gradient"}


def test_registry_names_the_closest_loss_and_parameter():
    with pytest.raises(UserError, match="did you mean 'arcface'"):
        get_margin_loss("arcfce")
    with pytest.raises(UserError, match="did you mean 'm'"):
        get_margin_loss("cosface", mm=0.3)
    with pytest.raises(UserError, match="did you mean 'cosface'"):
        loss_defaults("cosfac")


def test_registry_selects_the_released_branches_magface_hard_margin_and_elasticface_wrap():
    """easy_margin and continue_tail reach the heads, so a config can pick MagFace's non-easy margin and
    ElasticArcFace's released wrap past θ + m = π (with continue_tail the target keeps falling instead)."""
    assert loss_defaults("magface")["easy_margin"] is True
    assert get_margin_loss("magface", easy_margin=False).easy_margin is False
    cos_target = torch.tensor([math.cos(math.pi - 0.1)])  # θ = π - 0.1, θ + m = π + 0.4: past the tail
    rows = BatchRows(norms=torch.ones(1), cos_target=cos_target, margins=torch.tensor([0.5]))
    wrapped = get_margin_loss("elasticface_arc", continue_tail=False).margin_value_and_slope(cos_target, rows)[0]
    continued = get_margin_loss("elasticface_arc").margin_value_and_slope(cos_target, rows)[0]
    assert wrapped.item() == pytest.approx(math.cos(math.pi + 0.4), abs=1e-6)  # the released wrap: rises again
    assert continued.item() == pytest.approx(cos_target.item() - (1 - math.cos(0.5)), abs=1e-6)
