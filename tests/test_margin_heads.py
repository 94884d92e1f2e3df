"""Every margin head inside PartialFC against its fixture from the authors' released code
(tests/data/losses/README.md): loss, d/d embeddings, d/d centres, state after one and two steps, and
ElasticFace's draws."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import losses
from partial_fc import BatchRows, PartialFC

FIXTURES = Path(__file__).parent / "data" / "losses"


def load(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array)).float()


def assert_matches(actual: torch.Tensor, expected, what: str) -> None:
    """Within 1e-5 of the largest reference magnitude (at least 1), the fixture README's scale."""
    expected = torch.from_numpy(np.asarray(expected)).double()
    scale = max(expected.abs().max().item(), 1.0)
    error = (actual.detach().double().reshape(expected.shape) - expected).abs().max().item()
    assert error <= 1e-5 * scale, f"{what}: max error {error:.3g} exceeds 1e-5 × {scale:.3g}"


def assert_state_matches(actual: torch.Tensor, expected, what: str) -> None:
    """Running state within 1e-6 relative per entry: the README's states agree to 1e-7, and the state is
    where a wrong statistic shows (a biased std moves the logits by 3e-5 but σ by 3e-3)."""
    expected = torch.from_numpy(np.asarray(expected)).double()
    error = ((actual.detach().double().reshape(expected.shape) - expected).abs() / expected.abs()).max().item()
    assert error <= 1e-6, f"{what}: max relative error {error:.3g} exceeds 1e-6"


