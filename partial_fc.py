"""Partial FC: class centres sharded over ranks, negative-class sampling, and the distributed cross-entropy.

Each rank holds a contiguous range of the class centres. A step all-gathers the batch, computes the
cosines of the whole global batch against this rank's (sampled) centres, applies the margin, and
evaluates the softmax over all ranks' classes with three all-reduces. The loss, and after DDP averaging
the backbone gradient, do not depend on the world size; docs/partial_fc.md explains the conventions.

Legend: B local batch, N global batch (B times the world size), D embedding width, C classes on this
rank, S centres of this rank used in the step (C, or fewer when sampling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError
from utils.seeding import derive_seed

# Centres are drawn N(0, INIT_STD^2) in blocks of this many classes, each from its own generator
# seeded by (seed, block): a shard draws only the blocks it overlaps, and the full matrix does not
# depend on the world size.
INIT_STD = 0.01
_INIT_BLOCK_ROWS = 8192
_MIN_NORM = 1e-12  # as F.normalize: a zero centre gives zero cosines instead of NaN


def _rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world size) in `group` (the default group when None); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of the classes rank `rank` holds: contiguous, the first num_classes % world_size
    ranks hold one class more than the rest."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_weight(full_weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows [C, ...] of a full [num_classes, ...] tensor (centres or their optimizer state),
    as a copy; used to resume on a different number of processes."""
    start, stop = class_range(full_weight.shape[0], rank, world_size)
    return full_weight[start:stop].clone()


def saved_ranks_overlapping(num_classes: int, saved_world_size: int, rank: int, world_size: int) -> list[int]:
    """The ranks of a run with `saved_world_size` processes whose class ranges overlap the range of `rank`
    of `world_size`: the only saved shards this rank reads when it resumes on another world size."""
    start, stop = class_range(num_classes, rank, world_size)
    saved = [class_range(num_classes, r, saved_world_size) for r in range(saved_world_size)]
    return [r for r, (saved_start, saved_stop) in enumerate(saved) if max(start, saved_start) < min(stop, saved_stop)]


def copy_overlapping_rows(target: torch.Tensor, target_start: int, saved: torch.Tensor, saved_start: int) -> int:
    """Copy the rows of `saved` [C_saved, ...] (classes from `saved_start`) that fall in the classes of
    `target` [C, ...] (from `target_start`) into `target`; returns how many rows were copied.

    Only those rows of `saved` are read, so a memory-mapped `saved` costs the pages of the rows copied.
    """
    lo = max(target_start, saved_start)
    hi = min(target_start + target.shape[0], saved_start + saved.shape[0])
    if lo >= hi:
        return 0
    with torch.no_grad():
        target[lo - target_start:hi - target_start].copy_(saved[lo - saved_start:hi - saved_start])  # [hi-lo, ...]
    return hi - lo


def add_optimizer_rows(target: dict | None, saved: dict, saved_start: int, start: int, stop: int) -> dict:
    """This rank's optimizer state_dict over classes [start, stop), with the rows of one saved shard's
    optimizer state_dict `saved` (over classes from `saved_start`) copied in.

    `target` is None for the first saved shard: the state_dict is then allocated, its per-class tensors
    (2-D, whose rows are the saved shard's classes: momentum, Adam moments) as [stop - start, D], and
    everything else (step counts, hyper-parameters) copied from `saved`, so that nothing refers to the
    saved shard's (memory-mapped) storage any more. Pass the result back as `target` for the next saved
    shard. The state is complete once every row of [start, stop) was copied once.
    """
    if target is None:
        target = {"state": {}, "param_groups": saved["param_groups"]}
        for param_id, values in saved["state"].items():
            target["state"][param_id] = {
                key: (value.new_empty((stop - start, *value.shape[1:])) if _per_class(value) else _own(value))
                for key, value in values.items()}  # [C, D] per class
    for param_id, values in saved["state"].items():
        for key, value in values.items():
            if _per_class(value):
                copy_overlapping_rows(target["state"][param_id][key], start, value, saved_start)
    return target


def _per_class(value) -> bool:
    return torch.is_tensor(value) and value.ndim == 2


def _own(value):
    """A tensor copied out of the storage it shares (e.g. a memory-mapped file); anything else as it is."""
    return value.clone() if torch.is_tensor(value) else value


