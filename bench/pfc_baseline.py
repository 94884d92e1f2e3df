"""The Partial FC loss as composed before the fused buffer (commit b61837d): autograd cosines, the margin
head's forward and a cross-entropy Function; kept as the memory benchmark's baseline and the tests'
bitwise reference. Legend as partial_fc.py: N global batch, S centres used, D embedding width."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partial_fc import _MIN_NORM, PartialFC, _rank_and_world


class _DistributedCrossEntropy(torch.autograd.Function):
    """L = −(1/N) Σ_n w_n log p_n(y_n); saves the softmax [N, S] as a new tensor (the logits stay)."""

    @staticmethod
    def forward(ctx, logits, labels, sample_weights, group):
        _, world_size = _rank_and_world(group)
        max_logit = logits.amax(dim=1)  # [N]
        if world_size > 1:
            dist.all_reduce(max_logit, op=dist.ReduceOp.MAX, group=group)
        probs = (logits - max_logit.unsqueeze(1)).exp_()  # [N, S]
        has_target = labels >= 0  # [N]
        target_logit = logits.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)  # [N]
        sums = torch.stack([probs.sum(dim=1), torch.where(has_target, target_logit, 0.0),
                            has_target.to(probs.dtype)])  # [3, N]
        if world_size > 1:
            dist.all_reduce(sums, group=group)
        sum_exp, target_logit, num_holders = sums.unbind(0)  # each [N]
        probs.div_(sum_exp.unsqueeze(1))
        neg_log_prob = max_logit + sum_exp.log() - target_logit  # [N]
        neg_log_prob = torch.where(num_holders > 0, neg_log_prob, float("nan"))
        ctx.save_for_backward(probs, labels, sample_weights)
        return (sample_weights * neg_log_prob).sum() / logits.shape[0]

    @staticmethod
    def backward(ctx, grad_loss):
        probs, labels, sample_weights = ctx.saved_tensors
        row_scale = sample_weights * (grad_loss / probs.shape[0])  # [N]
        grad_logits = probs * row_scale.unsqueeze(1)  # [N, S]
        target_step = torch.where(labels >= 0, -row_scale, 0.0)  # [N]
        grad_logits.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), target_step.unsqueeze(1))
        return grad_logits, None, None, None


class UnfusedPartialFC(PartialFC):
    """PartialFC with the previous loss path: cosines [N, S], margin logits [N, S] and the softmax as
    separate autograd tensors (about 24 bytes per logit element in fp32)."""

    def _margin_cross_entropy(self, embeddings: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor,
                              sample_weights: torch.Tensor) -> torch.Tensor:
        device_type = embeddings.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            unit_embeddings = F.normalize(embeddings.float(), dim=1)  # [N, D]
            centre_norms = centres.float().norm(dim=1).clamp(min=_MIN_NORM)  # [S]
        cosine = F.linear(unit_embeddings, centres).float() / centre_norms  # [N, S]
        with torch.autocast(device_type=device_type, enabled=False):
            logits = self.margin_loss(cosine, labels)  # [N, S]
            return _DistributedCrossEntropy.apply(logits, labels, sample_weights, self.group)


def unfused_like(pfc: PartialFC, margin_loss: nn.Module | None = None) -> UnfusedPartialFC:
    """An UnfusedPartialFC with the same centres, sampling settings and generator as `pfc`."""
    other = UnfusedPartialFC(margin_loss or pfc.margin_loss, pfc.embedding_size, pfc.num_classes,
                             pfc.sample_rate, group=pfc.group, generator=pfc.generator)
    other.load_state_dict(pfc.state_dict())
    return other.to(pfc.weight.device)
