"""EHSM per-sample loss weights from the patch statistics of the backbone.

Legend: B batch, N patches, K patches kept by the top-k of EHSM.
"""

from __future__ import annotations

import math

import torch

from utils.errors import UserError

EHSM_RULES = ("released", "entropy_mean", "entropy_sum")

# Entropy of a Gaussian of standard deviation σ is ln σ + ½ + ½ ln 2π; this is the constant part.
_GAUSSIAN_ENTROPY_OFFSET = 0.5 + 0.5 * math.log(2 * math.pi)

# σ = 0 (a constant token) has entropy −∞ under the Gaussian model; σ is clamped to this value so that
# the entropy, and the weight of the mean rule, stay finite.
_MIN_PATCH_STD = 1e-12


@torch.no_grad()
def ehsm_weights(patch_std: torch.Tensor, gamma: float = 1.0, top_k: int | None = None,
                 rule: str = "released") -> torch.Tensor:
    """EHSM loss weight of each sample, w = 1 + exp(−γ · hardness), from its patch std [B, N] -> [B].

    Hardness is reduced over the top_k largest patch std (all N when None):
      "released":     mean of σ_i (the released code; w in (1, 2] for γ = 1);
      "entropy_mean": mean of the Gaussian entropies E_i = ln σ_i + ½ + ½ ln 2π (the paper's measure);
      "entropy_sum":  their sum (the paper's formula; for 144 patches of ordinary σ, w ≈ 1, and when the
                      entropies are negative, σ below about 0.24, exp overflows and w becomes inf).
    σ is clamped to 1e-12 in the entropy rules. No gradient flows through the weights; they are float32.
    """
    if rule not in EHSM_RULES:
        raise UserError(f"ehsm_rule is {rule!r}; choose one of {EHSM_RULES}.")
    num_patches = patch_std.shape[1]
    if top_k is not None and not 1 <= top_k <= num_patches:
        raise UserError(f"ehsm_top_k is {top_k} but the backbone has {num_patches} patches; set it to a "
                        f"value in [1, {num_patches}] or None for all patches.")
    patch_std = patch_std.detach().double()  # [B, N]
    if top_k is not None:
        patch_std = patch_std.topk(top_k, dim=1).values  # [B, K]
    if rule == "released":
        hardness = patch_std.mean(dim=1)  # [B]
    else:
        entropy = torch.log(patch_std.clamp(min=_MIN_PATCH_STD)) + _GAUSSIAN_ENTROPY_OFFSET  # [B, K]
        hardness = entropy.mean(dim=1) if rule == "entropy_mean" else entropy.sum(dim=1)  # [B]
    return (1.0 + torch.exp(-gamma * hardness)).float()
