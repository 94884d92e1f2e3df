"""AdaFace (Kim, Jain, Liu, CVPR 2022): a margin that adapts to the feature norm, as mk-minchul/AdaFace
`head.py` computes it, with its norm statistics taken over the global batch.

Legend: N global batch, S classes of this rank used in the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from losses.common import update_if_finite_
from utils.errors import UserError

_EPS = 1e-3  # the released eps: cosine clamp ±(1 − eps), angle clip [eps, π − eps], σ + eps
_NORM_RANGE = (0.001, 100.0)  # the released clip of the norms before the statistics ("for stability")


class AdaFaceLoss(nn.Module):
    """Target logit s·[cos(clip(θ − m·ŝ, ε, π − ε)) − m − m·ŝ], ŝ = clip(h·(‖x‖ − μ)/(σ + ε), −1, 1).

    Every cosine is first clamped to ±(1 − ε), ε = 1e-3 (gradient 0 beyond); the other logits are s·cos.
    The norm is detached. μ and σ (buffers `batch_mean` 20 and `batch_std` 100 at the start) are updated
    before use in each training forward: μ ← α·mean(ã) + (1 − α)·μ, σ ← α·std(ã) + (1 − α)·σ, with
    ã = clip(‖x‖, 0.001, 100), std unbiased and α = t_alpha.

    Departures from head.py: the statistics are over all N rows of the global batch (the released code
    used each GPU's sub-batch, so its state depended on the number of GPUs), and they are not updated in
    eval mode (the released code updated them on every forward); a global batch of one sample leaves σ
    as it is (the released σ became NaN), and so does a batch with a non-finite norm (μ and σ both: the
    released state became NaN for good; train.py skips that step).

    Args:
        m: margin (the paper's 0.4). h: share of the margin that adapts to the norm (0.333).
        s: logit scale. t_alpha: momentum of the norm statistics (0.01, config.py's value).
    """

    def __init__(self, m: float = 0.4, h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01):
        super().__init__()
        if not 0.0 < t_alpha <= 1.0:
            raise UserError(f"AdaFace t_alpha is {t_alpha}; it must be in (0, 1] (loss_params t_alpha).")
        if s <= 0:
            raise UserError(f"AdaFace s is {s}; the logit scale must be positive (loss_params s).")
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    @torch.no_grad()
    def prepare_(self, rows):
        """Update μ and σ from the global batch's norms rows.norms [N] (training mode only)."""
        if self.training:
            safe_norms = rows.norms.clip(*_NORM_RANGE)  # [N]
            update_if_finite_(self.batch_mean, safe_norms.mean() * self.t_alpha + (1 - self.t_alpha) * self.batch_mean,
                              safe_norms)
            if safe_norms.numel() > 1:  # the unbiased std of one norm is NaN, which would stay in σ for good
                update_if_finite_(self.batch_std, safe_norms.std() * self.t_alpha + (1 - self.t_alpha) * self.batch_std,
                                  safe_norms)
        return rows

    def _margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """ŝ [N] from the norms [N]."""
        safe_norms = norms.clip(*_NORM_RANGE)
        margin_scaler = (safe_norms - self.batch_mean) / (self.batch_std + _EPS)
        return torch.clip(margin_scaler * self.h, -1, 1)

    def margin_value_and_slope(self, cos_target: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Target value [N] and its exact derivative in cos θ [N] (0 where a clamp or clip binds)."""
        cosine = cos_target.clamp(-1 + _EPS, 1 - _EPS)  # [N]
        margin_scaler = self._margin_scaler(rows.norms)  # [N]
        theta_m = cosine.acos() - self.m * margin_scaler  # [N]
        clipped = torch.clip(theta_m, min=_EPS, max=math.pi - _EPS)
        value = clipped.cos() - (self.m + self.m * margin_scaler)
        inside = (clipped == theta_m) & (cosine == cos_target)
        slope = torch.where(inside, clipped.sin() / torch.sqrt(1 - cosine * cosine), 0.0)
        return value, slope

    def adjust_non_targets_(self, cosine: torch.Tensor, target_column: torch.Tensor, has_target: torch.Tensor,
                            target_value: torch.Tensor, rows) -> torch.Tensor:
        """Clamp the cosines [N, S] to ±(1 − ε) in place; bool [N, S], False where the clamp bound."""
        inside = cosine.le(1 - _EPS).logical_and_(cosine.ge(-1 + _EPS))  # [N, S], 1 byte per entry
        cosine.clamp_(-1 + _EPS, 1 - _EPS)
        return inside

    def extra_repr(self) -> str:
        return f"m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha}"
