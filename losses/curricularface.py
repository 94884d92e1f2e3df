"""CurricularFace (Huang et al., CVPR 2020): ArcFace with hard negatives re-weighted by an adaptive t, as
HuangYG123/CurricularFace `head/metrics.py` computes it, with t from the global batch.

Legend: N global batch, S classes of this rank used in the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from losses.common import guarded_sin, update_if_finite_

_T_MOMENTUM = 0.01  # hard-coded in the released code


class CurricularFaceLoss(nn.Module):
    """Target s·φ, φ = cos(θ + m), where cos θ > cos(π − m), else s·(cos θ − m·sin m); a negative with
    c > φ of its row (hard) becomes s·c·(t + c), the others s·c.

    t (buffer `t`, 0 at the start) is updated before use in each training forward:
    t ← 0.01·mean(cos θ_y) + 0.99·t. Released details kept: the mask compares with φ even on rows that
    take the fallback branch; the exact gradient (hard negatives t + 2c). Departures: t and the mask use
    the target cosines of the whole global batch (the released t was per GPU); t is not updated in eval
    mode, nor by a batch with a non-finite target cosine (the released t became NaN for good; train.py
    skips that step); d√(1 − c²)/dc is evaluated at θ clamped to [1e-3, π − 1e-3] (no inf at |c| = 1).

    Args:
        s: logit scale. m: angular margin.
    """

    needs_target_cosines = True

    def __init__(self, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.s, self.m = float(s), float(m)
        self.cos_m, self.sin_m = math.cos(self.m), math.sin(self.m)
        self.threshold = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m
        self.register_buffer("t", torch.zeros(1))

    @torch.no_grad()
    def prepare_(self, rows):
        """Update t from the global target cosines rows.cos_target [N] (training mode only)."""
        if self.training:
            update_if_finite_(self.t, rows.cos_target.mean() * _T_MOMENTUM + (1 - _T_MOMENTUM) * self.t,
                              rows.cos_target)
        return rows

    def _phi(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target * self.cos_m - torch.sqrt(1.0 - cos_target.pow(2)) * self.sin_m

    def margin_value_and_slope(self, cos_target: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
        sin_theta = guarded_sin(cos_target)
        on_margin = cos_target > self.threshold
        value = torch.where(on_margin, self._phi(cos_target), cos_target - self.mm)
        slope = torch.where(on_margin, self.cos_m + self.sin_m * cos_target / sin_theta, 1.0)
        return value, slope

    def adjust_non_targets_(self, cosine: torch.Tensor, target_column: torch.Tensor, has_target: torch.Tensor,
                            target_value: torch.Tensor, rows) -> torch.Tensor:
        """c → c·(t + c) in place where c > φ of the row (φ from the global target cosines); returns the
        float slope [N, S]: t + 2c there, 1 elsewhere. One float [N, S] beside the buffer: the factor
        t + c, which then becomes the slope 2(t + c) − t."""
        easy = cosine <= self._phi(rows.cos_target).unsqueeze(1)  # [N, S], not hard
        factor = (cosine + self.t).masked_fill_(easy, 1.0)  # [N, S], t + c where hard
        cosine.mul_(factor)
        return factor.mul_(2.0).sub_(self.t).masked_fill_(easy, 1.0)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"
