"""Margin heads' cost: Partial FC forward + backward with each loss of the registry against `combined`.

One process holds every centre (a run over W GPUs holds classes / W per GPU); a step is the classifier's
forward and backward for a batch of random embeddings (no optimizer step, no backbone). For each sample rate
one set of centres serves every head, swapped in turn as PartialFC's constructor binds a head; the heads are
timed in interleaved rounds, so a change of machine load falls on all of them alike, and the median of the
rounds is reported with its ratio to the combined margin (ArcFace) of the same rate. Issue 24 asks each new
head for at most 1.3x. The load average is printed before and after: above 1.5 the ratios are not quotable.

    OMP_NUM_THREADS=1 python -m bench.bench_losses                  # CPU: 100k classes, about 2 minutes
    python -m bench.bench_losses --losses combined adaface uniface --sample-rates 1.0
    python -m bench.bench_losses --device cuda --batch-size 1024 --classes 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from losses import LOSS_NAMES, get_margin_loss
from partial_fc import PartialFC
from utils.distributed import pick_device

BASELINE = "combined"
BUDGET = 1.3  # issue 24: a new head's extra work is elementwise over [B, C]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_head(pfc: PartialFC, name: str) -> None:
    """Put the registry's head `name` (published defaults) into `pfc`, bound as PartialFC's constructor does."""
    head = get_margin_loss(name).to(pfc.weight.device)
    if hasattr(head, "bind_classes"):
        head.bind_classes(pfc.num_classes, pfc.sample_rate)
    pfc.margin_loss = head


def step_seconds(pfc: PartialFC, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one forward + backward; gradients are cleared afterwards (not timed)."""
    _sync(embeddings.device)
    start = time.perf_counter()
    pfc(embeddings, labels).backward()
    _sync(embeddings.device)
    elapsed = time.perf_counter() - start
    pfc.zero_grad(set_to_none=True)
    embeddings.grad = None
    return elapsed


def time_heads(args, sample_rate: float, device: torch.device) -> dict[str, float]:
    """{loss: median seconds per forward + backward} over `args.rounds` interleaved rounds."""
    generator = torch.Generator().manual_seed(0)
    pfc = PartialFC(get_margin_loss(BASELINE), args.embedding_size, args.classes, sample_rate).to(device)
    embeddings = torch.randn(args.batch_size, args.embedding_size, generator=generator)  # [B, D]
    embeddings = (embeddings * 20).to(device).requires_grad_(True)  # norms about 450: AdaFace/MagFace ranges
    labels = torch.randint(0, args.classes, (args.batch_size,), generator=generator).to(device)  # [B]
    times: dict[str, list[float]] = {name: [] for name in args.losses}
    for round_index in range(args.warmup + args.rounds):
        for name in args.losses:
            use_head(pfc, name)
            seconds = step_seconds(pfc, embeddings, labels)
            if round_index >= args.warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--batch-size", type=int, default=128, help="global batch seen by the classifier")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES,
                        help=f"heads to time ({BASELINE} is always timed, as the baseline)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    args.losses = [BASELINE] + [name for name in args.losses if name != BASELINE]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(0, args.device)
    load_before = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.classes} classes, "
          f"batch {args.batch_size}, D {args.embedding_size}, fp32, median of {args.rounds} rounds after "
          f"{args.warmup}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"{'loss':>22}{'rate':>6}{'ms':>10}{'ratio':>9}  within {BUDGET}x")
    for sample_rate in args.sample_rates:
        medians = time_heads(args, sample_rate, device)
        for name, seconds in medians.items():
            ratio = seconds / medians[BASELINE]
            print(f"{name:>22}{sample_rate:>6.2f}{seconds * 1e3:>10.1f}{ratio:>8.2f}x  "
                  f"{'yes' if ratio <= BUDGET else 'NO'}", flush=True)
    load_after = os.getloadavg()
    quotable = max(load_before[0], load_after[0]) <= 1.5
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; ratios "
          f"{'quotable' if quotable else 'NOT quotable (load above 1.5)'}")


if __name__ == "__main__":
    main()
