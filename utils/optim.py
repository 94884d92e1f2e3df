"""Optimizers and learning-rate schedules; a schedule is a pure function of the training samples seen."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from utils.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
CENTRE_UPDATES = ("all", "sampled")
LR_SCHEDULES = ("polynomial", "cosine", "step")


def lr_at(samples: int, base_lr: float, total_samples: int, warmup_samples: int, *,
          schedule: str = "polynomial", power: float = 2.0, milestones: tuple[int, ...] = (),
          gamma: float = 0.1) -> float:
    """Learning rate of the optimizer step that follows `samples` training images: linear warm-up from 0,
    then decay.

    "polynomial" is the released PolyScheduler: base_lr * (1 - progress) ** power; "cosine" is
    base_lr * (1 + cos(pi * progress)) / 2, where progress runs from 0 after warm-up to 1 at the end;
    "step" is base_lr * gamma ** (number of `milestones`, in samples, already reached): torch's
    MultiStepLR stepped once per epoch, as the AdaFace and ElasticFace recipes train.
    Counted in samples so that a resume with another global batch continues the same curve; with a fixed
    global batch G, lr_at(step * G, lr, total_steps * G, warmup_steps * G) is exactly the released per-step
    value (the quotients of whole numbers are the same, so the float divisions round alike).
    """
    if warmup_samples > 0 and samples < warmup_samples:
        return base_lr * samples / warmup_samples
    if schedule == "step":
        return base_lr * gamma ** sum(samples >= milestone for milestone in milestones)
    progress = min(1.0, (samples - warmup_samples) / max(1, total_samples - warmup_samples))
    if schedule == "polynomial":
        return base_lr * (1.0 - progress) ** power
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise UserError(f"lr_scheduler '{schedule}' is not known; use one of {LR_SCHEDULES}.")


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
    return _optimizer(cfg, param_groups(modules, cfg.weight_decay, cfg.no_weight_decay_on_norm_bias))


def _optimizer(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UserError(f"optimizer '{cfg.optimizer}' is not known; use 'adamw' or 'sgd'.")


class SampledRowsAdamW(torch.optim.Optimizer):
    """AdamW over Partial FC's centres that steps only the rows sampled since the last step.

    The released PartialFCAdamW behaviour (TransFace / insightface's older partial_fc.py): the sampled
    rows of the centres and of both moments are updated (decoupled weight decay included); the other
    rows, and their moments, stay as they are. One step count serves the whole shard, as the released
    code's sub-parameter has one, so a row's bias correction uses the number of optimizer steps, not the
    number of times it was sampled. With sample rate 1 every row is stepped, as torch.optim.AdamW does.
    The state has AdamW's keys and shapes (step, exp_avg [C, D], exp_avg_sq [C, D]). The head's other
    parameters (a margin head's, such as UniFace's bias) follow it and are stepped whole, as AdamW.
    """

    def __init__(self, head, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        others = [param for param in head.parameters() if param is not head.weight and param.requires_grad]
        super().__init__([head.weight, *others], dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.head = head

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("SampledRowsAdamW does not take a closure")
        rows = self.head.take_sampled_rows()  # [R] or None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._step_rows(param, group, rows if param is self.head.weight else None)

    def _step_rows(self, param: torch.Tensor, group: dict, rows: torch.Tensor | None) -> None:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = state["step"].item()
        beta1, beta2 = group["betas"]
        select = (lambda t: t) if rows is None else (lambda t: t[rows])  # [R, D] copies
        weight, grad = select(param), select(param.grad)
        exp_avg, exp_avg_sq = select(state["exp_avg"]), select(state["exp_avg_sq"])
        weight.mul_(1.0 - group["lr"] * group["weight_decay"])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(group["eps"])
        weight.addcdiv_(exp_avg, denom, value=-group["lr"] / (1.0 - beta1 ** step))
        if rows is not None:
            for target, value in ((param, weight), (state["exp_avg"], exp_avg), (state["exp_avg_sq"], exp_avg_sq)):
                target.index_copy_(0, rows, value)


def build_head_optimizer(cfg, head) -> torch.optim.Optimizer:
    """The optimizer of Partial FC's centres and of its margin head's parameters (UniFace's bias):
    cfg.optimizer, or with cfg.centre_update "sampled" the released rule that steps only the sampled rows
    (SampledRowsAdamW; AdamW only). Every head parameter takes cfg.weight_decay, scalars too (the
    no_weight_decay_on_norm_bias rule is the backbone's): UniFace's released SGD decays its bias as its
    centres."""
    if cfg.centre_update == "all":
        groups = [{"params": [p for p in head.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
        return _optimizer(cfg, groups)
    if cfg.centre_update != "sampled":
        raise UserError(f"centre_update '{cfg.centre_update}' is not known; use 'all' or 'sampled'.")
    if cfg.optimizer != "adamw":
        raise UserError(f"centre_update 'sampled' needs optimizer 'adamw', not '{cfg.optimizer}'; set "
                        "centre_update to 'all' or the optimizer to 'adamw'.")
    return SampledRowsAdamW(head, cfg.lr, tuple(cfg.betas), weight_decay=cfg.weight_decay)