def step(pfc: PartialFC, embeddings, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d/d embeddings, d/d centres) of one forward and backward."""
    embeddings = tensor(embeddings).requires_grad_(True)
    pfc.zero_grad()
    loss = pfc(embeddings, torch.from_numpy(labels))
    loss.backward()
    return loss.detach(), embeddings.grad, pfc.weight.grad.clone()


def head_in_pfc(head, fixture: dict) -> PartialFC:
    centres = tensor(fixture["centres"])
    pfc = PartialFC(head, centres.shape[1], centres.shape[0])
    with torch.no_grad():
        pfc.weight.copy_(centres)
    return pfc


def check_step(pfc, fixture, suffix: str = "") -> None:
    loss, grad_embeddings, grad_centres = step(pfc, fixture["embeddings" + suffix], fixture["labels" + suffix])
    assert_matches(loss, fixture["loss" + suffix], "loss" + suffix)
    assert_matches(grad_embeddings, fixture["grad_embeddings" + suffix], "grad_embeddings" + suffix)
    assert_matches(grad_centres, fixture["grad_centres" + suffix], "grad_centres" + suffix)


# The fixtures' released settings under the registry's names: {loss: (params section, {ours: released})}.
RELEASED_SETTINGS = {
    "adaface": ("AdaFace", {"m": "m", "h": "h", "s": "s", "t_alpha": "t_alpha"}),
    "magface": ("MagLoss", {"l_a": "l_a", "u_a": "u_a", "l_margin": "l_margin", "u_margin": "u_margin"}),
    "curricularface": ("CurricularFace", {"m": "m", "s": "s"}),
    "elasticface_arc": ("ElasticArcFace", {"m": "m", "s": "s", "std": "std"}),
    "elasticface_arc_plus": ("ElasticArcFace", {"m": "m", "s": "s", "std": "std"}),
    "elasticface_cos": ("ElasticCosFace", {"m": "m", "s": "s", "std": "std"}),
    "elasticface_cos_plus": ("ElasticCosFace", {"m": "m", "s": "s", "std": "std"}),
    "uniface": ("Unified_Cross_Entropy_Loss", {"m": "m", "s": "s", "l": "l"}),
}


@pytest.mark.parametrize("name", RELEASED_SETTINGS)
def test_registry_defaults_are_the_released_settings_of_the_fixtures(name):
    """The fixtures ran each head with the settings of its paper's main results (README); ElasticFace's
    fixture tests inject the draws, so only this pins its m and std."""
    params = json.loads(str(load(name)["params"]))
    section, names = RELEASED_SETTINGS[name]
    released = {ours: params[section][theirs] for ours, theirs in names.items()}
    if name == "magface":
        released.update(s=params["MagLinear"]["scale"], lambda_g=params["trainer"]["lambda_g"])
    defaults = losses.loss_defaults(name)
    assert {key: defaults[key] for key in released} == released


def test_adaface_equals_the_released_head_over_two_steps():
    fixture = load("adaface")
    head = losses.get_margin_loss("adaface")
    assert_state_matches(torch.cat([head.batch_mean, head.batch_std]), fixture["state_init"], "state_init")
    pfc = head_in_pfc(head, fixture)
    check_step(pfc, fixture)
    assert_state_matches(torch.cat([head.batch_mean, head.batch_std]), fixture["state_step1"], "state_step1")
    check_step(pfc, fixture, "_step2")
    assert_state_matches(torch.cat([head.batch_mean, head.batch_std]), fixture["state_step2"], "state_step2")


def test_curricularface_equals_the_released_head_over_two_steps():
    fixture = load("curricularface")
    head = losses.get_margin_loss("curricularface")
    pfc = head_in_pfc(head, fixture)
    check_step(pfc, fixture)
    assert_state_matches(head.t, fixture["state_step1"], "state_step1")
    check_step(pfc, fixture, "_step2")
    assert_state_matches(head.t, fixture["state_step2"], "state_step2")


def released_curricularface(embeddings, centres, labels, t, m=0.5, s=64.0):
    """(loss, new t) of HuangYG123/CurricularFace `head/metrics.py` written out line by line (autograd)."""
    cos_theta = (torch.nn.functional.normalize(embeddings) @ torch.nn.functional.normalize(centres).t()).clamp(-1, 1)
    target_logit = cos_theta[torch.arange(labels.numel()), labels].view(-1, 1)
    sin_theta = torch.sqrt(1.0 - target_logit.pow(2))
    cos_theta_m = target_logit * math.cos(m) - sin_theta * math.sin(m)
    mask = cos_theta > cos_theta_m  # φ, also on the rows of the fallback branch below
    final_target_logit = torch.where(target_logit > math.cos(math.pi - m), cos_theta_m,
                                     target_logit - math.sin(math.pi - m) * m)
    hard_example = cos_theta[mask]
    t = target_logit.detach().mean() * 0.01 + 0.99 * t
    cos_theta = cos_theta.clone()
    cos_theta[mask] = hard_example * (t + hard_example)
    cos_theta = cos_theta.scatter(1, labels.view(-1, 1), final_target_logit)
    return torch.nn.functional.cross_entropy(cos_theta * s, labels), t


def test_curricularface_hard_negative_mask_uses_phi_on_fallback_rows():
    """Row 0 takes the fallback branch (c_y = −0.9 < cos(π − m)): its mask threshold is φ = −0.99881, not
    its target value c_y − m·sin m = −1.1397, so its negative at −0.9995 stays easy (s·c, not s·c(t + c)).
    The fixtures have no negative between the two thresholds."""
    embeddings = torch.tensor([[20.0, 0, 0, 0], [0, 0, 0, 15.0]], dtype=torch.float64)  # [2, 4]
    labels = torch.tensor([0, 1])
    centres = torch.tensor([[-0.9, math.sqrt(1 - 0.81), 0, 0],  # row 0's target, cos −0.9
                            [0, 0.6, 0, 0.8],  # row 1's target, cos 0.8 (margin branch)
                            [-0.9995, 0, math.sqrt(1 - 0.9995**2), 0],  # row 0: cos −0.9995, below φ
                            [0.3, 0, 0, math.sqrt(1 - 0.09)]], dtype=torch.float64)  # row 0: 0.3; row 1: 0.954
    x = embeddings.clone().requires_grad_(True)
    w = centres.clone().requires_grad_(True)
    expected, t = released_curricularface(x, w, labels, torch.zeros(1, dtype=torch.float64))
    expected.backward()
    head = losses.get_margin_loss("curricularface")
    pfc = PartialFC(head, 4, 4)
    with torch.no_grad():
        pfc.weight.copy_(centres.float())
    loss, grad_embeddings, grad_centres = step(pfc, embeddings.float().numpy(), labels.numpy())
    assert_matches(loss, expected.detach().numpy(), "loss")
    assert_matches(grad_embeddings, x.grad.numpy(), "d/d embeddings")
    assert_matches(grad_centres, w.grad.numpy(), "d/d centres")
    assert_state_matches(head.t, t.numpy(), "t")


@pytest.mark.parametrize("name", ["adaface", "curricularface"])
def test_running_state_moves_in_training_mode_only(name):
    fixture = load(name)
    pfc = head_in_pfc(losses.get_margin_loss(name), fixture)
    before = {k: v.clone() for k, v in pfc.margin_loss.state_dict().items()}
    pfc.eval()
    with torch.no_grad():
        pfc(tensor(fixture["embeddings"]), torch.from_numpy(fixture["labels"]))
    assert all(torch.equal(v, pfc.margin_loss.state_dict()[k]) for k, v in before.items())
    pfc.train()
    pfc(tensor(fixture["embeddings"]), torch.from_numpy(fixture["labels"]))
    assert not all(torch.equal(v, pfc.margin_loss.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", ["adaface", "curricularface"])
def test_a_non_finite_batch_leaves_the_running_state_as_it_was(name):
    """train.py skips a step whose loss is not finite; the state must not turn NaN in it, or every later step
    would be NaN too. The next finite step then moves the state as in the fixture's first step."""
    fixture = load(name)
    head = losses.get_margin_loss(name)
    pfc = head_in_pfc(head, fixture)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    broken = fixture["embeddings"].copy()
    broken[3] = np.nan
    loss, _, _ = step(pfc, broken, fixture["labels"])
    assert not torch.isfinite(loss)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    check_step(pfc, fixture)
    assert_state_matches(torch.cat([b.flatten() for b in head.buffers()]), fixture["state_step1"], "state_step1")


