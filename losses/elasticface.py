"""ElasticFace (Boutros et al., CVPRW 2022): ArcFace or CosFace with a margin drawn per sample from
N(m, std), as fdbtrs/ElasticFace `utils/losses.py` computes it, with the draws from a seeded generator.

Legend: N global batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from losses.common import angle_inside
from utils.errors import UserError


class ElasticFaceLoss(nn.Module):
    """Target logit s·cos(θ + m_n) (angular) or s·(cos θ − m_n) (cosine), m_n ~ N(m, std) per sample.

    Randomness: the N margins of the global batch are drawn in global order (rank 0's rows first) on
    every forward from the head's own CPU generator, seeded with `seed`; every rank holds the same
    generator and draws the same margins. Its state is the head's extra state (`generator_state` in
    the state_dict), so a resumed run draws the margins the uninterrupted run would have drawn.
    `inject_margins(m)` makes the next forward use the draws m [N] instead (the generator then does not
    advance); the "+" ordering still applies to them.

    "+" (plus=True): under no_grad, π = argsort of the target cosines, descending, and the draws sorted
    ascending; row n gets sorted[π(n)], the gather of the released code (not the rank matching its paper
    describes: `rank_matching=True` gives the n-th largest cosine the n-th smallest margin, i.e.
    sorted[π⁻¹(n)]). Departure: the sort runs over the global batch, where the released code sorted each
    GPU's sub-batch, so with W GPUs its margins depended on W; here they do not.

    Released details kept: the exact gradient (angular: s·sin(θ + m_n)/sin θ, evaluated at θ clamped to
    [1e-3, π − 1e-3], so no NaN at |c| = 1), no clamp of the draws. Departure (angular): past
    θ + m_n = π the released logit wraps around; with continue_tail (default) it continues as
    cos θ − (1 − cos m_n), the tail CombinedMarginLoss uses (continuous, decreasing, slope 1);
    continue_tail=False reproduces the wrap.

    Args:
        s: logit scale. m, std: mean and standard deviation of the margins.
        angular: True ElasticArcFace, False ElasticCosFace. plus: the "+" ordering.
        rank_matching: "+" by rank (see above) instead of the released gather.
        seed: seed of the margin generator. continue_tail: see above (angular only).
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, std: float = 0.05, *, angular: bool = True,
                 plus: bool = False, rank_matching: bool = False, seed: int = 0, continue_tail: bool = True):
        super().__init__()
        if std < 0:
            raise UserError(f"ElasticFace std is {std}; it must be ≥ 0 (loss_params std).")
        self.s, self.m, self.std = float(s), float(m), float(std)
        self.angular, self.plus, self.rank_matching = bool(angular), bool(plus), bool(rank_matching)
        self.continue_tail = bool(continue_tail)
        self.needs_target_cosines = self.plus
        self.generator = torch.Generator().manual_seed(int(seed))
        self._injected: torch.Tensor | None = None

    def inject_margins(self, margins: torch.Tensor) -> None:
        """Use the draws `margins` [N] in the next forward instead of drawing (for tests)."""
        self._injected = margins.detach().float().reshape(-1)

    def draw_margins(self, num_rows: int) -> torch.Tensor:
        """N(m, std) draws [num_rows] on the CPU from the head's generator (advances it)."""
        return torch.normal(self.m, self.std, (num_rows,), generator=self.generator)

    @torch.no_grad()
    def prepare_(self, rows):
        """rows with `margins` [N]: this forward's draws, ordered by "+" when plus."""
        num_rows = rows.norms.shape[0]
        draws = self._injected if self._injected is not None else self.draw_margins(num_rows)
        self._injected = None
        if draws.shape[0] != num_rows:
            raise ValueError(f"{draws.shape[0]} margins injected for a batch of {num_rows}")
        draws = draws.to(rows.norms.device)
        if self.plus:
            order = torch.sort(rows.cos_target, descending=True, stable=True).indices  # [N], π
            ascending = torch.sort(draws, stable=True).values  # [N]
            draws = (ascending.new_empty(num_rows).scatter_(0, order, ascending) if self.rank_matching
                     else ascending[order])
        return rows._replace(margins=draws)

    def margin_value_and_slope(self, cos_target: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
        margins = rows.margins  # [N]
        if not self.angular:
            return cos_target - margins, torch.ones_like(cos_target)
        theta = torch.arccos(cos_target)
        value = torch.cos(theta + margins)
        theta_inside = angle_inside(theta)
        slope = torch.sin(theta_inside + margins) / torch.sin(theta_inside)
        if self.continue_tail:
            in_tail = theta > math.pi - margins
            value = torch.where(in_tail, cos_target - (1.0 - torch.cos(margins)), value)
            slope = torch.where(in_tail, 1.0, slope)
        return value, slope

    def get_extra_state(self) -> dict:
        return {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        kind = ("arc" if self.angular else "cos") + ("_plus" if self.plus else "")
        return f"{kind}, s={self.s}, m={self.m}, std={self.std}, rank_matching={self.rank_matching}"
