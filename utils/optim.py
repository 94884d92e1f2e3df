"""Optimizers and learning-rate schedules; a schedule is a pure function of the training samples seen."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from utils.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("polynomial", "cosine")


def lr_at(samples: int, base_lr: float, total_samples: int, warmup_samples: int, *,
          schedule: str = "polynomial", power: float = 2.0) -> float:
    """Learning rate of the optimizer step that follows `samples` training images: linear warm-up from 0,
    then decay to 0.

    "polynomial" is the released PolyScheduler: base_lr * (1 - progress) ** power; "cosine" is
    base_lr * (1 + cos(pi * progress)) / 2, where progress runs from 0 after warm-up to 1 at the end.
    Counted in samples so that a resume with another global batch continues the same curve; with a fixed
    global batch G, lr_at(step * G, lr, total_steps * G, warmup_steps * G) is exactly the released per-step
    value (the quotients of whole numbers are the same, so the float divisions round alike).
    """
    if warmup_samples > 0 and samples < warmup_samples:
        return base_lr * samples / warmup_samples
    progress = min(1.0, (samples - warmup_samples) / max(1, total_samples - warmup_samples))
    if schedule == "polynomial":
        return base_lr * (1.0 - progress) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise UserError(f"lr_scheduler '{schedule}' is not known; use 'polynomial' or 'cosine'.")


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def param_groups(modules: Iterable[nn.Module], weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """Parameter groups with `weight_decay`; with `exclude_norm_bias`, norms, biases, position embeddings
    and tokens (1-D tensors and names a module lists in `no_weight_decay()`) get none."""
    decay, no_decay = [], []
    for module in modules:
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if exclude_norm_bias and (param.ndim <= 1 or name in skip):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg, modules: Iterable[nn.Module]) -> torch.optim.Optimizer:
    """AdamW or SGD over the parameters of `modules`, as named by cfg.optimizer."""
    groups = param_groups(modules, cfg.weight_decay, cfg.no_weight_decay_on_norm_bias)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UserError(f"optimizer '{cfg.optimizer}' is not known; use 'adamw' or 'sgd'.")