def test_magface_equals_the_released_loss_with_its_regulariser():
    fixture = load("magface")
    params = json.loads(str(fixture["params"]))
    assert params["trainer"]["lambda_g"] == losses.loss_defaults("magface")["lambda_g"]
    check_step(head_in_pfc(losses.get_margin_loss("magface"), fixture), fixture)


@pytest.mark.parametrize("name", ["elasticface_arc", "elasticface_cos", "elasticface_arc_plus",
                                  "elasticface_cos_plus"])
def test_elasticface_equals_the_released_head_with_its_draws_injected(name):
    fixture = load(name)
    head = losses.get_margin_loss(name)
    head.continue_tail = False  # the released wrap past θ + m = π (sample 0 is there for the arc variants)
    head.inject_margins(tensor(fixture["margins"]))  # the raw draws: the "+" variants reorder them
    pfc = head_in_pfc(head, fixture)
    check_step(pfc, fixture)


def test_elasticface_plus_assigns_the_released_gather_or_by_rank():
    cos_target = torch.tensor([0.1, 0.9, 0.5, 0.3])  # the reference's example
    draws = torch.tensor([0.52, 0.47, 0.55, 0.50])
    released = assigned_margins(losses.ElasticFaceLoss(plus=True, angular=False), cos_target, draws)
    torch.testing.assert_close(released, torch.tensor([0.50, 0.52, 0.55, 0.47]))
    matched = assigned_margins(losses.ElasticFaceLoss(plus=True, rank_matching=True), cos_target, draws)
    torch.testing.assert_close(matched, torch.tensor([0.55, 0.47, 0.50, 0.52]))


def assigned_margins(head, cos_target, draws) -> torch.Tensor:
    """The margins [N] a "+" head assigns to the rows of these target cosines [N] from these draws [N]."""
    head.inject_margins(draws)
    return head.prepare_(BatchRows(torch.ones_like(cos_target), cos_target)).margins


def fixture_cosine(fixture: dict, row: int) -> float:
    """The target cosine of one fixture row, in float64."""
    unit = fixture["embeddings"][row] / np.linalg.norm(fixture["embeddings"][row])
    centre = fixture["centres"][fixture["labels"][row]]
    return float(unit @ centre / np.linalg.norm(centre))


