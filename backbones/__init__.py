"""Backbone registry: `get_model(name)` and loading of released or trained backbone weights.

Each entry of `VARIANTS` is an architecture and the released hyper-parameters of one network; the released
names build models whose state_dict keys and shapes equal the published checkpoints'. Every architecture
names, in `embedding_key`, the state_dict entry whose length is the embedding size.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from backbones.iresnet import IResNet
from backbones.mobilefacenet import MobileFaceNet
from backbones.vit import PatchInfo, VisionTransformer
from utils.errors import UserError
from utils.files import check_regular_file, check_weights_file


class Variant(NamedTuple):
    architecture: type[nn.Module]
    args: dict


def _vit(**args) -> Variant:
    return Variant(VisionTransformer, args)


# name -> architecture and arguments. The first seven are the released TransFace ViTs, then three small
# ViTs for CPU work, tests and the demo, then insightface's CNNs as released with TransFace (r2060 is not
# provided).
VARIANTS: dict[str, Variant] = {
    "vit_t": _vit(embed_dim=256, depth=12, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_t_dp005_mask0": _vit(embed_dim=256, depth=12, drop_path_rate=0.05, mask_ratio=0.0),
    "vit_s": _vit(embed_dim=512, depth=12, drop_path_rate=0.1, mask_ratio=0.1),
    "vit_s_dp005_mask_0": _vit(embed_dim=512, depth=12, drop_path_rate=0.05, mask_ratio=0.0),
    "vit_b": _vit(embed_dim=512, depth=24, drop_path_rate=0.1, mask_ratio=0.1, using_checkpoint=True),
    "vit_b_dp005_mask_005": _vit(embed_dim=512, depth=24, drop_path_rate=0.05, mask_ratio=0.05,
                                 using_checkpoint=True),
    "vit_l_dp005_mask_005": _vit(embed_dim=768, depth=24, drop_path_rate=0.05, mask_ratio=0.05,
                                 using_checkpoint=True),
    "vit_nano": _vit(embed_dim=64, depth=2, num_heads=4, drop_path_rate=0.0, mask_ratio=0.0),
    "vit_micro": _vit(embed_dim=128, depth=4, num_heads=4, drop_path_rate=0.05, mask_ratio=0.0),
    "vit_mini": _vit(embed_dim=192, depth=4, num_heads=6, drop_path_rate=0.05, mask_ratio=0.05),
    "r18": Variant(IResNet, dict(layers=(2, 2, 2, 2))),
    "r34": Variant(IResNet, dict(layers=(3, 4, 6, 3))),
    "r50": Variant(IResNet, dict(layers=(3, 4, 14, 3))),
    "r100": Variant(IResNet, dict(layers=(3, 13, 30, 3))),
    "r200": Variant(IResNet, dict(layers=(6, 26, 60, 6))),
    "mbf": Variant(MobileFaceNet, dict(blocks=(1, 4, 6, 2), scale=2)),
    "mbf_large": Variant(MobileFaceNet, dict(blocks=(2, 8, 12, 4), scale=4)),
}

# Names of the checkpoints published with the paper.
RELEASED_AS = {
    "vit_s_dp005_mask_0": "TransFace-S",
    "vit_b_dp005_mask_005": "TransFace-B",
    "vit_l_dp005_mask_005": "TransFace-L",
}


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UserError(f"unknown network '{name}'; valid names are: {', '.join(VARIANTS)}.")
    return VARIANTS[name]


def has_patch_info(name: str) -> bool:
    """Whether network `name` returns patch information (`with_patch_info=True`), which DPAP and EHSM need."""
    return _variant(name).architecture is VisionTransformer


def get_model(name: str, num_features: int = 512, **overrides) -> nn.Module:
    """Build the backbone `name` with `num_features` outputs; `overrides` replace variant arguments."""
    variant = _variant(name)
    return variant.architecture(num_features=num_features, **{**variant.args, **overrides})


def _shapes(name: str, num_features: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = get_model(name, num_features)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A backbone state_dict from a file: a plain state_dict, or a dict holding one under "backbone",
    "state_dict" or "model"; a DDP `module.` prefix is removed. Loaded with weights_only=True.

    The file's bytes are checked against `<path>.sha256` first (utils.files.check_weights_file): a
    mismatch is a ChecksumMismatch (UserError); a file without one (a released model) loads with a warning.
    """
    path = check_regular_file(path, "weights file")
    check_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"'{path}' is not a readable PyTorch weights file ({type(exc).__name__}: {exc}); "
                        "pass a backbone state_dict such as model.pt.") from exc
    for wrapper in ("backbone", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' holds no state_dict of tensors; pass a backbone state_dict such as "
                        "model.pt.")
    return {key.removeprefix("module."): value for key, value in state.items()}


def matching_networks(state: dict[str, torch.Tensor]) -> list[str]:
    """Registered names whose state_dict has exactly the keys and shapes of `state`."""
    found = {key: tuple(value.shape) for key, value in state.items()}
    return [name for name in VARIANTS if _shapes(name, _num_features(name, state)) == found]


def _num_features(name: str, state: dict[str, torch.Tensor]) -> int:
    """The embedding size of network `name` that `state` holds (512 when the file lacks that entry)."""
    key = _variant(name).architecture.embedding_key
    return state[key].shape[0] if key in state and state[key].ndim >= 1 else 512


def load_backbone(network: str, path: str | Path, num_features: int | None = None,
                  **overrides) -> nn.Module:
    """Build `network` and load the weights at `path` strictly; errors say which names would fit."""
    state = read_state_dict(path)
    if num_features is None:
        num_features = _num_features(network, state)
    model = get_model(network, num_features, **overrides)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected != found:
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        mismatched = sorted(f"{k} {found[k]} vs {expected[k]}" for k in expected.keys() & found.keys()
                            if expected[k] != found[k])
        details = "; ".join(
            f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected),
                                 ("shape (file vs network)", mismatched)) if items)
        fits = matching_networks(state)
        hint = (f"the file fits --network {' or '.join(fits)}" if fits
                else "no registered network fits this file")
        raise UserError(f"'{path}' does not match network '{network}' ({details}); {hint}.")
    model.load_state_dict(state, strict=True)
    return model


__all__ = ["RELEASED_AS", "VARIANTS", "IResNet", "MobileFaceNet", "PatchInfo", "Variant", "VisionTransformer",
           "get_model", "has_patch_info", "load_backbone", "matching_networks", "read_state_dict"]
