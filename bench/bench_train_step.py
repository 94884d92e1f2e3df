"""Samples/s of whole training steps: plain ViT, +EHSM, +DPAP+EHSM, in the same process.

    python -m bench.bench_train_step                                  # vit_nano on the CPU
    python -m bench.bench_train_step --network vit_s_dp005_mask_0 --batch-size 128 --precision fp16  # CUDA
    python -m bench.bench_train_step --network vit_s --batch-size 256 --precision bf16 --device cuda --compile

Each step is train.train_step: DPAP (when on), the backbone with patch information, EHSM weights (when
on), Partial FC with ArcFace, backward, clipping and the AdamW steps. The last variant repeats
+DPAP+EHSM with Partial FC's batch-size and label checks in every step (host syncs), the baseline of
checking only on the first step.
"""

from __future__ import annotations

import argparse
import time

import torch

import train
from utils import distributed
from utils.config import BASE_CONFIG, derive, load_config

VARIANTS = {"plain": {"dpap": False, "ehsm": False}, "+EHSM": {"dpap": False, "ehsm": True},
            "+DPAP+EHSM": {"dpap": True, "ehsm": True}}
# The baseline of Partial FC's checks: the batch-size and label checks (host syncs) in every step, as
# before they ran only on the first step.
CHECKS_EVERY_STEP = "+DPAP+EHSM, PFC checks every step"


def samples_per_second(cfg, ctx, batches, warmup: int, checks_every_step: bool = False) -> float:
    torch.manual_seed(0)
    run = train.build_run(cfg, ctx)
    run.model.train()

    def step(images, labels):
        if checks_every_step:
            run.head._checked_batch_size = None  # forget the checked batch size: the checks run again
        train.train_step(run, [(images, labels)])

    for images, labels in batches[:warmup]:
        step(images, labels)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    start = time.perf_counter()
    for images, labels in batches[warmup:]:
        step(images, labels)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return (len(batches) - warmup) * cfg.batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="vit_nano")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                        help="default: fp16 on CUDA, fp32 on the CPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the variants; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone (config.compile); warm-up steps include the compilation")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ctx = distributed.setup(args.device)
    precision = args.precision or ("fp16" if ctx.device.type == "cuda" else "fp32")
    generator = torch.Generator().manual_seed(0)
    batches = [((torch.rand(args.batch_size, 3, 112, 112, generator=generator) * 2 - 1).to(ctx.device),
                torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(ctx.device))
               for _ in range(args.steps + args.warmup)]
    print(f"network {args.network}, batch {args.batch_size}, {args.num_classes} classes, {precision}, device "
          f"{ctx.device}, compile {args.compile}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    configs = {}
    for name, switches in VARIANTS.items():
        overrides = {"network": args.network, "batch_size": args.batch_size, "num_classes": args.num_classes,
                     "num_image": args.batch_size * 100, "precision": precision, "compile": args.compile, **switches}
        configs[name] = derive(load_config(BASE_CONFIG, [f"{k}={v!r}" for k, v in overrides.items()]),
                               ctx.world_size)
    # Variants take turns, and each keeps its best round, so a burst of load on a shared machine
    # does not land on one variant only.
    best = dict.fromkeys([*VARIANTS, CHECKS_EVERY_STEP], 0.0)
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            best[name] = max(best[name], samples_per_second(cfg, ctx, batches, args.warmup))
        best[CHECKS_EVERY_STEP] = max(best[CHECKS_EVERY_STEP], samples_per_second(
            configs["+DPAP+EHSM"], ctx, batches, args.warmup, checks_every_step=True))
    print(f"{'variant':<36}{'samples/s':>12}{'vs plain':>10}")
    for name, rate in best.items():
        print(f"{name:<36}{rate:>12.1f}{rate / best['plain']:>9.2f}x")
    print(f"Partial FC checks on the first step only: {best['+DPAP+EHSM'] / best[CHECKS_EVERY_STEP]:.3f}x "
          "the steps/s of checking every step")


if __name__ == "__main__":
    main()
