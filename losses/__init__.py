"""Margin heads for Partial FC and the EHSM sample weights.

`get_margin_loss(name, **overrides)` builds a head by name (LOSS_NAMES, loss_defaults); one module per
head (combined: ArcFace, CosFace, the combined margin; adaface, magface, curricularface, elasticface,
uniface), common (the gradient guard they share), ehsm (EHSM weights), registry. docs/losses.md has the
table.
"""

from losses.adaface import AdaFaceLoss
from losses.combined import CombinedMarginLoss
from losses.curricularface import CurricularFaceLoss
from losses.ehsm import EHSM_RULES, ehsm_weights
from losses.elasticface import ElasticFaceLoss
from losses.magface import MagFaceLoss
from losses.registry import LOSS_NAMES, get_margin_loss, loss_defaults
from losses.uniface import UniFaceLoss

__all__ = ["EHSM_RULES", "LOSS_NAMES", "AdaFaceLoss", "CombinedMarginLoss", "CurricularFaceLoss", "ElasticFaceLoss",
           "MagFaceLoss", "UniFaceLoss", "ehsm_weights", "get_margin_loss", "loss_defaults"]
