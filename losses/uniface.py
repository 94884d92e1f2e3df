"""UniFace's unified cross-entropy (Zhou et al., ICCV 2023), as CVI-SZU/UniFace `head.py` computes it: a
per-class logistic loss with one learnable bias, no softmax.

Legend: n rows of one block of the global batch, S classes of this rank used in the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.errors import UserError


class UniFaceLoss(nn.Module):
    """ℓ_n = log(1 + exp(−clamp(P, ±s))) + l·Σ_{j≠y} log(1 + exp(clamp(N_j, ±s))), L = mean_n ℓ_n, with
    P = s(cos θ_y − m) − b and N_j = s·cos θ_j − b; b is the learnable scalar `bias` ([1]).

    b starts at log(C·r·10) (C = num_classes, r = the Partial FC sample rate; PartialFC sets it through
    bind_classes unless bias_init is given). Released details kept: log(1 + exp(·)) in float32 as
    written (not softplus), the ±s clamp (zero gradient outside), a sum over classes and a mean over
    the batch. Under Partial FC each rank sums its own columns and the sum and the bias gradient are
    all-reduced, so the loss and dL/db do not depend on the number of processes. With sample_rate < 1
    the negative terms of the classes not sampled in a step are absent from that step's loss (as in the
    released train.py; its Normalized_BCE_Loss variant breaks there). Departures: no normalisation eps
    of 1e-5 (norms below 1e-12 are clamped, as everywhere in Partial FC); the cosines are not clamped
    to [−1, 1] (neither are the released ones).

    Args:
        s: logit scale. m: cosine margin. l: weight of the negative terms. bias_init: None:
        log(C·r·10).
    """

    per_class_loss = True

    def __init__(self, s: float = 64.0, m: float = 0.4, l: float = 1.0, bias_init: float | None = None):  # noqa: E741
        super().__init__()
        if s <= 0:
            raise UserError(f"UniFace s is {s}; the logit scale must be positive (loss_params s).")
        self.s, self.m, self.l, self.bias_init = float(s), float(m), float(l), bias_init
        self.bias = nn.Parameter(torch.full((1,), 0.0 if bias_init is None else float(bias_init)))

    @torch.no_grad()
    def bind_classes(self, num_classes: int, sample_rate: float) -> None:
        """Set the bias to log(num_classes·sample_rate·10) unless bias_init was given."""
        if self.bias_init is None:
            self.bias.fill_(math.log(num_classes * sample_rate * 10))

    @torch.no_grad()
    def per_class_terms_(self, cosine: torch.Tensor, target_column: torch.Tensor,
                         has_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Overwrite cosines [n, S] with dℓ/dcos; returns ℓ_n [n] (this block's columns) and dℓ_n/db [n].

        In place: q = s·c − b, on the target column −(s(c − m) − b) instead, clamped to ±s;
        ℓ = log(1 + e^q) (times l for negatives); dℓ/dq = e^q / (1 + e^q) = σ(q) (times l), 0 where the
        clamp bound; dℓ/dc = s·dℓ/dq (negatives), −s·dℓ/dq (target); dℓ/db = −dℓ/dc / s in both cases.
        Per entry one exp and one log (σ reuses both); the target is handled on its column alone ([n]).
        """
        q = cosine.mul_(self.s).sub_(self.bias.detach())  # [n, S], s·c − b
        _set_targets_(q, target_column, has_target, self.s * self.m - q.gather(1, target_column))
        saturated = q.abs() > self.s  # [n, S]
        exp_q = q.clamp_(-self.s, self.s).exp_()  # [n, S], e^q in the buffer
        one_plus = exp_q + 1  # [n, S]
        logs = one_plus.log()  # [n, S], ℓ per entry before the weight l
        if self.l != 1.0:
            target_logs = logs.gather(1, target_column)  # [n, 1]
            _set_targets_(logs.mul_(self.l), target_column, has_target, target_logs)
        terms = logs.sum(dim=1)  # [n]
        del logs
        grad = exp_q.div_(one_plus).masked_fill_(saturated, 0.0)  # [n, S], dℓ/dq before the weight l
        target_grad = grad.gather(1, target_column) * -self.s  # [n, 1]
        _set_targets_(grad.mul_(self.s * self.l), target_column, has_target, target_grad)  # dℓ/dcos
        return terms, -grad.sum(dim=1) / self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, l={self.l}"


def _set_targets_(values: torch.Tensor, target_column: torch.Tensor, has_target: torch.Tensor,
                  target_values: torch.Tensor) -> None:
    """values[n, y_n] = target_values[n] [n, 1] in place, for the rows with a target here (has_target [n])."""
    current = values.gather(1, target_column)  # [n, 1]
    values.scatter_(1, target_column, torch.where(has_target.unsqueeze(1), target_values, current))