def ce_with_tail(fixture: dict, margin: float) -> float:
    """Mean CE of the fixture's logits with sample 0's wrapped target (θ + m > π) replaced by the tail
    s·(cos θ − (1 − cos m)) that CombinedMarginLoss and ElasticArcFace continue with."""
    logits = torch.from_numpy(fixture["logits"]).clone()  # [B, C] float64
    labels = torch.from_numpy(fixture["labels"])
    cos_target = fixture_cosine(fixture, 0)  # -0.95
    assert math.acos(cos_target) + margin > math.pi
    assert abs(logits[0, labels[0]].item() / 64.0 - math.cos(math.acos(cos_target) + margin)) < 1e-5  # wrapped
    logits[0, labels[0]] = 64.0 * (cos_target - (1 - math.cos(margin)))
    return torch.nn.functional.cross_entropy(logits, labels).item()


def test_elasticarcface_continues_the_tail_past_pi():
    """The only departure on the fixture: sample 0 gets the tail instead of the wrapped cos(θ + m)."""
    fixture = load("elasticface_arc")
    head = losses.get_margin_loss("elasticface_arc")
    head.inject_margins(tensor(fixture["margins"]))
    loss, _, _ = step(head_in_pfc(head, fixture), fixture["embeddings"], fixture["labels"])
    expected = ce_with_tail(fixture, fixture["margins"][0])
    assert abs(loss.item() - expected) <= 1e-5 * expected


def test_arcface_control_equals_insightface_but_for_the_tail_and_the_cap():
    """insightface's ArcFace in its PartialFC_V2: the same gradients (straight-through; sample 0's softmax
    target is e^-90 either way), the loss the plain CE of its logits with sample 0 on the tail."""
    fixture = load("insightface_arcface")
    loss, grad_embeddings, grad_centres = step(head_in_pfc(losses.get_margin_loss("arcface"), fixture),
                                               fixture["embeddings"], fixture["labels"])
    assert_matches(grad_embeddings, fixture["grad_embeddings"], "grad_embeddings")
    assert_matches(grad_centres, fixture["grad_centres"], "grad_centres")
    expected = ce_with_tail(fixture, 0.5)
    assert abs(loss.item() - expected) <= 1e-5 * expected


def test_elasticface_draws_follow_the_normal_distribution_and_the_seed():
    head = losses.get_margin_loss("elasticface_arc_plus", seed=5)
    draws = torch.cat([head.draw_margins(1000) for _ in range(20)])  # [20000]
    assert abs(draws.mean().item() - 0.5) < 4 * 0.0175 / math.sqrt(draws.numel())
    assert abs(draws.std().item() - 0.0175) < 0.0175 * 0.03
    again = losses.get_margin_loss("elasticface_arc_plus", seed=5)
    torch.testing.assert_close(again.draw_margins(1000), draws[:1000], rtol=0, atol=0)
    other = losses.get_margin_loss("elasticface_arc_plus", seed=6)
    assert not torch.equal(other.draw_margins(1000), draws[:1000])


def test_elasticface_generator_state_travels_with_the_state_dict():
    head = losses.get_margin_loss("elasticface_cos", seed=1)
    head.draw_margins(7)
    state = head.state_dict()
    expected = head.draw_margins(16)
    resumed = losses.get_margin_loss("elasticface_cos", seed=99)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.draw_margins(16), expected, rtol=0, atol=0)


def test_uniface_equals_the_released_loss_and_its_bias_gradient():
    fixture = load("uniface")
    head = losses.get_margin_loss("uniface")
    pfc = head_in_pfc(head, fixture)
    assert_matches(head.bias, fixture["bias"], "bias init log(C·r·10)")
    check_step(pfc, fixture)
    assert_matches(head.bias.grad, fixture["grad_bias"], "grad_bias")


def released_uniface(x, w, bias, labels, m, s, l):  # noqa: E741
    """CVI-SZU/UniFace `head.py`'s Unified_Cross_Entropy_Loss forward written out (autograd, r = 1)."""
    F = torch.nn.functional
    cos_theta = F.linear(F.normalize(x, eps=1e-5), F.normalize(w, eps=1e-5))
    cos_m_theta_p = s * (cos_theta - m) - bias
    cos_m_theta_n = s * cos_theta - bias
    p_loss = torch.log(1 + torch.exp(-cos_m_theta_p.clamp(min=-s, max=s)))
    n_loss = torch.log(1 + torch.exp(cos_m_theta_n.clamp(min=-s, max=s))) * l
    one_hot = torch.zeros_like(cos_theta, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)
    return (one_hot * p_loss + (~one_hot) * n_loss).sum(dim=1).mean()


