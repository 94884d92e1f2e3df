"""A plan before the run: memory per GPU and per node, checkpoint sizes and times, and steps, from a config.

    python -m tools.plan configs/wf42m_vit_l.py --gpus 64 --gpus-per-node 8 --gpu-memory 80
    python -m tools.plan configs/wf42m_vit_b_8gpu.py --gpus 8 --json          # every figure, for scripts
    python -m tools.plan configs/wf42m_vit_l.py --gpus 32 --check             # exit 1 when it does not fit

Per GPU (bytes at the peak of a training step, which comes in Partial FC's backward, while the backbone's
activations are still held): the backbone's parameters (fp32), their fp16/bf16 autocast copies,
gradients (fp32, twice with several GPUs: DDP's buckets are a second copy), the optimizer state
(AdamW: two fp32 moments; SGD: one momentum buffer), the activations of one micro-batch with and without
gradient checkpointing (tools.model_info's saved-tensor profile, extrapolated over identical blocks;
the total uses the config's setting), the input batch, the class centres of the largest Partial FC shard
(ceil(num_classes / GPUs) rows) and their optimizer state, and the loss's forward + backward peak at the
sample rate with the config's margin head `loss` (see partial_fc_peak_bytes). It fits when the total is at
most (1 - HEADROOM) of --gpu-memory: the rest is for the CUDA context, NCCL buffers and allocator
fragmentation, not counted.

Per node (host memory): the RecordIO index each training process holds (RecordDataset's int64 arrays and
the sampler's int32 permutation; DataLoader workers are forked and share it), the loader's prefetched
uint8 batches, and resuming (common.pt memory-mapped once per node through the page cache, and per
process its new shard state plus the rows of one saved shard, as PartialFC.load_resharded does).

Checkpoints: common.pt (backbone, its optimizer, the config), one rank file per GPU (its centres, their
optimizer state, random states), the total, and the time to write and to read them at --storage-gbps
(aggregate bandwidth of the shared storage). Steps: utils.config.derive, as train.py computes them.

When the setting does not fit, one line says so and what would make it fit (gradient checkpointing, a
lower sample rate, a smaller batch per GPU with gradient accumulation keeping the global batch, more
GPUs); with --host-memory, another line when a node's host memory does not suffice. The exit status is
0 either way, unless --check is given: then 1 when it does not fit. User
mistakes (a missing config, GPUs not a multiple of GPUs per node, ...) exit 2 with one line.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: python tools/<tool>.py
    import _by_path

    _by_path.rerun_as_module(__file__)

import argparse
import functools
import json
import math
import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch

from backbones import VARIANTS, get_model
from partial_fc import class_range
from tools.model_info import ActivationProfile, network_activation_profile
from utils.config import add_config_arguments, derive, load_config
from utils.errors import UserError, entry_point
from utils.images import IMAGE_SIZE
from utils.record_index import INDEX_CACHE_OFF, MIN_CACHED_INDEX_BYTES

GIB = 2**30
GB = 1e9
# Share of the GPU's memory left for what the plan does not count: the CUDA context (about 0.5 GiB),
# NCCL's buffers, the caching allocator's fragmentation.
HEADROOM = 0.10
# Partial FC's forward + backward peak in bytes per element of the [N, S] logits, fp32, measured at the
# per-GPU shape of WebFace42M on 64 GPUs (N 8192, C 32,187, D 512) by bench/bench_pfc_memory.py:
# 6.10 at sample rate 1, 6.60 at 0.3 (docs/benchmarks.md, "Partial FC memory per GPU"). They include the
# dense centre gradient and the sampled centres' copy at that shape.
MEASURED_BYTES_PER_LOGIT = {"all": 6.10, "sampled": 6.60}
# What a margin head keeps beside the buffer and its mask through backward, in bytes per logit element
# (docs/partial_fc.md's per-head peaks at N 8192, S 8000, D 512: combined, MagFace, ElasticFace 6.3;
# AdaFace 7.3, its clamp mask; CurricularFace 10.3, its float slope). Heads not listed keep nothing more
# (UniFace's 5.2 is not subtracted).
HEAD_BYTES_PER_LOGIT = {"adaface": 1.0, "curricularface": 4.0}
# fp16/bf16 autocast adds the 2-byte low-precision copy of the product and of its gradient (one at a time;
# docs/partial_fc.md, "Memory: one buffer").
HALF_PRODUCT_BYTES = 2
IMAGE_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE  # one uint8 image [3, 112, 112]
PREFETCH_FACTOR = 2  # dataset.build_loader's default: batches each worker keeps ready
# RecordDataset's index (utils/record_index.py): int64 keys and offsets over every .idx line (images, the
# identity records, the header); the dataset's image keys and offsets are views of them (insightface's
# consecutive keys). Parsing reads the text in blocks: measured 20 bytes a line beside at most
# INDEX_BLOCK_BYTES of text and its temporaries (tests/test_plan.py at 2 M lines; 906 MiB at WebFace42M's
# 44.5 M lines, bench/bench_scale.py). An index of MIN_CACHED_INDEX_BYTES or more is parsed once into the
# binary cache, which every process maps: the arrays are then one copy per node in the page cache, and a
# process keeps privately only the sampler's int32 permutation (INDEX_BYTES_PER_IMAGE), built each epoch.
INDEX_BYTES_PER_LINE = 2 * 8
INDEX_BYTES_PER_IMAGE = 4
INDEX_LINE_BYTES = 24  # "key<TAB>offset<NEWLINE>" of an 8-digit key and a 13-digit byte offset
INDEX_PARSE_BYTES_PER_LINE = 20
INDEX_BLOCK_BYTES = 64 << 20  # record_index's block of text, held with its parsing temporaries (about 2x)
# torch.save's cost per tensor beside its data: the zip record, 64-byte alignment and the pickle (measured
# with torch 2.14: 264 bytes), and per file (the pickle's frame, the zip directory).
SAVED_TENSOR_BYTES = 270
SAVED_FILE_BYTES = 4096
# A rank file's random states (utils.checkpoint.rng_state): torch's CPU generator (5,056 bytes), NumPy's
# key (624 int64), Python's Mersenne state (625 ints, pickled), the augment and DPAP generators.
RNG_STATE_BYTES = 5056 + 624 * 8 + 7000 + 2 * 5056
# Tensors of a rank file besides the centres' optimizer moments: the centres, AdamW's step, the random
# states' (NumPy key, torch, two generators, CUDA's) and the margin head's.
RANK_FILE_TENSORS = 8


class Cluster(NamedTuple):
    gpus: int
    gpus_per_node: int
    gpu_memory_gib: float
    storage_gbps: float  # GB/s (1e9 bytes) of the shared storage, all ranks together
    host_memory_gib: float | None = None  # per node; None: host memory is not checked

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node


@functools.cache
def activation_profile(network: str, precision: str) -> ActivationProfile:
    """tools.model_info's saved-tensor profile per image (measured on CPU at small depths; cached)."""
    return network_activation_profile(network, precision)