def init_class_centres(num_classes: int, embedding_size: int, start: int, stop: int,
                       seed: int = 0) -> torch.Tensor:
    """Rows [start, stop) of the full N(0, 0.01²) centre matrix [num_classes, D] for `seed`, on the CPU."""
    if not 0 <= start <= stop <= num_classes:
        raise ValueError(f"class range [{start}, {stop}) is not inside [0, {num_classes})")
    blocks = []
    for block in range(start // _INIT_BLOCK_ROWS, math.ceil(stop / _INIT_BLOCK_ROWS)):
        block_start = block * _INIT_BLOCK_ROWS
        block_stop = min(block_start + _INIT_BLOCK_ROWS, num_classes)
        generator = torch.Generator().manual_seed(derive_seed(seed, block))
        rows = torch.normal(0.0, INIT_STD, (block_stop - block_start, embedding_size),
                            generator=generator)  # [block rows, D]
        blocks.append(rows[max(start, block_start) - block_start:min(stop, block_stop) - block_start])
    if not blocks:
        return torch.empty(0, embedding_size)
    return torch.cat(blocks)  # [stop - start, D]


def gather_full_weight(shard: torch.Tensor, num_classes: int,
                       group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All ranks' shards [C, ...] joined into the full [num_classes, ...] tensor, on every rank.

    A collective: every rank of `group` must call it. Works for the centres and for any optimizer state
    of the same shape (momentum, Adam moments). Without a process group it returns a copy of `shard`.
    """
    rank, world_size = _rank_and_world(group)
    ranges = [class_range(num_classes, r, world_size) for r in range(world_size)]
    own_rows = ranges[rank][1] - ranges[rank][0]
    if shard.shape[0] != own_rows:
        raise ValueError(f"rank {rank} holds {shard.shape[0]} rows but owns {own_rows} of {num_classes} "
                         f"classes over {world_size} processes")
    if world_size == 1:
        return shard.detach().clone()
    max_rows = max(stop - start for start, stop in ranges)
    padded = shard.new_zeros((max_rows, *shard.shape[1:]))  # [max C, ...]
    padded[:own_rows] = shard.detach()
    gathered = shard.new_empty((world_size * max_rows, *shard.shape[1:]))  # [world · max C, ...]
    dist.all_gather_single(gathered, padded, group=group)
    per_rank = gathered.view(world_size, max_rows, *shard.shape[1:])  # [world, max C, ...]
    return torch.cat([per_rank[r, :stop - start] for r, (start, stop) in enumerate(ranges)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward gives the derivative of the (replicated) global loss with
    respect to the local input, times the world size.

    Every rank computes the same loss; the gradient of the gathered tensor on rank r holds only the
    part that flows through rank r's class centres, so the parts are summed over ranks. The factor
    world_size undoes DDP's averaging of the backbone gradients, which would otherwise leave 1/world_size
    of the true gradient of the global loss (see docs/partial_fc.md).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        rank, world_size = _rank_and_world(group)
        ctx.group, ctx.rank, ctx.world_size = group, rank, world_size
        gathered = local.new_empty((world_size * local.shape[0], *local.shape[1:]))  # [N, ...]
        dist.all_gather_single(gathered, local.contiguous(), group=group)
        return gathered

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor):
        grad_sum = grad_gathered.contiguous().clone()  # [N, ...], ours to reduce in place
        dist.all_reduce(grad_sum, group=ctx.group)
        per_rank = grad_sum.view(ctx.world_size, -1, *grad_sum.shape[1:])  # [world, B, ...]
        return per_rank[ctx.rank] * ctx.world_size, None


def _all_gather(local: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather along dim 0 without gradient: [B, ...] -> [N, ...]."""
    _, world_size = _rank_and_world(group)
    gathered = local.new_empty((world_size * local.shape[0], *local.shape[1:]))  # [N, ...]
    dist.all_gather_single(gathered, local.contiguous(), group=group)
    return gathered


class BatchRows(NamedTuple):
    """Per-row inputs of a margin head, identical on every rank: the global batch [N] in rank order."""

    norms: torch.Tensor  # [N] float32 ‖x‖ of the raw embeddings, detached
    cos_target: torch.Tensor | None  # [N] clamped target cosines of all rows; None unless the head asks
    margins: torch.Tensor | None = None  # [N] per-row margins a head's prepare_ chose (ElasticFace)


class MarginHead(Protocol):
    """What PartialFC needs from a margin head; losses.CombinedMarginLoss is one.

    PartialFC never asks a head for a logit matrix: it keeps one [N, S] float32 buffer, which holds in
    turn the cosines, the logits, the softmax (saved for backward) and the logit gradient, and lets the
    head edit it in place. `rows` is a BatchRows, the same on every rank. A head provides:

    - `s`: the logit scale (float), applied to every entry after the head's edits.
    - `margin_value_and_slope(cos_target, rows) -> (value, slope)`: the target cosines [N] (clamped to
      [-1, 1], one per row of the global batch) to the target logit before scaling [N] and the
      derivative d value / d cos θ its backward uses [N] (1 for a straight-through margin). Called
      without gradient on every row; a row whose class is on another rank (label −1) ignores it.
    - optionally `adjust_non_targets_(cosine, target_column, has_target, target_value, rows) -> slope | None`:
      edits the non-target entries of the clamped cosines [N, S] in place (elementwise, e.g. a filter of
      hard negatives or CurricularFace's re-weighting; `target_column` [N, 1], `has_target` [N] bool,
      `target_value` [N] the margin value above) and returns d entry / d cos θ for them: None (1
      everywhere), a bool [N, S] (True 1, False 0; costs 1 byte per entry) or a float [N, S] (costs 4).
      Entries at the target column of rows with a target are overwritten afterwards; their slope is
      ignored.
    - optionally `needs_target_cosines = True`: rows.cos_target is filled (one all-reduce of [N]: the
      rank holding a row's class fills it, the others add 0); otherwise it is None and costs nothing.
    - optionally `prepare_(rows) -> rows`: called without gradient before the margin on every forward;
      updates running state (only in training mode, from these global rows) and may return rows with
      `margins` set for the calls that follow.
    - optionally `margin_norm_slope(cos_target, rows) -> [N]`: d value / d ‖x‖; the head then gets a
      gradient through the embedding norm (MagFace), otherwise the norm is detached.
    - optionally `norm_regulariser(norms) -> [N]`: a per-sample term added to the loss (differentiable
      in the norms [N]; MagFace's λ_g·g(a)), weighted by the sample weight, mean over N, counted once
      over ranks.
    - optionally `bind_classes(num_classes, sample_rate)`: called once by PartialFC's constructor.
    - optionally `per_class_loss = True`: not a softmax head (UniFace). It then has a parameter `bias`
      and `per_class_terms_(cosine, target_column, has_target) -> (terms, grad_bias)`, and PartialFC
      uses _PerClassLoss instead of the softmax (the margin methods above are not called).
    """

    s: float

    def margin_value_and_slope(self, cos_target: torch.Tensor,
                               rows: BatchRows | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def _target_cosines(cosine: torch.Tensor, labels: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The clamped target cosine of every row [N], all-reduced: the rank holding the class fills it."""
    has_target = labels >= 0  # [N]
    local = cosine.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)  # [N]
    rows = torch.where(has_target, local, 0.0)  # [N]
    if _rank_and_world(group)[1] > 1:
        dist.all_reduce(rows, group=group)
    return rows


def _batch_rows(cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor, head: MarginHead,
                group: dist.ProcessGroup | None) -> BatchRows:
    """The head's BatchRows for the clamped cosines [N, S], after its prepare_ (state, margins)."""
    cos_target = _target_cosines(cosine, labels, group) if getattr(head, "needs_target_cosines", False) else None
    rows = BatchRows(norms.detach().float(), cos_target)
    if hasattr(head, "prepare_"):
        rows = head.prepare_(rows)
    return rows


def _margin_logits_(cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor, head: MarginHead,
                    group: dist.ProcessGroup | None):
    """Turn the cosines [N, S] into s · (margin logits) in place; returns what the backward needs.

    Returns (frozen [N, S] bool: entries whose gradient is 0 (clamped or filtered), target_frozen [N]
    bool: the target entry was clamped, target_slope [N], non_target_slope [N, S] float or None,
    norm_slope [N] d target value / d ‖x‖ or None).
    """
    frozen = (cosine > 1.0).logical_or_(cosine < -1.0)  # [N, S], clamp's zero gradient
    cosine.clamp_(-1.0, 1.0)
    rows = _batch_rows(cosine, labels, norms, head, group)
    has_target = labels >= 0  # [N]
    target_column = labels.clamp(min=0).unsqueeze(1)  # [N, 1]
    target_frozen = frozen.gather(1, target_column).squeeze(1)  # [N]
    cos_target = cosine.gather(1, target_column).squeeze(1)  # [N]
    value, target_slope = head.margin_value_and_slope(cos_target, rows)  # [N], [N]
    norm_slope = head.margin_norm_slope(cos_target, rows) if hasattr(head, "margin_norm_slope") else None
    non_target_slope = None
    if hasattr(head, "adjust_non_targets_"):
        non_target_slope = head.adjust_non_targets_(cosine, target_column, has_target, value, rows)
        if non_target_slope is not None and non_target_slope.dtype == torch.bool:
            frozen.logical_or_(~non_target_slope)
            non_target_slope = None
    current = cosine.gather(1, target_column).squeeze(1)  # [N], the column-0 entry for rows without target
    cosine.scatter_(1, target_column, torch.where(has_target, value, current).unsqueeze(1))
    cosine.mul_(head.s)
    return frozen, target_frozen, target_slope, non_target_slope, norm_slope


def _softmax_cross_entropy_(logits: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor,
                            group: dist.ProcessGroup | None) -> torch.Tensor:
    """L = −(1/N) Σ_n w_n log p_n(y_n) over all ranks' columns; overwrites logits [N, S] with p.

    A MAX all-reduce of the row maxima, then one all-reduce of the sums of exponentials, the target
    logit and the number of ranks holding the target (0: the label is in no shard; that sample's loss
    is NaN).
    """
    _, world_size = _rank_and_world(group)
    max_logit = logits.amax(dim=1)  # [N]
    if world_size > 1:
        dist.all_reduce(max_logit, op=dist.ReduceOp.MAX, group=group)
    has_target = labels >= 0  # [N]
    target_logit = logits.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)  # [N]
    probs = logits.sub_(max_logit.unsqueeze(1)).exp_()  # [N, S], exponentials for now
    # Row 3 counts the ranks holding each sample's target: 0 for a label outside every shard.
    sums = torch.stack([probs.sum(dim=1), torch.where(has_target, target_logit, 0.0),
                        has_target.to(probs.dtype)])  # [3, N]
    if world_size > 1:
        dist.all_reduce(sums, group=group)
    sum_exp, target_logit, num_holders = sums.unbind(0)  # each [N]
    probs.div_(sum_exp.unsqueeze(1))
    neg_log_prob = max_logit + sum_exp.log() - target_logit  # [N]
    neg_log_prob = torch.where(num_holders > 0, neg_log_prob, float("nan"))  # a label no rank holds: NaN
    return (sample_weights * neg_log_prob).sum() / logits.shape[0]


class _MarginSoftmaxCrossEntropy(torch.autograd.Function):
    """Cosines, margin, scale and the distributed cross-entropy in one [N, S] float32 buffer.

    Forward: products unit_embeddings · centres (in `product_dtype`, e.g. fp16 under autocast), divided
    by the centre norms, clamped, the margin head's in-place edits, times s, softmax across ranks; the
    softmax stays in the buffer for backward, with a bool [N, S] of entries whose gradient is 0.
    Backward overwrites the buffer with dL/dz = w_n (p − 1[c = y_n]) / N, then with dL/dproducts, and
    computes the two product gradients from it; the centre-norm term uses
    Σ_n g_{n,c} (u_n · c) = c · Σ_n g_{n,c} u_n, so no cosine needs to be kept. The buffer is consumed:
    backward runs once (no retain_graph). `norms` [N] (‖x‖) reach the head as BatchRows.norms; for a head
    with margin_norm_slope they get the gradient dL/dz_y · s · d value / d‖x‖ (MagFace), else none.
    """

    @staticmethod
    def forward(ctx, unit_embeddings: torch.Tensor, centres: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor,
                sample_weights: torch.Tensor, head: MarginHead, group: dist.ProcessGroup | None,
                product_dtype: torch.dtype) -> torch.Tensor:
        buffer, centre_norms, clamped_norms = _cosines(unit_embeddings, centres, product_dtype)  # [N, S]
        with torch.no_grad():
            frozen, target_frozen, target_slope, non_target_slope, norm_slope = _margin_logits_(
                buffer, labels, norms, head, group)
        loss = _softmax_cross_entropy_(buffer, labels, sample_weights, group)  # buffer: the softmax
        ctx.save_for_backward(buffer, frozen, target_frozen, target_slope, non_target_slope, norm_slope, labels,
                              sample_weights, unit_embeddings, centres, centre_norms, clamped_norms)
        ctx.s, ctx.product_dtype, ctx.consumed = head.s, product_dtype, False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("Partial FC's backward reuses its softmax buffer and runs once; do not "
                               "backward through the same loss twice (retain_graph).")
        ctx.consumed = True
        (buffer, frozen, target_frozen, target_slope, non_target_slope, norm_slope, labels, sample_weights,
         unit_embeddings, centres, centre_norms, clamped_norms) = ctx.saved_tensors
        _logit_gradient_(buffer, labels, sample_weights, grad_loss)
        grad_norms = None
        if norm_slope is not None and ctx.needs_input_grad[2]:
            grad_target_logit = buffer.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)  # [N], dL/dz_y
            grad_norms = torch.where(labels >= 0, grad_target_logit * ctx.s * norm_slope, 0.0)  # [N]
        _cosine_gradient_(buffer, labels, ctx.s, frozen, target_frozen, target_slope, non_target_slope)
        grad_products = buffer.div_(clamped_norms)  # [N, S]
        return (*_product_gradients(grad_products, unit_embeddings, centres, centre_norms, ctx.product_dtype),
                grad_norms, None, None, None, None, None)


def _cosines(unit_embeddings: torch.Tensor, centres: torch.Tensor,
             product_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cosines [N, S] float32, a new buffer; centre norms [S]; the same clamped at _MIN_NORM [S])."""
    centre_norms = centres.detach().float().norm(dim=1)  # [S]
    clamped_norms = centre_norms.clamp(min=_MIN_NORM)  # [S]
    buffer = F.linear(unit_embeddings.to(product_dtype), centres.detach().to(product_dtype)).float()  # [N, S]
    return buffer.div_(clamped_norms), centre_norms, clamped_norms


def _logit_gradient_(probs: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor,
                     grad_loss: torch.Tensor) -> None:
    """Overwrite the softmax [N, S] with dL/dz_{n,c} = w_n (p_{n,c} − 1[c = y_n]) / N · grad_loss."""
    row_scale = sample_weights * (grad_loss / probs.shape[0])  # [N]
    probs.mul_(row_scale.unsqueeze(1))
    target_step = torch.where(labels >= 0, -row_scale, 0.0)  # [N]
    probs.scatter_add_(1, labels.clamp(min=0).unsqueeze(1), target_step.unsqueeze(1))


def _cosine_gradient_(grad: torch.Tensor, labels: torch.Tensor, s: float, frozen: torch.Tensor,
                      target_frozen: torch.Tensor, target_slope: torch.Tensor,
                      non_target_slope: torch.Tensor | None) -> None:
    """Overwrite dL/dlogits [N, S] with dL/dcos: times s, the head's slopes, zero where frozen."""
    has_target = labels >= 0  # [N]
    target_column = labels.clamp(min=0).unsqueeze(1)  # [N, 1]
    grad.mul_(s)
    grad_target = grad.gather(1, target_column).squeeze(1)  # [N]
    grad.masked_fill_(frozen, 0.0)
    if non_target_slope is not None:
        grad.mul_(non_target_slope)
    target_value = torch.where(target_frozen, 0.0, grad_target * target_slope)  # [N]
    current = grad.gather(1, target_column).squeeze(1)  # [N], the column-0 entry for rows without target
    grad.scatter_(1, target_column, torch.where(has_target, target_value, current).unsqueeze(1))


def _product_gradients(grad_products: torch.Tensor, unit_embeddings: torch.Tensor, centres: torch.Tensor,
                       centre_norms: torch.Tensor, product_dtype: torch.dtype):
    """(dL/dunit_embeddings [N, D], dL/dcentres [S, D]) from dL/dproducts [N, S] of cos = u·c / |c|.

    dL/dc = G_c − (c · G_c) c / (|c|_clamped · |c|) with G = grad_productsᵀ u; no gradient through a
    norm at or below the clamp (as F.normalize).
    """
    grad_low = grad_products.to(product_dtype)  # [N, S], a copy only when the product ran in low precision
    grad_unit = grad_low.mm(centres.to(product_dtype)).to(unit_embeddings.dtype)  # [N, D]
    grad_centres = unit_embeddings.to(product_dtype).t().mm(grad_low).t().float()  # [S, D], G
    del grad_low
    radial = (centres.float() * grad_centres).sum(dim=1)  # [S], c · G_c
    clamped_norms = centre_norms.clamp(min=_MIN_NORM)  # [S]
    radial = torch.where(centre_norms > _MIN_NORM, radial / (clamped_norms * centre_norms), 0.0)  # [S]
    grad_centres -= radial.unsqueeze(1) * centres.float()
    return grad_unit, grad_centres.to(centres.dtype)


# Rows of the [N, S] buffer a per-class head processes at once: bounds its temporaries to ~16 MB.
_PER_CLASS_CHUNK_ELEMENTS = 1 << 22


class _PerClassLoss(torch.autograd.Function):
    """A loss separable over classes, L = (1/N) Σ_n w_n Σ_c ℓ(cos_nc, b) (UniFace), in one [N, S] buffer.

    Each rank sums the terms of its own (sampled) columns for all N rows; one all-reduce SUM of
    (loss, dL/db) gives the whole loss and the bias gradient on every rank (R2 of docs/losses.md), so the
    replicated bias stays identical. The head's `per_class_terms_(cosine, target_column, has_target)`
    overwrites a block of rows [n, S] of the cosines with dℓ/dcos and returns the rows' terms ℓ [n] and
    dℓ/db [n]; it runs on blocks of rows so that its temporaries stay small. The buffer then holds
    dℓ/dcos for backward, consumed there (backward runs once).
    """

    @staticmethod
    def forward(ctx, unit_embeddings: torch.Tensor, centres: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                sample_weights: torch.Tensor, head, group: dist.ProcessGroup | None,
                product_dtype: torch.dtype) -> torch.Tensor:
        buffer, centre_norms, clamped_norms = _cosines(unit_embeddings, centres, product_dtype)  # [N, S]
        num_rows = buffer.shape[0]
        step = max(1, _PER_CLASS_CHUNK_ELEMENTS // max(1, buffer.shape[1]))
        totals = buffer.new_zeros(2)  # (Σ w ℓ, Σ w dℓ/db) over this rank's columns
        with torch.no_grad():
            for start in range(0, num_rows, step):
                rows = slice(start, start + step)
                row_labels = labels[rows]
                terms, grad_bias = head.per_class_terms_(buffer[rows], row_labels.clamp(min=0).unsqueeze(1),
                                                         row_labels >= 0)  # [n], [n]
                totals += torch.stack([(sample_weights[rows] * terms).sum(),
                                       (sample_weights[rows] * grad_bias).sum()])
            totals /= num_rows
            if _rank_and_world(group)[1] > 1:
                dist.all_reduce(totals, group=group)
        ctx.save_for_backward(buffer, sample_weights, unit_embeddings, centres, centre_norms, clamped_norms,
                              totals[1].clone())
        ctx.product_dtype, ctx.bias_shape, ctx.consumed = product_dtype, bias.shape, False
        return totals[0].clone()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("Partial FC's backward reuses its buffer and runs once; do not backward "
                               "through the same loss twice (retain_graph).")
        ctx.consumed = True
        buffer, sample_weights, unit_embeddings, centres, centre_norms, clamped_norms, grad_bias = ctx.saved_tensors
        buffer.mul_((sample_weights * (grad_loss / buffer.shape[0])).unsqueeze(1))  # dL/dcos [N, S]
        grad_products = buffer.div_(clamped_norms)  # [N, S]
        grad_unit, grad_centres = _product_gradients(grad_products, unit_embeddings, centres, centre_norms,
                                                     ctx.product_dtype)
        return (grad_unit, grad_centres, (grad_loss * grad_bias).reshape(ctx.bias_shape),
                None, None, None, None, None)


class SampledCentres(NamedTuple):
    index: torch.Tensor | None  # [S] sorted rows of this rank's shard; None when every row is used
    labels: torch.Tensor  # [N] column of each sample's class among those rows, -1 when not on this rank


class PartialFC(nn.Module):
    """Sharded classifier of `num_classes` centres with a margin loss and the distributed cross-entropy.

    Build it after the process group starts (it reads its rank and the world size then); do not wrap it
    in DDP. Its only parameter, `weight`, is this rank's shard [C, D] of the centres.

    Args:
        margin_loss: a margin head following the MarginHead protocol (its target margin, scale and
            optional in-place edit of the other cosines), for example losses.CombinedMarginLoss.
        embedding_size: D, the width of the embeddings.
        num_classes: total number of classes over all ranks.
        sample_rate: fraction of this rank's centres used per step, in (0, 1]; below 1 every centre of
            a class in the global batch is kept and random others fill up to ceil(sample_rate · C).
        seed: seed of the centres' initialisation (the full matrix is the same for every world size).
        group: process group of the classifier; None: the default group, or none at all.
        generator: draws the random negatives (on the centres' device); None: torch's global generator.
    """

    def __init__(self, margin_loss: nn.Module, embedding_size: int, num_classes: int, sample_rate: float = 1.0,
                 *, seed: int = 0, group: dist.ProcessGroup | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise UserError(f"sample_rate is {sample_rate}; it must be in (0, 1] (config key sample_rate).")
        if embedding_size < 1:
            raise UserError(f"embedding_size is {embedding_size}; it must be a positive integer.")
        self.rank, self.world_size = _rank_and_world(group)
        if num_classes < self.world_size:
            raise UserError(f"num_classes is {num_classes} but the class centres are split over "
                            f"{self.world_size} processes; every process needs at least one class, so set "
                            "num_classes to the number of identities in the data.")
        self.margin_loss = margin_loss
        if hasattr(margin_loss, "bind_classes"):
            margin_loss.bind_classes(num_classes, sample_rate)
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.group = group
        self.generator = generator
        self.class_start, self.class_stop = class_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_stop - self.class_start
        # Rounded first so that, e.g., 0.7 * 10 = 7.000000000000001 samples 7 centres, not 8.
        self.num_sample = min(self.num_local, math.ceil(round(sample_rate * self.num_local, 6)))
        self.weight = nn.Parameter(init_class_centres(num_classes, embedding_size, self.class_start,
                                                      self.class_stop, seed))  # [C, D]
        # The local batch size whose agreement over ranks and labels were checked; the checks cost host
        # syncs, so they run on the first step and when the batch size changes, not every step.
        self._checked_batch_size: int | None = None
        # Rows sampled in the forward passes since the last take_sampled_rows() (a not persistent buffer,
        # so it follows .to(device)); read by utils.optim.SampledRowsAdamW.
        self.register_buffer("_rows_since_step", torch.zeros(self.num_local, dtype=torch.bool), persistent=False)

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor,
                sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [B, D], labels [B] in [0, num_classes), optional weights [B] -> the global loss.

        Every rank must pass the same batch size B. On the first call, and whenever B changes (on every
        rank alike), the batch sizes of the ranks and the label range are checked, with a UserError on
        every rank; on other calls a label outside [0, num_classes) makes the loss NaN instead (the check
        rides on the cross-entropy's all-reduce, so the step needs no host sync).
        """
        self._check_world()
        local_labels = self._check_batch(local_embeddings, local_labels, sample_weights)
        if sample_weights is None:
            sample_weights = torch.ones(local_labels.shape[0], device=local_embeddings.device)
        check = local_labels.shape[0] != self._checked_batch_size
        if check:
            self._check_batch_sizes(local_labels.shape[0], local_embeddings.device)
        embeddings, labels, weights = self._gather_batch(local_embeddings, local_labels,
                                                         sample_weights.detach().float())
        if check:
            self._check_labels(labels)
            self._checked_batch_size = local_labels.shape[0]
        sampled = self.sample_centres(labels)
        if sampled.index is not None and torch.is_grad_enabled():
            self._rows_since_step[sampled.index] = True
        centres = self.weight if sampled.index is None else self.weight[sampled.index]  # [S, D]
        return self._margin_cross_entropy(embeddings, centres, sampled.labels, weights)

    def sample_centres(self, labels: torch.Tensor) -> SampledCentres:
        """The rows of this shard used for the global labels [N], and the labels remapped to them.

        With sample_rate 1 every row is used. Otherwise every row whose class occurs in the batch is
        kept and random other rows (from `generator`) fill up to ceil(sample_rate · C).
        """
        local = labels - self.class_start  # [N]
        in_shard = (local >= 0) & (local < self.num_local)  # [N]
        if self.num_sample >= self.num_local:
            return SampledCentres(None, torch.where(in_shard, local, -1))
        positives = torch.unique(local[in_shard])  # [P], sorted
        num_sample = max(self.num_sample, positives.numel())
        scores = torch.rand(self.num_local, device=labels.device, generator=self.generator)  # [C], in [0, 1)
        scores[positives] = 2.0  # every positive outranks every negative
        index = scores.topk(num_sample).indices.sort().values  # [S]
        remapped = torch.searchsorted(index, local.clamp(0, self.num_local - 1))  # [N]
        return SampledCentres(index, torch.where(in_shard, remapped, -1))

    def take_sampled_rows(self) -> torch.Tensor | None:
        """The sorted rows [R] of this shard sampled in the forward passes (with gradient) since the last
        call, union over gradient-accumulation micro-batches; None when every row is used (sample rate 1).
        Resets the record; a host sync (nonzero)."""
        if self.num_sample >= self.num_local:
            return None
        rows = self._rows_since_step.nonzero().squeeze(1)  # [R], sorted
        self._rows_since_step.zero_()
        return rows

    def full_weight(self) -> torch.Tensor:
        """All centres [num_classes, D] on every rank (a collective)."""
        return gather_full_weight(self.weight, self.num_classes, self.group)

    def load_full_weight(self, full_weight: torch.Tensor) -> None:
        """Take this rank's rows of a full centre matrix, e.g. one saved with a different world size."""
        expected = (self.num_classes, self.embedding_size)
        if tuple(full_weight.shape) != expected:
            raise UserError(f"the class-centre matrix has shape {tuple(full_weight.shape)} but this run has "
                            f"{expected[0]} classes of width {expected[1]}; check num_classes and "
                            "embedding_size against the checkpoint.")
        with torch.no_grad():
            self.weight.copy_(shard_weight(full_weight, self.rank, self.world_size))

    def load_resharded(self, saved_shards: Iterable[tuple[dict, dict]], optimizer: torch.optim.Optimizer) -> None:
        """Load this rank's classes from shards saved by a run with another world size.

        `saved_shards` yields (head state_dict, optimizer state_dict) of saved ranks, one at a time, in any
        order (saved_ranks_overlapping names the ones needed); together they must cover this rank's class
        range. Only the rows of this range are read from each, so memory-mapped shards cost their pages
        of those rows, and a shard can be released before the next is read: peak host memory is this
        shard's state plus the rows taken from one saved shard. Other state (the margin head's buffers)
        comes from the first shard. Raises UserError when the shards do not match this run or leave a gap.
        """
        optimizer_state, rest, covered = None, None, 0
        for head_state, saved_optimizer in saved_shards:
            saved_start = self._saved_class_start(head_state["_extra_state"])
            covered += copy_overlapping_rows(self.weight, self.class_start, head_state["weight"], saved_start)
            optimizer_state = add_optimizer_rows(optimizer_state, saved_optimizer, saved_start,
                                                 self.class_start, self.class_stop)
            if rest is None:
                rest = {k: _own(v) for k, v in head_state.items() if k not in ("weight", "_extra_state")}
        if covered != self.num_local:
            raise UserError(f"the saved class-centre shards hold {covered} of the {self.num_local} classes "
                            f"[{self.class_start}, {self.class_stop}) of this process; the checkpoint is "
                            "incomplete: restore its rank files.")
        self.load_state_dict({**rest, "weight": self.weight, "_extra_state": self.get_extra_state()})
        optimizer.load_state_dict(optimizer_state)

    def _saved_class_start(self, saved_extra: dict) -> int:
        """The first class of a saved shard, after checking it is a shard of this run's classes."""
        if saved_extra["num_classes"] != self.num_classes:
            raise UserError(f"the checkpoint's class centres are for {saved_extra['num_classes']} classes but "
                            f"this run has {self.num_classes}; set num_classes to the checkpoint's.")
        return saved_extra["class_start"]

    def get_extra_state(self) -> dict:
        return {"num_classes": self.num_classes, "class_start": self.class_start, "class_stop": self.class_stop}

    def set_extra_state(self, state: dict) -> None:
        saved = (state["num_classes"], state["class_start"], state["class_stop"])
        mine = (self.num_classes, self.class_start, self.class_stop)
        if saved != mine:
            raise UserError(f"the Partial FC shard holds classes [{saved[1]}, {saved[2]}) of {saved[0]} but "
                            f"this process owns [{mine[1]}, {mine[2]}) of {mine[0]}; the checkpoint comes "
                            "from another world size or class count: gather its shards into one matrix "
                            "and load it with PartialFC.load_full_weight.")

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, classes=[{self.class_start}, {self.class_stop}), "
                f"embedding_size={self.embedding_size}, sample_rate={self.sample_rate}")

    def _check_world(self) -> None:
        if _rank_and_world(self.group) != (self.rank, self.world_size):
            raise RuntimeError(f"PartialFC was built as rank {self.rank} of {self.world_size} but runs as "
                               f"rank {_rank_and_world(self.group)[0]} of {_rank_and_world(self.group)[1]}; "
                               "build it after the process group starts.")

    def _check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor,
                     sample_weights: torch.Tensor | None) -> torch.Tensor:
        """Shape checks; returns the labels as a flat int64 tensor [B]."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise UserError(f"embeddings have shape {tuple(embeddings.shape)} but embedding_size is "
                            f"{self.embedding_size}; set embedding_size to the backbone's output width.")
        num_samples = embeddings.shape[0]
        if labels.numel() != num_samples or labels.is_floating_point():
            raise ValueError(f"expected {num_samples} integer labels, got {labels.dtype} {tuple(labels.shape)}")
        if sample_weights is not None and tuple(sample_weights.shape) != (num_samples,):
            raise ValueError(f"expected sample weights of shape ({num_samples},), got "
                             f"{tuple(sample_weights.shape)}")
        return labels.reshape(num_samples).long()  # [B]

    def _gather_batch(self, embeddings: torch.Tensor, labels: torch.Tensor,
                      sample_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The global batch: embeddings [N, D] (gradient-correct gather), labels [N], weights [N]."""
        if self.world_size == 1:
            return embeddings, labels, sample_weights
        return (_AllGatherWithGrad.apply(embeddings, self.group), _all_gather(labels, self.group),
                _all_gather(sample_weights, self.group))

    def _check_batch_sizes(self, batch_size: int, device: torch.device) -> None:
        """Raise on every rank alike when the ranks' batch sizes differ (a collective and a host sync)."""
        if self.world_size == 1:
            return
        batch_sizes = torch.tensor([batch_size, -batch_size], device=device)
        dist.all_reduce(batch_sizes, op=dist.ReduceOp.MAX, group=self.group)
        largest, smallest = batch_sizes[0].item(), -batch_sizes[1].item()
        if largest != smallest:
            raise UserError(f"the processes passed batches of {smallest} to {largest} samples to Partial FC "
                            "in the same step; every process must use the same batch size (drop the last "
                            "incomplete batch).")

    def _check_labels(self, labels: torch.Tensor) -> None:
        """Raise on every rank alike (the labels are already global) when a label is out of range."""
        out_of_range = (labels < 0) | (labels >= self.num_classes)  # [N]
        if out_of_range.any():
            bad = labels[out_of_range][0].item()
            raise UserError(f"label {bad} is outside [0, {self.num_classes}); labels must run from 0 to "
                            "num_classes - 1, so set num_classes to the number of identities in the data.")

    def _margin_cross_entropy(self, embeddings: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor,
                              sample_weights: torch.Tensor) -> torch.Tensor:
        """The loss from the global embeddings [N, D], the used centres [S, D] and labels [N] (-1: not
        in these columns), with one [N, S] float32 buffer (see _MarginSoftmaxCrossEntropy and
        _PerClassLoss), plus the head's norm regulariser if it has one.

        The product runs in the autocast dtype when autocast is on; the embedding normalisation, the
        centre norms, the margin and the softmax in float32. The centres are divided by their norms after
        the product, on [N, S] rather than on [S, D], so no normalised copy of the shard is kept.
        """
        device_type = embeddings.device.type
        product_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                         else torch.float32)
        head = self.margin_loss
        with torch.autocast(device_type=device_type, enabled=False):
            embeddings = embeddings.float()  # [N, D]
            unit_embeddings = F.normalize(embeddings, dim=1)  # [N, D]
            if getattr(head, "per_class_loss", False):
                return _PerClassLoss.apply(unit_embeddings, centres, head.bias, labels, sample_weights, head,
                                           self.group, product_dtype)
            norms = embeddings.norm(dim=1)  # [N]
            margin_norms = norms if hasattr(head, "margin_norm_slope") else norms.detach()
            loss = _MarginSoftmaxCrossEntropy.apply(unit_embeddings, centres, margin_norms, labels, sample_weights,
                                                    head, self.group, product_dtype)
            if hasattr(head, "norm_regulariser"):
                loss = loss + self._counted_once(sample_weights * head.norm_regulariser(norms))
            return loss

    def _counted_once(self, per_sample: torch.Tensor) -> torch.Tensor:
        """(1/N) Σ_n of a per-sample term [N] computed alike on every rank from the gathered batch: the
        value of all N rows on every rank, the gradient only through this rank's own B rows (R1 of
        docs/losses.md), which the gather's backward then sums over ranks exactly once."""
        local = per_sample.shape[0] // self.world_size
        own = per_sample[self.rank * local:(self.rank + 1) * local].sum()
        return (per_sample.detach().sum() + own - own.detach()) / per_sample.shape[0]
