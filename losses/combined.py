"""The combined margin of insightface: ArcFace, CosFace and cos(m1·θ + m2) − m3.

Legend: B batch, C classes (the columns of the logits, one rank's shard under Partial FC).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from losses.common import angle_inside


class CombinedMarginLoss(nn.Module):
    """Scaled logits s·cos θ with the target cosine replaced by cos(m1·θ + m2) − m3.

    ArcFace is (m1, m2, m3) = (1, m, 0), CosFace (1, 0, m); any other combination is computed from the
    same formula (the released code ignores m1 and m2 whenever m3 > 0 and raises for the rest).

    Args:
        s: logit scale.
        m1, m2, m3: multiplicative angular, additive angular and additive cosine margins (m2 ≥ 0).
        interclass_filtering_threshold: when > 0, non-target cosines above it are set to 0 (value and
            gradient), as the released code does; 0 disables the filter.
        exact_gradient: False (released): the target logit's backward sees only s, as if no margin
            were applied (straight-through); True: the exact derivative of the margin function.

    Where m1·θ + m2 would pass π the released formula wraps around (cos rises again, so harder samples
    get a larger target logit). Past θ* = (π − m2) / m1 we continue instead with the cosine-margin tail
    cos θ − (1 + m3 + cos θ*): it meets cos(m1·θ* + m2) − m3 = −1 − m3 at θ*, so the target logit is
    continuous and strictly decreasing in θ over [0, π], it stays below cos θ (still a penalty), and its
    slope in cos θ is 1, so the straight-through and exact gradients agree there. insightface's older
    fallback cos θ − m2·sin m2 is also monotonic but jumps by 1 − cos m2 − m2·sin m2 at θ*.
    """

    def __init__(self, s: float, m1: float, m2: float, m3: float, interclass_filtering_threshold: float = 0.0,
                 exact_gradient: bool = False):
        super().__init__()
        self.s = float(s)
        self.m1 = float(m1)
        self.m2 = float(m2)
        self.m3 = float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.exact_gradient = bool(exact_gradient)
        self.is_pure_cosine_margin = self.m1 == 1.0 and self.m2 == 0.0
        self.tail_start = (math.pi - self.m2) / self.m1 if self.m1 > 0 else math.inf
        self.tail_offset = 1.0 + self.m3 + math.cos(min(self.tail_start, math.pi))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """cosine [B, C], labels [B] (the target column, or -1 when it is not among these columns)
        -> margin-adjusted logits [B, C] times s. The input is left unchanged."""
        cosine = cosine.clamp(-1.0, 1.0)
        has_target = labels >= 0  # [B]
        target_column = labels.clamp(min=0).unsqueeze(1)  # [B, 1]
        if self.interclass_filtering_threshold > 0:
            cosine = self._filter_hard_negatives(cosine, target_column, has_target)
        cos_target = cosine.gather(1, target_column).squeeze(1)  # [B]
        adjusted = torch.where(has_target, self._apply_margin(cos_target), cos_target)  # [B]
        logits = cosine.scatter(1, target_column, adjusted.unsqueeze(1))  # [B, C]
        return logits * self.s

    def _filter_hard_negatives(self, cosine: torch.Tensor, target_column: torch.Tensor,
                               has_target: torch.Tensor) -> torch.Tensor:
        """Zero the non-target cosines above the threshold (label noise guard of the released code)."""
        return cosine.masked_fill(self._hard_negatives(cosine, target_column, has_target), 0.0)

    def _hard_negatives(self, cosine: torch.Tensor, target_column: torch.Tensor,
                        has_target: torch.Tensor) -> torch.Tensor:
        """Bool [B, C]: the non-target cosines above interclass_filtering_threshold."""
        is_target = torch.zeros_like(cosine, dtype=torch.bool).scatter(
            1, target_column, has_target.unsqueeze(1))  # [B, C]
        return (cosine > self.interclass_filtering_threshold) & ~is_target  # [B, C]

    def adjust_non_targets_(self, cosine: torch.Tensor, target_column: torch.Tensor, has_target: torch.Tensor,
                            target_value: torch.Tensor, rows=None) -> torch.Tensor | None:
        """partial_fc.MarginHead's in-place edit of the clamped cosines [B, C]: the interclass filter.

        Returns None without a filter, else a bool [B, C], False where a cosine was set to 0 (its
        gradient is 0). `target_column` [B, 1], `has_target` [B]; `target_value` and `rows` are not used.
        """
        if self.interclass_filtering_threshold <= 0:
            return None
        too_similar = self._hard_negatives(cosine, target_column, has_target)  # [B, C]
        cosine.masked_fill_(too_similar, 0.0)
        return too_similar.logical_not_()

    def _apply_margin(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Target logits [B] with the margin's value and, in backward, the chosen slope."""
        with torch.no_grad():
            value, slope = self.margin_value_and_slope(cos_target)
        return value + slope * (cos_target - cos_target.detach())

    def margin_value_and_slope(self, cos_target: torch.Tensor, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The margin function of the target cosine [B] and the slope its backward uses, both [B].

        The slope is 1 unless exact_gradient is set; then it is the derivative in cos θ. `rows`
        (partial_fc.BatchRows) is not used.
        """
        if self.is_pure_cosine_margin:
            return cos_target - self.m3, torch.ones_like(cos_target)
        theta = torch.arccos(cos_target)
        value = torch.cos(self.m1 * theta + self.m2) - self.m3
        if self.exact_gradient:
            theta_inside = angle_inside(theta)
            slope = self.m1 * torch.sin(self.m1 * theta_inside + self.m2) / torch.sin(theta_inside)
        else:
            slope = torch.ones_like(cos_target)
        in_tail = theta > self.tail_start
        value = torch.where(in_tail, cos_target - self.tail_offset, value)
        slope = torch.where(in_tail, torch.ones_like(slope), slope)
        return value, slope

    def extra_repr(self) -> str:
        return (f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"interclass_filtering_threshold={self.interclass_filtering_threshold}, "
                f"exact_gradient={self.exact_gradient}")
