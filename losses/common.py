"""What the margin heads share: the guard of their exact gradients where sin θ → 0, and of their running
state against a non-finite batch."""

from __future__ import annotations

import math

import torch

# Where an exact margin derivative divides by sin θ (unbounded as θ → 0 or π) it is evaluated at θ clamped
# to [δ, π − δ]; fp32 cosines cannot resolve angles much below δ = 1e-3 anyway (cos δ = 1 − 5e-7 is a few
# float32 steps below 1). The released heads give inf or NaN there instead.
MIN_ANGLE = 1e-3


def angle_inside(theta: torch.Tensor) -> torch.Tensor:
    """θ [N] clamped to [MIN_ANGLE, π − MIN_ANGLE], where the exact gradients are evaluated."""
    return theta.clamp(MIN_ANGLE, math.pi - MIN_ANGLE)


def guarded_sin(cos_theta: torch.Tensor) -> torch.Tensor:
    """sin θ = √(1 − cos²θ) [N], at least sin(MIN_ANGLE): sin θ at angle_inside(θ)."""
    return torch.sqrt(1.0 - cos_theta.pow(2)).clamp(min=math.sin(MIN_ANGLE))


def update_if_finite_(state: torch.Tensor, new: torch.Tensor, batch: torch.Tensor) -> None:
    """state ← new unless `batch` (the statistic's inputs) holds a NaN or inf, without a host sync.

    A non-finite batch (an fp16 overflow in the backbone) makes the loss non-finite and train.py skips that
    step; the running statistic must then stay as it was, or it would be NaN for the rest of the run (the
    released heads' state is).
    """
    state.copy_(torch.where(torch.isfinite(batch).all(), new, state))