def test_uniface_with_a_negative_weight_l_below_one_equals_the_released_formula():
    """The fixture has l = 1; l = 0.7 weights the negative terms and their gradients only (the clamp at −s
    still binds on sample 0's target)."""
    fixture = load("uniface")
    x = torch.from_numpy(fixture["embeddings"]).requires_grad_(True)  # float64
    w = torch.from_numpy(fixture["centres"]).requires_grad_(True)
    bias = torch.from_numpy(fixture["bias"]).requires_grad_(True)
    labels = torch.from_numpy(fixture["labels"])
    expected = released_uniface(x, w, bias, labels, m=0.4, s=64.0, l=0.7)
    expected.backward()
    head = losses.get_margin_loss("uniface", l=0.7)
    pfc = head_in_pfc(head, fixture)
    loss, grad_embeddings, grad_centres = step(pfc, fixture["embeddings"], fixture["labels"])
    assert_matches(loss, expected.detach().numpy(), "loss")
    assert_matches(grad_embeddings, x.grad.numpy(), "d/d embeddings")
    assert_matches(grad_centres, w.grad.numpy(), "d/d centres")
    assert_matches(head.bias.grad, bias.grad.numpy(), "d/d bias")


def test_uniface_bias_starts_at_log_of_ten_times_the_sampled_classes():
    pfc = PartialFC(losses.get_margin_loss("uniface"), 4, 1000, sample_rate=0.5)
    assert pfc.margin_loss.bias.item() == pytest.approx(math.log(1000 * 0.5 * 10))
    assert losses.UniFaceLoss(bias_init=2.5).bias.item() == 2.5


def adaface_target(mean: float, std: float, norms, cosines):
    """64 × AdaFace's target value and its slope in cos θ for these norms [N] and target cosines [N], from a
    head whose μ and σ are set (eval mode: its forward would not move them)."""
    head = losses.get_margin_loss("adaface").eval()
    head.batch_mean.fill_(mean)
    head.batch_std.fill_(std)
    norms, cosines = torch.tensor(norms), torch.tensor(cosines)
    value, slope = head.margin_value_and_slope(cosines, BatchRows(norms, None))
    return 64.0 * value, 64.0 * slope


def test_adaface_margin_scaler_and_angle_clips_with_the_reference_examples():
    """The fixtures' norms keep ŝ far inside (−1, 1) and θ − m·ŝ inside [ε, π − ε]; these cases reach the clips.
    a = 30 and a = 80 (ŝ clipped to 1) with μ = 20, σ = 10 are the worked examples of margin_losses.md §2."""
    value, slope = adaface_target(20.0, 10.0, [30.0, 80.0, 80.0, 80.0], [0.5, 0.5, 0.9995, 0.99])
    assert value[0].item() == pytest.approx(4.95280, abs=2e-5) and slope[0].item() == pytest.approx(58.526, abs=2e-3)
    assert value[1].item() == pytest.approx(-0.14229, abs=2e-5)
    # cos clamped to 0.999, θ − m = 0.0447 − 0.4 clipped to ε: cos ε − 2m, no gradient.
    assert value[2].item() == pytest.approx(64.0 * (math.cos(1e-3) - 0.8), abs=2e-5) and slope[2].item() == 0.0
    # cos 0.99 is not clamped, but θ − m = 0.1415 − 0.4 is clipped to ε: the same value, no gradient either.
    assert value[3].item() == pytest.approx(64.0 * (math.cos(1e-3) - 0.8), abs=2e-5) and slope[3].item() == 0.0
    # μ = 60: ŝ = clip(0.333·(20 − 60)/10.001) = −1, so the margin is all angular; at cos −0.9995 (clamped to
    # −0.999) θ + m passes π − ε and is clipped there, no gradient.
    value, slope = adaface_target(60.0, 10.0, [20.0, 20.0], [0.5, -0.9995])
    assert value[0].item() == pytest.approx(64.0 * math.cos(math.acos(0.5) + 0.4), abs=2e-5)
    assert value[1].item() == pytest.approx(64.0 * math.cos(math.pi - 1e-3), abs=2e-5) and slope[1].item() == 0.0


