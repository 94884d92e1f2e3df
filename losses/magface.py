"""MagFace (Meng et al., CVPR 2021): a margin growing with the feature norm and a norm regulariser, as
IrvingMeng/MagFace `models/magface.py` and `run/trainer.py` (the DataParallel path) compute them.

Legend: N global batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from losses.common import guarded_sin
from utils.errors import UserError


class MagFaceLoss(nn.Module):
    """Target logit s·cos(θ + m(a)), a = clamp(‖x‖, l_a, u_a), m(a) = k·(a − l_a) + l_margin with
    k = (u_margin − l_margin)/(u_a − l_a); plus the regulariser λ_g·g(a), g(a) = a/u_a² + 1/a.

    Released details kept: the norm is not detached (cross-entropy pushes on it through m(a); a gets no
    gradient where its clamp binds); the exact gradient; easy_margin (True as released) keeps the target
    at s·cos θ where cos θ ≤ 0, otherwise the threshold form (cos θ − m·sin m below cos(π − m)).
    Departure: d/dcos θ of √(1 − cos²θ) is evaluated at θ clamped to [1e-3, π − 1e-3], so |cos θ| = 1
    gives a finite gradient instead of inf/NaN.

    The regulariser is part of each sample's loss: with EHSM sample weights w_n the loss is
    (1/N) Σ_n w_n (CE_n + λ_g g(a_n)), the weight multiplying the g-term too (weights 1: the released
    loss). Under Partial FC it is counted once over ranks.

    Args:
        s: logit scale. l_a, u_a: the norm range. l_margin, u_margin: the margins at l_a and u_a.
        lambda_g: weight of g (35, the paper's runs). easy_margin: the released default True.
    """

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_margin: float = 0.45,
                 u_margin: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True):
        super().__init__()
        if not 0 < l_a < u_a:
            raise UserError(f"MagFace l_a, u_a are {l_a}, {u_a}; they need 0 < l_a < u_a (loss_params).")
        self.s, self.l_a, self.u_a = float(s), float(l_a), float(u_a)
        self.l_margin, self.u_margin, self.lambda_g = float(l_margin), float(u_margin), float(lambda_g)
        self.easy_margin = bool(easy_margin)
        self.slope_a = (self.u_margin - self.l_margin) / (self.u_a - self.l_a)

    def _norm_and_margin(self, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a [N] clamped, m(a) [N], bool [N]: the clamp lets the gradient through)."""
        a = norms.clamp(self.l_a, self.u_a)
        return a, self.slope_a * (a - self.l_a) + self.l_margin, (norms >= self.l_a) & (norms <= self.u_a)

    def _branches(self, cos_target: torch.Tensor, margin: torch.Tensor):
        """(sin θ [N], sin θ guarded [N], bool [N]: the margin branch applies)."""
        sin_theta = torch.sqrt(1.0 - cos_target.pow(2))
        guarded = guarded_sin(cos_target)
        margin_branch = cos_target > 0 if self.easy_margin else cos_target > torch.cos(math.pi - margin)
        return sin_theta, guarded, margin_branch

    def margin_value_and_slope(self, cos_target: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
        _, margin, _ = self._norm_and_margin(rows.norms)
        cos_m, sin_m = torch.cos(margin), torch.sin(margin)
        sin_theta, guarded, margin_branch = self._branches(cos_target, margin)
        cos_theta_m = cos_target * cos_m - sin_theta * sin_m
        fallback = cos_target if self.easy_margin else cos_target - torch.sin(math.pi - margin) * margin
        value = torch.where(margin_branch, cos_theta_m, fallback)
        slope = torch.where(margin_branch, cos_m + cos_target * sin_m / guarded, 1.0)
        return value, slope

    def margin_norm_slope(self, cos_target: torch.Tensor, rows) -> torch.Tensor:
        """d target value / d ‖x‖ [N]: −k·sin(θ + m) on the margin branch, 0 where a is clamped."""
        _, margin, passes = self._norm_and_margin(rows.norms)
        cos_m, sin_m = torch.cos(margin), torch.sin(margin)
        sin_theta, _, margin_branch = self._branches(cos_target, margin)
        on_margin = -(cos_target * sin_m + sin_theta * cos_m)
        fallback = 0.0 if self.easy_margin else -(torch.sin(math.pi - margin) + margin * cos_m)
        return torch.where(passes, self.slope_a * torch.where(margin_branch, on_margin, fallback), 0.0)

    def norm_regulariser(self, norms: torch.Tensor) -> torch.Tensor:
        """λ_g·g(a) per sample [N] from the norms [N], differentiable (0 gradient where a is clamped)."""
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (1 / (self.u_a ** 2) * a + 1 / a)

    def extra_repr(self) -> str:
        return (f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_margin={self.l_margin}, u_margin={self.u_margin}, "
                f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}")
