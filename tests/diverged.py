"""Weights of a diverged run for the evaluation-guard tests: every embedding coordinate is NaN, +inf or -inf.

    from tests.diverged import diverged_state_dict

    torch.save(diverged_state_dict(model, float("nan")), path)

The bias of the model's last BatchNorm1d (the embedding's) is set to `value`; in eval mode that bias is
added to every coordinate, so NaN gives NaN and ±inf gives ±inf embeddings for every image (and their
mirrors' sum keeps the sign). `collapsed_state_dict` also zeroes that BatchNorm's weight, so every image
gets the same finite embedding, the bias (a collapsed model).
"""

from __future__ import annotations

import torch


def _embedding_norm(model: torch.nn.Module) -> str:
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm1d)]
    assert names, "the model has no BatchNorm1d on its embedding"
    return names[-1]


def diverged_state_dict(model: torch.nn.Module, value: float) -> dict[str, torch.Tensor]:
    """A copy of `model`'s state_dict whose embedding BatchNorm bias is `value` everywhere."""
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    state[f"{_embedding_norm(model)}.bias"].fill_(value)
    return state


def collapsed_state_dict(model: torch.nn.Module, bias: float) -> dict[str, torch.Tensor]:
    """A copy of `model`'s state_dict that maps every image to the constant embedding `bias` (finite)."""
    state = diverged_state_dict(model, bias)
    state[f"{_embedding_norm(model)}.weight"].zero_()
    return state