def test_adaface_clamps_every_cosine_to_one_minus_eps():
    """A non-target cosine of 0.9995 is clamped to 0.999 (its logit s·0.999, no gradient to its centre);
    a cosine of 0.99 is not. A one-sample batch leaves σ finite (the released std would be NaN)."""
    embedding = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    centres = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, math.sqrt(1 / 0.9995**2 - 1), 0.0, 0.0],
                            [1.0, math.sqrt(1 / 0.99**2 - 1), 0.0, 0.0]])
    pfc = PartialFC(losses.get_margin_loss("adaface"), 4, 3)
    with torch.no_grad():
        pfc.weight.copy_(centres)
    loss = pfc(embedding.repeat(2, 1) * 20, torch.tensor([0, 0]))
    loss.backward()
    # Both norms are μ = 20, so ŝ = 0: the target (cosine 0) is cos(π/2) − m.
    expected = torch.nn.functional.cross_entropy(64.0 * torch.tensor([[math.cos(math.pi / 2) - 0.4, 0.999, 0.99]]),
                                                 torch.tensor([0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert pfc.weight.grad[1].abs().max() == 0
    assert pfc.weight.grad[2].abs().max() > 0
    pfc(embedding, torch.tensor([0]))
    assert torch.isfinite(pfc.margin_loss.batch_std).all()


@pytest.mark.parametrize("name", ["insightface_cosface"])
def test_cosface_control_equals_insightface_with_plain_ce(name):
    fixture = load(name)
    fixture["loss"] = fixture["loss_plain_ce"]  # the documented departure: no 1e-30 cap on p
    check_step(head_in_pfc(losses.get_margin_loss("cosface"), fixture), fixture)


def test_magface_threshold_branch_matches_autograd_of_the_released_formula():
    """easy_margin=False (not the released default): the threshold branch c − sin(π − m)·m below
    cos(π − m), its norm gradient included, against autograd of MagLinear's formula."""
    generator = torch.Generator().manual_seed(3)
    embeddings = (torch.randn(12, 6, generator=generator) * torch.linspace(2, 40, 12).unsqueeze(1))
    labels = torch.randint(0, 5, (12,), generator=generator)
    head = losses.MagFaceLoss(easy_margin=False)
    pfc = PartialFC(head, 6, 5)
    centres = pfc.weight.detach().clone().requires_grad_(True)
    with torch.no_grad():  # rows 0-3 get a target cosine near -1, below cos(π − m)
        centres[labels[:4]] = -embeddings[:4] + 0.01
    x = embeddings.clone().requires_grad_(True)
    a = x.norm(dim=1).clamp(head.l_a, head.u_a)
    margin = head.slope_a * (a - head.l_a) + head.l_margin
    cosine = (torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(centres).t()).clamp(-1, 1)
    c_y = cosine.gather(1, labels.unsqueeze(1)).squeeze(1)
    assert (c_y < torch.cos(math.pi - margin)).sum() >= 3
    phi = c_y * torch.cos(margin) - torch.sqrt(1 - c_y**2) * torch.sin(margin)
    target = torch.where(c_y > torch.cos(math.pi - margin), phi, c_y - torch.sin(math.pi - margin) * margin)
    logits = head.s * cosine.scatter(1, labels.unsqueeze(1), target.unsqueeze(1))
    expected = torch.nn.functional.cross_entropy(logits, labels) + head.lambda_g * (a / head.u_a**2 + 1 / a).mean()
    expected.backward()
    with torch.no_grad():
        pfc.weight.copy_(centres)
    loss, grad_embeddings, grad_centres = step(pfc, embeddings.numpy(), labels.numpy())
    assert_matches(loss, expected.detach().numpy(), "loss")
    assert_matches(grad_embeddings, x.grad.numpy(), "d/d embeddings")
    assert_matches(grad_centres, centres.grad.numpy(), "d/d centres")