def uses_checkpointing(cfg) -> bool:
    """Gradient checkpointing as train.py builds the backbone: the config's, else the variant's default."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    return bool(VARIANTS[cfg.network].args.get("using_checkpoint", False))


@functools.cache
def backbone_tensors(network: str, embedding_size: int) -> tuple[int, int, int, int]:
    """(trainable parameters, state_dict bytes, state_dict tensors, trainable parameter tensors) of the
    backbone, built on the meta device (cached)."""
    with torch.device("meta"):
        model = get_model(network, embedding_size)
    state = model.state_dict()
    trainable = [param for param in model.parameters() if param.requires_grad]
    return (sum(p.numel() for p in trainable), sum(t.numel() * t.element_size() for t in state.values()),
            len(state), len(trainable))


def optimizer_state_floats(cfg) -> int:
    """fp32 values of optimizer state per parameter: AdamW's two moments, SGD's momentum (none at 0)."""
    if cfg.optimizer == "adamw":
        return 2
    return 1 if cfg.momentum else 0


def partial_fc_peak_bytes(num_rows: int, num_sampled: int, num_local: int, embedding_size: int,
                          precision: str, loss: str = "combined") -> float:
    """Peak bytes of Partial FC's forward + backward on one GPU, the dense centre gradient included.

    num_rows N (the global micro-batch), num_sampled S, num_local C (the shard's rows), D. The larger of
    the measured bytes per logit element times N·S (MEASURED_BYTES_PER_LOGIT, which the forward's
    buffer and mask temporaries set at large N) and the backward's live tensors
    (partial_fc._MarginSoftmaxCrossEntropy), with the [N, S] buffer and its bool mask (5 bytes an
    element) and the embedding gradient [N, D] held throughout: the centre gradient and one temporary
    [S, D] (and the sampled centres' copy), then with sampling the dense gradient [C, D] beside the
    centre gradient (the buffer is still held then: measured on CPU, tests/test_plan.py). The backward
    term dominates at small N, where the [S, D] and [C, D] tensors outweigh the logits. The margin head
    `loss` (losses.get_margin_loss's name) adds HEAD_BYTES_PER_LOGIT per element, fp16/bf16
    HALF_PRODUCT_BYTES.
    """
    n, s, c, d = num_rows, num_sampled, num_local, embedding_size
    sampled = s < c
    measured = MEASURED_BYTES_PER_LOGIT["sampled" if sampled else "all"] * n * s
    product_gradients = 8 * s * d + (4 * s * d if sampled else 0)
    dense_gradient = 4 * s * d + 4 * c * d if sampled else 0
    backward = 5 * n * s + 4 * n * d + max(product_gradients, dense_gradient)
    half = HALF_PRODUCT_BYTES * n * s if precision in ("fp16", "bf16") else 0
    return max(measured, backward) + half + HEAD_BYTES_PER_LOGIT.get(loss, 0) * n * s


def _per_gpu(cfg, cluster: Cluster) -> dict:
    params, _, _, _ = backbone_tensors(cfg.network, cfg.embedding_size)
    profile = activation_profile(cfg.network, cfg.precision)
    half = cfg.precision in ("fp16", "bf16")
    num_local = class_range(cfg.num_classes, 0, cluster.gpus)[1]  # rank 0 holds ceil(classes / GPUs)
    num_sampled = min(num_local, math.ceil(round(cfg.sample_rate * num_local, 6)))
    num_rows = cfg.batch_size * cluster.gpus
    d = cfg.embedding_size
    checkpointing = uses_checkpointing(cfg)
    activations = {True: profile.checkpointed * cfg.batch_size, False: profile.saved * cfg.batch_size}
    rows = {
        "backbone_parameters": 4 * params,
        "backbone_autocast_copies": 2 * params if half else 0,
        "backbone_gradients": 4 * params * (2 if cluster.gpus > 1 else 1),
        "backbone_optimizer_state": 4 * params * optimizer_state_floats(cfg),
        "activations": activations[checkpointing],
        "input_batch": cfg.batch_size * IMAGE_BYTES * (1 + 4),  # uint8 from the loader, float after normalising
        "class_centres": 4 * num_local * d,
        "class_centre_optimizer_state": 4 * num_local * d * optimizer_state_floats(cfg),
        "partial_fc_loss_peak": partial_fc_peak_bytes(num_rows, num_sampled, num_local, d, cfg.precision, cfg.loss),
    }
    total = sum(rows.values())
    usable = (1 - HEADROOM) * cluster.gpu_memory_gib * GIB
    return {"rows": rows, "total": total, "usable": usable, "fits": total <= usable,
            "parameters": params, "gradient_checkpointing": checkpointing,
            "activations_with_checkpointing": activations[True],
            "activations_without_checkpointing": activations[False],
            "class_rows": num_local, "sampled_rows": num_sampled, "logit_rows": num_rows,
            "logit_elements": num_rows * num_sampled}


def _checkpoint(cfg, cluster: Cluster) -> dict:
    params, state_bytes, state_tensors, param_tensors = backbone_tensors(cfg.network, cfg.embedding_size)
    floats = optimizer_state_floats(cfg)
    adam_steps = param_tensors if cfg.optimizer == "adamw" else 0  # one 0-dim fp32 step tensor per parameter
    optimizer_tensors = floats * param_tensors + adam_steps
    config_json = len(json.dumps(dict(cfg), default=list)) + 2 * len(cfg)  # to_json: indented
    common = (state_bytes + 4 * (floats * params + adam_steps)
              + SAVED_TENSOR_BYTES * (state_tensors + optimizer_tensors) + config_json + SAVED_FILE_BYTES)
    row_bytes = 4 * cfg.embedding_size * (1 + floats)  # centre and its optimizer state, fp32
    rank_fixed = SAVED_FILE_BYTES + RNG_STATE_BYTES + SAVED_TENSOR_BYTES * (floats + RANK_FILE_TENSORS)
    largest_rank = class_range(cfg.num_classes, 0, cluster.gpus)[1] * row_bytes + rank_fixed
    total = common + cfg.num_classes * row_bytes + cluster.gpus * rank_fixed
    head = total - common
    bandwidth = cluster.storage_gbps * GB
    # Same GPU count: each node reads common.pt once (its ranks share the page cache), each rank its file.
    # Another GPU count: a new rank reads whole every saved file overlapping its classes, at most two
    # per rank more than its share, so at most the head twice.
    same_read = cluster.nodes * common + head
    other_read = cluster.nodes * common + 2 * head
    return {"common_pt": common, "rank_file": largest_rank, "total": total, "write_seconds": total / bandwidth,
            "resume_read": same_read, "resume_seconds": same_read / bandwidth,
            "resume_read_other_gpu_count": other_read, "resume_seconds_other_gpu_count": other_read / bandwidth,
            "resume_read_if_uncached": cluster.gpus * common + head,
            "resume_seconds_if_uncached": (cluster.gpus * common + head) / bandwidth}


def _per_node(cfg, cluster: Cluster, checkpoint: dict, per_gpu: dict) -> dict:
    """Host memory of one node in the three phases of a start: building the dataset (the index's start-up
    peak), restoring a checkpoint (the index held, the shards and common.pt mapped), training (the index
    held, the loader's batches)."""
    per_process, rows = _index_per_node(cfg, cluster.gpus_per_node)
    loader = (cfg.num_workers * PREFETCH_FACTOR + 1) * cfg.batch_size * IMAGE_BYTES  # + the pinned batch
    shard_state = per_gpu["rows"]["class_centres"] + per_gpu["rows"]["class_centre_optimizer_state"]
    resume = 2 * shard_state  # its new shard state and at most as many rows of one saved shard
    per_process.update(loader_batches=loader, resume_shards=resume)
    rows.update(loader_batches=loader * cluster.gpus_per_node, resume_shards=resume * cluster.gpus_per_node)
    rows["resume_common_pt"] = checkpoint["common_pt"]  # memory-mapped: one copy in the page cache per node
    phases = {"start_up": rows["dataset_index_start_up"],
              "resume": rows["dataset_index"] + rows["resume_shards"] + rows["resume_common_pt"],
              "training": rows["dataset_index"] + rows["loader_batches"]}
    return {"per_process": per_process, "rows": rows, "phases": phases, "peak": max(phases.values()),
            "index_cached": index_is_cached(cfg)}


def index_is_cached(cfg) -> bool:
    """Whether the run's RecordIO index is parsed once into utils.record_index's cache (see open_index)."""
    lines = cfg.num_image + cfg.num_classes + 1
    return (cfg.dataset == "recordio" and cfg.index_cache != INDEX_CACHE_OFF
            and INDEX_LINE_BYTES * lines >= MIN_CACHED_INDEX_BYTES)


def _index_per_node(cfg, gpus_per_node: int) -> tuple[dict, dict]:
    """The dataset index's host memory, ({per process}, {per node}), at start-up and held.

    Without the cache every process parses the text and holds the arrays; with it (RecordIO, index_cache
    not "off", an index of at least MIN_CACHED_INDEX_BYTES) one process parses and writes the cache (the
    first start; later starts only map it), the others wait and map it, and the arrays are held once per
    node in the page cache beside each process's permutation.
    """
    permutation = INDEX_BYTES_PER_IMAGE * cfg.num_image
    if cfg.dataset != "recordio":  # folder datasets also hold their paths (unknown here); synthetic data no index
        return ({"dataset_index_start_up": permutation, "dataset_index": permutation},
                {"dataset_index_start_up": permutation * gpus_per_node, "dataset_index": permutation * gpus_per_node})
    lines = cfg.num_image + cfg.num_classes + 1  # images, identity records, header (insightface layout)
    arrays = INDEX_BYTES_PER_LINE * lines
    parse = INDEX_PARSE_BYTES_PER_LINE * lines + min(INDEX_BLOCK_BYTES, 2 * INDEX_LINE_BYTES * lines)
    if not index_is_cached(cfg):
        held = arrays + permutation
        return ({"dataset_index_start_up": max(parse, held), "dataset_index": held},
                {"dataset_index_start_up": max(parse, held) * gpus_per_node, "dataset_index": held * gpus_per_node})
    return ({"dataset_index_start_up": max(parse, arrays + permutation), "dataset_index": permutation},
            {"dataset_index_start_up": max(parse, arrays + permutation) + (gpus_per_node - 1) * permutation,
             "dataset_index": arrays + gpus_per_node * permutation})


def _schedule(derived) -> dict:
    return {key: derived[key] for key in ("batch_size", "gradient_accumulation", "total_batch_size",
                                          "steps_per_epoch", "num_epoch", "total_steps", "warmup_steps")}


def _check_inputs(cfg, cluster: Cluster) -> None:
    if cluster.gpus < 1 or cluster.gpus_per_node < 1:
        raise UserError(f"--gpus {cluster.gpus} and --gpus-per-node {cluster.gpus_per_node} must be positive.")
    if cluster.gpus % cluster.gpus_per_node:
        raise UserError(f"--gpus {cluster.gpus} is not a multiple of --gpus-per-node {cluster.gpus_per_node}; "
                        "give the GPUs of whole nodes.")
    given = {"--gpu-memory": cluster.gpu_memory_gib, "--storage-gbps": cluster.storage_gbps,
             "--host-memory": cluster.host_memory_gib}
    for flag, value in given.items():
        if value is not None and not value > 0:  # --host-memory 0 was taken as not given
            raise UserError(f"{flag} {value} must be positive.")
    for key in ("num_classes", "num_image"):
        if cfg[key] <= 0:
            raise UserError(f"the config sets no {key} (train.py reads it from the data); the plan needs it: "
                            f"pass --set {key}=N.")
    if cfg.num_classes < cluster.gpus:
        raise UserError(f"num_classes {cfg.num_classes} is smaller than --gpus {cluster.gpus}; every GPU "
                        "needs at least one class centre.")


def make_plan(cfg, cluster: Cluster, advise: bool = True) -> dict:
    """Every figure of the plan (bytes, seconds, counts) for config `cfg` on `cluster`, JSON-able.

    Raises UserError for a cluster or config the run could not start with (see _check_inputs and
    utils.config.derive).
    """
    _check_inputs(cfg, cluster)
    derived = derive(cfg, cluster.gpus)
    per_gpu = _per_gpu(derived, cluster)
    checkpoint = _checkpoint(derived, cluster)
    plan = {"config": {"network": cfg.network, "precision": cfg.precision, "optimizer": cfg.optimizer,
                       "sample_rate": cfg.sample_rate, "loss": cfg.loss, "num_classes": cfg.num_classes,
                       "num_image": cfg.num_image, "embedding_size": cfg.embedding_size},
            "cluster": {**cluster._asdict(), "nodes": cluster.nodes}, "headroom": HEADROOM, "per_gpu": per_gpu,
            "per_node": _per_node(derived, cluster, checkpoint, per_gpu), "checkpoint": checkpoint,
            "schedule": _schedule(derived)}
    plan["advice"] = None if per_gpu["fits"] or not advise else advice(cfg, cluster, per_gpu)
    plan["host_advice"] = _host_advice(plan["per_node"], cluster)
    return plan


_HOST_HINTS = {
    "start_up": "the index is parsed at start-up: keep index_cache on (its default), more host memory, or "
                "fewer processes per node",
    "resume": "resume on the same GPU count (one shard per process), or on more GPUs (smaller shards)",
    "training": "the index and the loaders' batches are held: keep index_cache on (its default), fewer "
                "num_workers, more host memory, or fewer processes per node",
}


def _host_advice(per_node: dict, cluster: Cluster) -> str | None:
    """One line when --host-memory is given and a node's peak is over (1 - HEADROOM) of it, else None."""
    if cluster.host_memory_gib is None:
        return None
    usable = (1 - HEADROOM) * cluster.host_memory_gib * GIB
    if per_node["peak"] <= usable:
        return None
    phase = max(per_node["phases"], key=per_node["phases"].get)
    return (f"host memory does not fit: {per_node['peak'] / GIB:.1f} GiB per node at {phase.replace('_', '-')} "
            f"of {usable / GIB:.1f} usable ({cluster.host_memory_gib:g} GiB less {HEADROOM:.0%}); "
            f"{_HOST_HINTS[phase]}.")


def _fits(cfg, cluster: Cluster) -> bool:
    try:
        return make_plan(cfg, cluster, advise=False)["per_gpu"]["fits"]
    except UserError:
        return False


def _changed(cfg, **settings):
    return type(cfg)({**cfg, **settings})


def advice(cfg, cluster: Cluster, per_gpu: dict) -> str:
    """One line: how far the setting is over, and each single change that makes it fit."""
    fixes = []
    if not per_gpu["gradient_checkpointing"] and _fits(_changed(cfg, gradient_checkpointing=True), cluster):
        fixes.append("gradient_checkpointing=True")
    rates = [r / 100 for r in range(round(cfg.sample_rate * 100) - 5, 4, -5)]  # int(0.29 * 100) is 28
    rate = next((r for r in rates if _fits(_changed(cfg, sample_rate=r), cluster)), None)
    if rate is not None:
        fixes.append(f"sample_rate={rate:g}")
    global_batch = derive(cfg, cluster.gpus).total_batch_size
    batches = [b for b in range(cfg.batch_size - 1, 0, -1) if global_batch % (b * cluster.gpus) == 0]
    batch = next((b for b in batches if _fits(_changed(cfg, batch_size=b, global_batch_size=global_batch), cluster)),
                 None)
    if batch is not None:
        fixes.append(f"batch_size={batch} with global_batch_size={global_batch} "
                     f"({global_batch // (batch * cluster.gpus)} micro-batches per step)")
    more = [cluster.gpus_per_node * n for n in range(cluster.nodes + 1, 8 * cluster.nodes + 1)]
    gpus = next((g for g in more if _fits(cfg, cluster._replace(gpus=g))), None)
    if gpus is not None:
        fixes.append(f"{gpus} GPUs")
    over = per_gpu["total"] / GIB, per_gpu["usable"] / GIB
    change = ("change one of: " + "; ".join(fixes)) if fixes else "no single change of checkpointing, sample " \
        "rate, batch or up to 8x the GPUs makes it fit"
    return (f"does not fit: {over[0]:.1f} GiB per GPU of {over[1]:.1f} usable "
            f"({cluster.gpu_memory_gib:g} GiB less {HEADROOM:.0%}); {change}.")


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f} GiB"


_GPU_LABELS = {
    "backbone_parameters": "backbone parameters (fp32)",
    "backbone_autocast_copies": "their autocast copies",
    "backbone_gradients": "backbone gradients",
    "backbone_optimizer_state": "backbone optimizer state",
    "activations": "activations",
    "input_batch": "input batch",
    "class_centres": "class centres",
    "class_centre_optimizer_state": "centre optimizer state",
    "partial_fc_loss_peak": "Partial FC loss peak",
}


def format_plan(plan: dict) -> str:
    """The plan as text: per GPU, per node, checkpoints, steps, and the verdict."""
    cfg, cluster, gpu = plan["config"], plan["cluster"], plan["per_gpu"]
    node, ckpt, sched = plan["per_node"], plan["checkpoint"], plan["schedule"]
    notes = {
        "backbone_parameters": f"{gpu['parameters'] / 1e6:.1f} M",
        "backbone_autocast_copies": cfg["precision"],
        "backbone_gradients": "fp32" + (" + DDP buckets" if cluster["gpus"] > 1 else ""),
        "backbone_optimizer_state": cfg["optimizer"],
        "activations": (f"batch {sched['batch_size']}, checkpointing {'on' if gpu['gradient_checkpointing'] else 'off'}"
                        f" (on {gpu['activations_with_checkpointing'] / GIB:.2f}, "
                        f"off {gpu['activations_without_checkpointing'] / GIB:.2f} GiB)"),
        "input_batch": "uint8 + float",
        "class_centres": f"{gpu['class_rows']:,} of {cfg['num_classes']:,} classes x {cfg['embedding_size']}",
        "class_centre_optimizer_state": cfg["optimizer"],
        "partial_fc_loss_peak": (f"logits {gpu['logit_rows']:,} x {gpu['sampled_rows']:,} "
                                 f"(sample rate {cfg['sample_rate']:g}, {cfg['loss']})"),
    }
    lines = [f"{cfg['network']} on {cluster['gpus']} GPUs ({cluster['nodes']} x {cluster['gpus_per_node']}), "
             f"{cfg['precision']}, {cfg['optimizer']}, {cfg['num_classes']:,} classes, {cfg['num_image']:,} images",
             "", "per GPU"]
    lines += [f"  {_GPU_LABELS[key]:<28}{_gib(value)}  {notes[key]}" for key, value in gpu["rows"].items()]
    lines.append(f"  {'total':<28}{_gib(gpu['total'])}  of {cluster['gpu_memory_gib']:g} GiB "
                 f"({gpu['usable'] / GIB:.1f} usable: {plan['headroom']:.0%} for the CUDA context, NCCL, "
                 "fragmentation)")
    rows, phases, index_cached = node["rows"], node["phases"], node["index_cached"]
    lines += ["", f"per node (host memory, {cluster['gpus_per_node']} training processes; forked loader workers "
              "share their process's index)",
              f"  {'dataset index, start-up':<28}{_gib(rows['dataset_index_start_up'])}  parsing train.idx "
              f"({'once per node, into its cache' if index_cached else 'in every process'})",
              f"  {'dataset index, held':<28}{_gib(rows['dataset_index'])}  int64 keys and offsets "
              f"({'one mapped copy per node' if index_cached else 'per process'}), int32 order per process",
              f"  {'loader batches':<28}{_gib(rows['loader_batches'])}  "
              f"workers x {PREFETCH_FACTOR} prefetched + 1 pinned batch per process",
              f"  {'resume: centre shards':<28}{_gib(rows['resume_shards'])}  "
              "new shard state + rows of one saved shard, per process",
              f"  {'resume: common.pt':<28}{_gib(rows['resume_common_pt'])}  memory-mapped, once per node",
              f"  {'peak':<28}{_gib(node['peak'])}  start-up {phases['start_up'] / GIB:.1f}, resume "
              f"{phases['resume'] / GIB:.1f}, training {phases['training'] / GIB:.1f} GiB",
              "", f"checkpoints (storage at {cluster['storage_gbps']:g} GB/s)",
              f"  {'common.pt':<28}{_gib(ckpt['common_pt'])}",
              f"  {'each rank file':<28}{_gib(ckpt['rank_file'])}  x {cluster['gpus']}",
              f"  {'total':<28}{_gib(ckpt['total'])}  written in {ckpt['write_seconds']:.0f} s",
              f"  {'resume, same GPU count':<28}{_gib(ckpt['resume_read'])}  read in {ckpt['resume_seconds']:.0f} s "
              f"(common.pt once per node; {ckpt['resume_read_if_uncached'] / GIB:.1f} GiB in "
              f"{ckpt['resume_seconds_if_uncached']:.0f} s if every process reads it from storage)",
              f"  {'resume, other GPU count':<28}{_gib(ckpt['resume_read_other_gpu_count'])}  "
              f"read in at most {ckpt['resume_seconds_other_gpu_count']:.0f} s",
              "", f"steps: {sched['steps_per_epoch']:,} per epoch x {sched['num_epoch']} epochs = "
              f"{sched['total_steps']:,} steps of {sched['total_batch_size']:,} images "
              f"({sched['batch_size']} per GPU x "
              f"{sched['gradient_accumulation']} micro-batch(es) x {cluster['gpus']} GPUs), "
              f"{sched['warmup_steps']:,} of warm-up", ""]
    lines.append(plan["advice"] or f"fits: {gpu['total'] / GIB:.1f} GiB per GPU of {gpu['usable'] / GIB:.1f} usable.")
    if plan["host_advice"]:
        lines.append(plan["host_advice"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.plan", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the run (default 8)")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default min(8, --gpus))")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--storage-gbps", type=float, default=1.0,
                        help="bandwidth of the checkpoint storage in GB/s, all ranks together (default 1)")
    parser.add_argument("--host-memory", type=float, default=None,
                        help="host memory of one node in GiB: also check the per-node peak (default: not checked)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON (bytes, seconds)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the setting does not fit")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else min(8, args.gpus)
    plan = make_plan(cfg, Cluster(args.gpus, gpus_per_node, args.gpu_memory, args.storage_gbps, args.host_memory))
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    fits = plan["per_gpu"]["fits"] and plan["host_advice"] is None
    return 1 if args.check and not fits else 0


if __name__ == "__main__":
    sys.exit(main())
