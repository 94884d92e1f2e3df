"""Margin heads by name: `get_margin_loss(name, **overrides)`, their names and published defaults.

Every head goes into `partial_fc.PartialFC(margin_loss, embedding_size, num_classes, sample_rate)`.
Defaults are the settings of each paper's main results; docs/losses.md has the table and sources.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from losses.adaface import AdaFaceLoss
from losses.combined import CombinedMarginLoss
from losses.curricularface import CurricularFaceLoss
from losses.elasticface import ElasticFaceLoss
from losses.magface import MagFaceLoss
from losses.uniface import UniFaceLoss
from utils.errors import UserError


def _combined(s, m1, m2, m3, interclass_filtering_threshold, exact_gradient) -> nn.Module:
    return CombinedMarginLoss(s, m1, m2, m3, interclass_filtering_threshold, exact_gradient)


def _arcface(s, m, interclass_filtering_threshold, exact_gradient) -> nn.Module:
    return CombinedMarginLoss(s, 1.0, m, 0.0, interclass_filtering_threshold, exact_gradient)


def _cosface(s, m, interclass_filtering_threshold) -> nn.Module:
    return CombinedMarginLoss(s, 1.0, 0.0, m, interclass_filtering_threshold)


def _elasticface(angular: bool, plus: bool) -> Callable[..., nn.Module]:
    def build(s, m, std, rank_matching, seed, continue_tail=True) -> nn.Module:
        return ElasticFaceLoss(s, m, std, angular=angular, plus=plus, rank_matching=rank_matching, seed=seed,
                               continue_tail=continue_tail)
    return build


# name -> (factory taking every parameter by keyword, {parameter: default}). ElasticFace's factories also
# take the run's `seed` (not a loss parameter).
_HEADS: dict[str, tuple[Callable[..., nn.Module], Mapping[str, Any]]] = {
    "combined": (_combined, dict(s=64.0, m1=1.0, m2=0.5, m3=0.0, interclass_filtering_threshold=0.0,
                                 exact_gradient=False)),
    "arcface": (_arcface, dict(s=64.0, m=0.5, interclass_filtering_threshold=0.0, exact_gradient=False)),
    "cosface": (_cosface, dict(s=64.0, m=0.4, interclass_filtering_threshold=0.0)),
    "adaface": (AdaFaceLoss, dict(m=0.4, h=0.333, s=64.0, t_alpha=0.01)),
    "magface": (MagFaceLoss, dict(s=64.0, l_a=10.0, u_a=110.0, l_margin=0.45, u_margin=0.8, lambda_g=35.0,
                                       easy_margin=True)),
    "curricularface": (CurricularFaceLoss, dict(s=64.0, m=0.5)),
    "elasticface_arc": (_elasticface(True, False), dict(s=64.0, m=0.5, std=0.05, rank_matching=False,
                                                        continue_tail=True)),
    "elasticface_cos": (_elasticface(False, False), dict(s=64.0, m=0.35, std=0.05, rank_matching=False)),
    "elasticface_arc_plus": (_elasticface(True, True), dict(s=64.0, m=0.5, std=0.0175, rank_matching=False,
                                                            continue_tail=True)),
    "elasticface_cos_plus": (_elasticface(False, True), dict(s=64.0, m=0.35, std=0.02, rank_matching=False)),
    "uniface": (UniFaceLoss, dict(s=64.0, m=0.4, l=1.0)),
}
_SEEDED = {"elasticface_arc", "elasticface_cos", "elasticface_arc_plus", "elasticface_cos_plus"}


LOSS_NAMES = tuple(_HEADS)


def _closest(word: str, valid) -> str:
    match = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.0)
    return match[0] if match else ""


def _entry(name: str) -> tuple[Callable[..., nn.Module], Mapping[str, Any]]:
    if name not in _HEADS:
        raise UserError(f"loss is {name!r}, which is not a margin loss; did you mean {_closest(name, _HEADS)!r}? "
                        f"(the losses: {', '.join(_HEADS)})")
    return _HEADS[name]


def loss_defaults(name: str) -> dict[str, Any]:
    """{parameter: default} of the margin loss `name` (a copy); UserError for an unknown name."""
    return dict(_entry(name)[1])


def get_margin_loss(name: str, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """The margin head `name` with its published defaults, `overrides` replacing some of them.

    `seed` seeds the heads that draw random numbers (ElasticFace's margins); the others ignore it.
    Raises UserError (one line naming the closest valid name) for an unknown loss or parameter.
    """
    factory, defaults = _entry(name)
    for key in overrides:
        if key not in defaults:
            raise UserError(f"loss {name!r} has no parameter {key!r}; did you mean {_closest(key, defaults)!r}? "
                            f"(its parameters: {', '.join(defaults)})")
    params = {**defaults, **overrides}
    return factory(**params, seed=seed) if name in _SEEDED else factory(**params)
