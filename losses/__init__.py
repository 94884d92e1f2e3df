"""Margin heads for Partial FC and the EHSM sample weights.

`get_margin_loss(name, **overrides)` builds a head by name (LOSS_NAMES, loss_defaults); the modules:
combined (ArcFace, CosFace, the combined margin), ehsm (EHSM weights), registry.
"""

from losses.combined import CombinedMarginLoss
from losses.ehsm import EHSM_RULES, ehsm_weights
from losses.registry import LOSS_NAMES, get_margin_loss, loss_defaults

__all__ = ["EHSM_RULES", "LOSS_NAMES", "CombinedMarginLoss", "ehsm_weights", "get_margin_loss",
           "loss_defaults"]
