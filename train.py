"""Train a TransFace backbone.

    python train.py CONFIG [--set key=value ...] [--resume auto] [--init weights.pt]
    torchrun --nproc_per_node=8 train.py CONFIG

One optimizer step: uint8 batch -> device flip and normalise -> DPAP -> backbone (through DDP), with
patch information when EHSM is on -> EHSM weights -> Partial FC loss -> backward, for
`gradient_accumulation` micro-batches, then clipping, optimizer steps and the learning rate of the next step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import dataset
import device_input
import losses
from backbones import get_model, has_patch_info, load_backbone
from dpap import DPAP
from eval.verification import TrainingVerifier, read_checked
from partial_fc import PartialFC, saved_ranks_overlapping
from utils import config as config_utils
from utils import distributed
from utils.checkpoint import CheckpointManager, rng_state, set_rng_state
from utils.errors import UserError, entry_point
from utils.files import atomic_save, atomic_write_text
from utils.monitor import (
    Scalars,
    SpeedMeter,
    close_logging,
    format_seconds,
    import_wandb,
    memory_text,
    setup_logging,
)
from utils.optim import build_head_optimizer, build_optimizer, lr_at, set_lr
from utils.output import OutputLock, claim_output, clean_stale_temporaries
from utils.precision import autocast
from utils.seeding import derive_seed, seed_everything

log = logging.getLogger("transface.train")

@dataclass
class Run:
    """Everything a training run owns; the checkpoint schema is `common_state` + `local_state`."""

    cfg: dict
    ctx: distributed.DistContext
    backbone: torch.nn.Module  # the bare network, for saving and evaluation
    model: torch.nn.Module  # the network the step calls: DDP and/or torch.compile around `backbone`
    head: PartialFC
    backbone_optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generators: dict[str, torch.Generator]
    dpap: DPAP | None
    step: int = 0  # optimizer steps done (names checkpoints and log lines)
    samples: int = 0  # training images seen: the run's progress, the learning rate's argument
    epoch: int = 0  # the epoch under way
    epoch_samples: int = 0  # images of this epoch's permutation already trained on (the sampler's start)
    nonfinite_in_a_row: int = 0
    best: dict[str, float] = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # dataset.data_identity of the training data

    def epoch_ended(self) -> bool:
        """Whether the epoch under way is over: the rest of its permutation fills no global batch."""
        return self.cfg.num_image - self.epoch_samples < self.cfg.total_batch_size

    def common_state(self) -> dict:
        return {"backbone": self.backbone.state_dict(),
                "backbone_optimizer": self.backbone_optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "samples": self.samples,
                "epoch": self.epoch, "epoch_samples": self.epoch_samples, "best": dict(self.best),
                "total_batch_size": self.cfg.total_batch_size, "config": config_utils.to_json(self.cfg),
                "data": dict(self.data)}

    def local_state(self) -> dict:
        return {"head": self.head.state_dict(), "head_optimizer": self.head_optimizer.state_dict(),
                "rng": rng_state(self.generators, self.ctx.device), "nonfinite_in_a_row": self.nonfinite_in_a_row}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_utils.add_config_arguments(parser)
    parser.add_argument("--resume", choices=["auto", "no"], default=None,
                        help="auto: continue from the newest complete checkpoint in the output folder "
                             "(default: the config's `resume`)")
    parser.add_argument("--init", default=None, help="start from these backbone weights (overrides config.init)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: this rank's GPU, else CPU)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps in total, with a checkpoint (for smoke tests)")
    return parser.parse_args(argv)


def build_run(cfg, ctx) -> Run:
    overrides = {"attn_impl": cfg.attention} if has_patch_info(cfg.network) else {}
    if cfg.gradient_checkpointing is not None:
        overrides["using_checkpoint"] = cfg.gradient_checkpointing
    if cfg.init:
        backbone = load_backbone(cfg.network, cfg.init, cfg.embedding_size, **overrides)
    else:
        backbone = get_model(cfg.network, cfg.embedding_size, **overrides)
    backbone = backbone.to(ctx.device)
    model = distributed.wrap_ddp(backbone, ctx, broadcast_buffers=False)
    if cfg.compile:
        model = torch.compile(model)
    head = PartialFC(margin_loss(cfg), cfg.embedding_size, cfg.num_classes, cfg.sample_rate,
                     seed=cfg.seed).to(ctx.device)
    generators = {name: torch.Generator(ctx.device).manual_seed(derive_seed(cfg.seed, ctx.rank, stream))
                  for stream, name in enumerate(("augment", "dpap"))}
    return Run(cfg=cfg, ctx=ctx, backbone=backbone, model=model, head=head,
               backbone_optimizer=build_optimizer(cfg, [backbone]), head_optimizer=build_head_optimizer(cfg, head),
               scaler=_grad_scaler(cfg, ctx), generators=generators,
               dpap=DPAP.from_config(cfg) if cfg.dpap else None)


def margin_loss(cfg) -> torch.nn.Module:
    """The margin head of cfg.loss: "combined" from the margin_* keys as before, any other from loss_params.

    A head that draws random numbers (ElasticFace's margins) draws the same ones on every rank, from rank 0's
    stream 2 of the run's seed (augment and dpap are streams 0 and 1); its generator state is checkpointed."""
    if cfg.loss != "combined":
        return losses.get_margin_loss(cfg.loss, seed=derive_seed(cfg.seed, 0, 2), **cfg.loss_params)
    m1, m2, m3 = cfg.margin_list
    return losses.get_margin_loss("combined", s=cfg.margin_scale, m1=m1, m2=m2, m3=m3,
                                  interclass_filtering_threshold=cfg.interclass_filtering_threshold,
                                  exact_gradient=cfg.margin_exact_gradient)


def _grad_scaler(cfg, ctx) -> torch.amp.GradScaler:
    """The fp16 loss scaler (disabled otherwise). With several ranks, overflow checks are all-reduced: each
    rank's class-centre shard overflows on its own, and ranks with different scales would take different
    backbone steps."""
    enabled = cfg.precision == "fp16"
    if enabled and ctx.distributed:
        return ShardedGradScaler(ctx.device.type, growth_interval=100)
    return torch.amp.GradScaler(ctx.device.type, enabled=enabled, growth_interval=100)


def restore(run: Run, manager: CheckpointManager) -> bool:
    """Load the newest complete checkpoint into `run`; class centres are re-sharded if the world size changed."""
    found = manager.load_latest(all_agree=lambda ok: distributed.all_ranks(ok, run.ctx),
                                needed_ranks=lambda saved_world: saved_ranks_overlapping(
                                    run.cfg.num_classes, saved_world, run.ctx.rank, run.ctx.world_size))
    if found is None:
        return False
    common, parts = found
    _check_compatible(run.cfg, common)
    _check_same_data_and_seed(run, common)
    _restore_progress(run, common)
    run.backbone.load_state_dict(common["backbone"])
    run.backbone_optimizer.load_state_dict(common["backbone_optimizer"])
    if common["scaler"] and run.scaler.is_enabled():  # empty when the saved run did not use fp16
        run.scaler.load_state_dict(common["scaler"])
    run.best = dict(common["best"])
    if common["world_size"] == run.ctx.world_size:
        mine = parts[run.ctx.rank]
        run.head.load_state_dict(mine["head"])
        run.head_optimizer.load_state_dict(mine["head_optimizer"])
        set_rng_state(mine["rng"], run.generators, run.ctx.device)
        run.nonfinite_in_a_row = mine["nonfinite_in_a_row"]
    else:
        run.head.load_resharded(_handed_over(parts), run.head_optimizer)
        log.warning("world size changed from %d to %d: class centres re-sharded, random states re-seeded",
                    common["world_size"], run.ctx.world_size)
    return True


def _restore_progress(run: Run, common: dict) -> None:
    """Step, samples seen and the place in the epoch from a checkpoint. Checkpoints written before progress
    was counted in samples hold only the step: it ran `step x their global batch` samples, and their epochs
    were `steps_per_epoch` steps long. With another global batch the run continues the same epoch at the
    same image and the same learning-rate curve; the log says so in one line."""
    run.step = common["step"]
    if "samples" in common:
        run.samples, run.epoch, run.epoch_samples = common["samples"], common["epoch"], common["epoch_samples"]
    else:
        saved_steps_per_epoch = json.loads(common["config"])["steps_per_epoch"]
        epoch, step_in_epoch = divmod(run.step, saved_steps_per_epoch)
        run.samples = run.step * common["total_batch_size"]
        run.epoch, run.epoch_samples = epoch, step_in_epoch * common["total_batch_size"]
    if common["total_batch_size"] != run.cfg.total_batch_size:
        log.warning("global batch changed from %d to %d (batch_size %d x gradient_accumulation %d x world size %d): "
                    "kept %d samples seen, epoch %d from image %d and the learning rate at that many samples; "
                    "the step counter continues from %d and the run ends after %d samples", common["total_batch_size"],
                    run.cfg.total_batch_size, run.cfg.batch_size, run.cfg.gradient_accumulation, run.ctx.world_size,
                    run.samples, run.epoch, run.epoch_samples, run.step, run.cfg.total_samples)


def _handed_over(parts: dict[int, dict]):
    """(head, head_optimizer) of each saved part, removed from `parts` as it is handed over, so that the
    memory-mapped file of one part is released before the next is read."""
    for saved_rank in sorted(parts):
        part = parts.pop(saved_rank)
        yield part["head"], part["head_optimizer"]


def _check_compatible(cfg, common: dict) -> None:
    """A checkpoint resumes only the same model: stop with one sentence instead of a shape error."""
    saved = json.loads(common["config"])
    saved.setdefault("loss", "combined")  # checkpoints written before the loss key
    changed = [f"{key} {saved[key]!r} -> {cfg[key]!r}" for key in ("network", "embedding_size", "num_classes", "loss")
               if saved[key] != cfg[key]]
    if changed:
        raise UserError(f"the checkpoint in '{cfg.output}' was trained with other settings ({', '.join(changed)}); "
                        "resume with the same settings, or set another output to start a new run.")


def _check_same_data_and_seed(run: Run, common: dict) -> None:
    """Resuming with other data or another seed silently trains some images twice and skips others in the
    epoch under way: refuse it with one sentence, unless the config allows it (then warn loudly)."""
    saved_seed = json.loads(common["config"])["seed"]
    changed = [f"{key} {common['data'][key]!r} -> {run.data[key]!r}" for key in run.data
               if key in common.get("data", {}) and common["data"][key] != run.data[key]]
    if saved_seed != run.cfg.seed:
        changed.append(f"seed {saved_seed} -> {run.cfg.seed}")
    if not changed:
        return
    if not run.cfg.resume_allow_change:
        raise UserError(f"the checkpoint in '{run.cfg.output}' was trained on other data or with another seed "
                        f"({'; '.join(changed)}); restore the data and seed, set another output to start afresh, "
                        "or --set resume_allow_change=True to continue anyway.")
    log.warning("RESUMING WITH CHANGED DATA OR SEED (resume_allow_change=True): %s; the epoch under way will "
                "repeat some images and skip others", "; ".join(changed))


def save(run: Run, manager: CheckpointManager) -> None:
    folder = manager.save(run.step, run.common_state(), run.local_state())
    log.info("checkpoint saved to %s", folder)


def save_backbone(run: Run) -> None:
    """model.pt: the bare backbone state_dict, loadable by the released evaluation code, and its model.pt.sha256."""
    if run.ctx.is_main:
        atomic_save(run.backbone.state_dict(), Path(run.cfg.output) / "model.pt")


def train_step(run: Run, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> dict[str, float | torch.Tensor] | None:
    """One optimizer step over the (images, labels) micro-batches; None when the step was skipped."""
    cfg, device = run.cfg, run.ctx.device
    num_micro = len(micro_batches)
    total_loss = torch.zeros((), device=device)
    ehsm_stats, num_perturbed = [], 0
    for index, (images, labels) in enumerate(micro_batches):  # images [B, 3, H, W] in [-1, 1] on the device
        last = index == num_micro - 1
        sync = contextlib.nullcontext() if last or not run.ctx.distributed else _ddp(run.model).no_sync()
        with sync:
            with autocast(device, cfg.precision):
                if run.dpap is not None:  # the scoring pass runs in the training precision too
                    images, perturbed = run.dpap(run.backbone, images, run.generators["dpap"])
                    num_perturbed += perturbed
                weights = None
                if cfg.ehsm:
                    embedding, _, patch_std = run.model(images, with_patch_info=True)
                    weights = losses.ehsm_weights(patch_std.float(), cfg.ehsm_gamma, cfg.ehsm_top_k, cfg.ehsm_rule)
                    ehsm_stats.append(weights)
                else:
                    embedding = run.model(images)
                loss = run.head(embedding, labels, weights) / num_micro
            run.scaler.scale(loss).backward()
        total_loss += loss.detach()
    # A CPU-GPU sync: a non-finite loss must be known before the optimizer steps.
    loss_value = total_loss.item()
    if not torch.isfinite(total_loss):
        return _skip_nonfinite(run, loss_value)
    run.nonfinite_in_a_row = 0
    run.scaler.unscale_(run.backbone_optimizer)
    if cfg.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.backbone.parameters(), cfg.clip_grad_norm)
    run.scaler.step(run.backbone_optimizer)
    run.scaler.step(run.head_optimizer)
    run.scaler.update()
    _zero_grad(run)
    stats = {"loss": loss_value, "perturbed_fraction": num_perturbed / (num_micro * cfg.batch_size)}
    if ehsm_stats:
        weights = torch.cat(ehsm_stats)
        # Left on the device: read only on logging steps, so no extra host sync per step.
        stats.update(ehsm_weight_mean=weights.mean(), ehsm_weight_std=weights.std())
    return stats


def _ddp(model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
    """The DDP wrapper inside `model`, which torch.compile may have wrapped once more."""
    return getattr(model, "_orig_mod", model)


def _zero_grad(run: Run) -> None:
    run.backbone_optimizer.zero_grad(set_to_none=True)
    run.head_optimizer.zero_grad(set_to_none=True)


def _skip_nonfinite(run: Run, loss_value: float) -> None:
    run.nonfinite_in_a_row += 1
    _zero_grad(run)
    if run.scaler.is_enabled():
        run.scaler.update(run.scaler.get_scale() / 2)
    log.warning("step %d: loss is %s; step skipped (%d in a row)", run.step, loss_value, run.nonfinite_in_a_row)
    if run.nonfinite_in_a_row >= run.cfg.max_nonfinite_steps:
        raise TrainingDiverged(f"the loss was not finite for {run.nonfinite_in_a_row} steps in a row at step "
                               f"{run.step}; lower lr, raise warmup_epoch or use precision='bf16', then resume.")
    return None


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row."""


def train(run: Run, train_set, manager: CheckpointManager, *, verifier, max_steps: int | None,
          stop_requested, lock: OutputLock | None = None) -> bool:
    """Run optimizer steps until the end (True) or a stop request (False), checkpointing on the way."""
    cfg, ctx = run.cfg, run.ctx
    global_batch, end_step = cfg.total_batch_size, _end_step(run)
    last_step = end_step if max_steps is None else min(max_steps, end_step)
    loader = dataset.build_loader(train_set, cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                                  num_workers=cfg.num_workers, device=ctx.device,
                                  micro_batches=cfg.gradient_accumulation)
    augment = device_input.build_device_augment(cfg, train_set, ctx.device, generator=run.generators["augment"])
    meter = SpeedMeter(global_batch, end_step, run.step)
    scalars = Scalars(cfg.output, cfg.tensorboard and ctx.is_main, cfg if cfg.using_wandb and ctx.is_main else None)
    progress = tqdm(total=last_step, initial=run.step, unit="step", dynamic_ncols=True,
                    disable=not (ctx.is_main and sys.stderr.isatty()))
    run.model.train()
    try:
        while run.step < last_step:
            if run.epoch_ended():
                run.epoch, run.epoch_samples = run.epoch + 1, 0
            loader.sampler.set_epoch(run.epoch, run.epoch_samples)
            batches = iter(loader)
            for _ in range(min((cfg.num_image - run.epoch_samples) // global_batch, last_step - run.step)):
                set_lr([run.backbone_optimizer, run.head_optimizer],
                       lr_at(run.samples, cfg.lr, cfg.total_samples, cfg.warmup_samples, schedule=cfg.lr_scheduler,
                             power=cfg.lr_power, milestones=cfg.lr_milestone_samples, gamma=cfg.lr_gamma))
                stats = train_step(run, [augment(next(batches)) for _ in range(cfg.gradient_accumulation)])
                run.step, run.samples, run.epoch_samples = (run.step + 1, run.samples + global_batch,
                                                            run.epoch_samples + global_batch)
                progress.update()
                if stats is not None and (run.step % cfg.frequent == 0 or run.step == last_step):
                    _log_step(run, stats, meter, scalars)
                if verifier is not None and (run.step % cfg.verbose == 0 or run.step == end_step):
                    verifier(run, scalars)
                stop = distributed.any_rank(stop_requested(), ctx)  # all ranks stop at the same step
                epoch_end = run.epoch_ended()
                backbone_due = epoch_end or run.step == end_step
                checkpoint_due = manager.is_due(run.step, last_step, stop, epoch_end)
                if backbone_due or checkpoint_due:
                    _check_still_owner(lock, ctx)
                if backbone_due:
                    save_backbone(run)
                if checkpoint_due:
                    save(run, manager)
                if stop:
                    log.warning("stopped at step %d on request; continue with --resume auto", run.step)
                    return False
    finally:
        progress.close()
        scalars.close()
    return True


def _end_step(run: Run) -> int:
    """The step after which the run has seen its planned `total_samples` (to within one global batch)."""
    return run.step + max(0, math.ceil((run.cfg.total_samples - run.samples) / run.cfg.total_batch_size))


def _log_step(run: Run, stats: dict, meter: SpeedMeter, scalars: Scalars) -> None:
    speed, eta = meter.report(run.step)
    lr = run.backbone_optimizer.param_groups[0]["lr"]
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
    log.info("step %d/%d epoch %d loss %.4f lr %.3e %.1f samples/s scale %.0f mem %s eta %s",
             run.step, meter.total_steps, run.epoch, stats["loss"], lr, speed, scale,
             memory_text(run.ctx.device), format_seconds(eta))
    values = {f"train/{k}": float(v) for k, v in stats.items()}
    scalars.add(values | {"train/lr": lr, "train/samples_per_s": speed}, run.step)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {args.max_steps}; leave it out to train every step.")
    stop_requested, previous_handler = _catch_sigterm()
    lock = None
    try:
        cfg = config_utils.load_config(args.config, args.overrides)
        _check_network_options(cfg)
        if cfg.using_wandb:
            import_wandb()  # a missing package stops before the data and the model are built
        if args.init is not None:
            cfg.init = args.init
        if args.resume is not None:
            cfg.resume = args.resume == "auto"
        ctx = distributed.setup(args.device)
        lock = _claim_output(cfg.output, ctx)
        setup_logging(cfg.output, ctx.rank)
        if ctx.is_main:
            clean_stale_temporaries(cfg.output)
        seed_everything(cfg.seed + ctx.rank)  # ranks draw different samples
        train_set = dataset.build_dataset(cfg)
        cfg = dataset.resolve_data_counts(cfg, train_set)
        cfg = config_utils.derive(cfg, ctx.world_size)
        if cfg.precision == "fp16" and ctx.device.type == "cpu":
            raise UserError("precision 'fp16' needs a GPU; on a CPU use --set precision=bf16 or precision=fp32.")
        _check_val_targets(cfg)
        run = build_run(cfg, ctx)
        run.data = dataset.data_identity(train_set)
        manager = CheckpointManager(cfg.output, ctx.rank, ctx.world_size, cfg.save_last, save_every=cfg.save_every,
                                    epoch_ends=True)
        if cfg.resume and restore(run, manager):
            log.info("resumed at step %d (epoch %d)", run.step, run.epoch)
        elif not cfg.resume and manager.has_checkpoints():
            raise UserError(f"output folder '{cfg.output}' holds checkpoints of an earlier run; continue it with "
                            "--resume auto, or set another output (--set output=...) to start afresh.")
        if ctx.is_main:
            atomic_write_text(Path(cfg.output) / "config.json", config_utils.to_json(cfg))
        log.info("%s: %d images, %d classes, %d steps of %d images (%d per epoch; %d x %d micro-batches x world "
                 "size %d), %d samples in all, device %s", cfg.network, cfg.num_image, cfg.num_classes,
                 _end_step(run), cfg.total_batch_size, cfg.steps_per_epoch, cfg.batch_size,
                 cfg.gradient_accumulation, ctx.world_size, cfg.total_samples, ctx.device)
        verifier = TrainingVerifier.from_config(cfg, ctx) if cfg.val_targets else None
        with logging_redirect_tqdm():
            train(run, train_set, manager, verifier=verifier, max_steps=args.max_steps, stop_requested=stop_requested,
                  lock=lock)
        return 0
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
        signal.signal(signal.SIGTERM, previous_handler)
        distributed.teardown()
        close_logging()


def _claim_output(output: str, ctx: distributed.DistContext) -> OutputLock | None:
    """Rank 0 takes the output folder's lock before any work; if it cannot, every rank stops."""
    lock, problem = None, None
    if ctx.is_main:
        try:
            lock = claim_output(output)
        except UserError as exc:
            problem = exc
    if distributed.any_rank(problem is not None, ctx):
        raise problem or UserError(f"rank 0 could not claim the output folder '{output}' (see its error).")
    return lock


def _check_still_owner(lock: OutputLock | None, ctx: distributed.DistContext) -> None:
    """Before writing into the output: rank 0 checks its lock still guards the folder; every rank stops if not."""
    problem = None
    if lock is not None:
        try:
            lock.check_still_owner()
        except UserError as exc:
            problem = exc
    if distributed.any_rank(problem is not None, ctx):
        raise problem or UserError("rank 0 no longer owns the output folder (see its error); stopping.")


def _check_network_options(cfg) -> None:
    """DPAP, EHSM and the attention choice need a ViT; a CNN with them stops before anything is built."""
    if has_patch_info(cfg.network):
        return
    used = [f"{key}=True" for key in ("dpap", "ehsm") if cfg[key]]
    if used:
        raise UserError(f"network '{cfg.network}' is a CNN without the patch information that DPAP and EHSM "
                        f"need, but the config sets {' and '.join(used)}; set dpap=False and ehsm=False "
                        "(--set dpap=False ehsm=False) or choose a ViT.")
    if cfg.attention != "sdpa":
        raise UserError(f"attention='{cfg.attention}' applies to ViTs only and network '{cfg.network}' is a CNN; "
                        "remove the attention key from the config.")


def _check_val_targets(cfg) -> None:
    """On every rank, so that a missing or unusable set stops all ranks before step 1, not rank 0 at the
    first verification."""
    for name in cfg.val_targets:
        read_checked(Path(cfg.rec) / f"{name}.bin")


def _catch_sigterm():
    """(a function telling whether SIGTERM arrived, the previous handler): on preemption the loop
    checkpoints and stops after the current step instead of dying mid-step."""
    requested = []
    previous = signal.signal(signal.SIGTERM, lambda *_: requested.append(True))
    return (lambda: bool(requested)), previous


if __name__ == "__main__":
    sys.exit(main())
