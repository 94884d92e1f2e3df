"""Partial FC classifier cost: step time and peak memory with every centre (sample rate 1.0) versus 0.1.

One process holds all `--classes` centres (a run over W GPUs holds classes / W per GPU). A step is the
classifier's forward, backward and optimizer step for a batch of random embeddings; the backbone is not
included. Both sample rates run in this process and the ratio is printed.

    python -m bench.bench_partial_fc                                  # CPU: 100k classes, ~1.5 min
    python -m bench.bench_partial_fc --classes 100000 500000 --batch-size 1024
    python -m bench.bench_partial_fc --classes 1000000 2000000 --device cuda --precision fp16

Peak memory: on CUDA, torch.cuda.max_memory_allocated over building the classifier and its steps (the
centres, their gradient, the optimizer state and the step's temporaries). On the CPU torch has no
allocation counter, so each configuration is re-run in a fresh Python process and the growth of its peak
resident set size (VmHWM of /proc/self/status, Linux) over building and two steps is reported; that
includes memory the allocator keeps after freeing it and is coarser than the CUDA number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from losses import CombinedMarginLoss
from partial_fc import PartialFC
from utils.distributed import pick_device
from utils.precision import PRECISIONS, autocast

SAMPLE_RATES = (1.0, 0.1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(num_classes: int, sample_rate: float, embedding_size: int, optimizer_name: str,
          device: torch.device):
    """The released ArcFace classifier on `device` and its optimizer."""
    margin = CombinedMarginLoss(64.0, 1.0, 0.5, 0.0)
    pfc = PartialFC(margin, embedding_size, num_classes, sample_rate=sample_rate).to(device)
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(pfc.parameters(), lr=1e-3, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return pfc, optimizer


def make_batch(num_classes: int, batch_size: int, embedding_size: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(batch_size, embedding_size, generator=generator).to(device).requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    return embeddings, labels


def train_step(pfc, optimizer, embeddings, labels, precision) -> None:
    device_type = embeddings.device.type
    with autocast(device_type, precision):
        loss = pfc(embeddings, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    embeddings.grad = None


def seconds_per_step(args, num_classes: int, sample_rate: float, device: torch.device) -> tuple[float, float]:
    """(mean seconds per step, CUDA peak MiB or NaN) for one configuration in this process."""
    embeddings, labels = make_batch(num_classes, args.batch_size, args.embedding_size, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    pfc, optimizer = build(num_classes, sample_rate, args.embedding_size, args.optimizer, device)
    for _ in range(args.warmup):
        train_step(pfc, optimizer, embeddings, labels, args.precision)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(pfc, optimizer, embeddings, labels, args.precision)
    _sync(device)
    elapsed = (time.perf_counter() - start) / args.steps
    peak_mib = float("nan")
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return elapsed, peak_mib


def _proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status in KiB (Linux), e.g. VmRSS or VmHWM (peak RSS of this process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; CPU memory is measured on Linux only")


def peak_rss_growth_mib(args, num_classes: int, sample_rate: float) -> float:
    """Peak RSS over building and two steps minus the RSS before, in this (fresh) process.

    VmHWM is per process image, unlike getrusage's ru_maxrss, which a child inherits from its parent.
    A small warm-up configuration first loads the code paths, so their pages are not counted.
    """
    device = torch.device("cpu")
    warmup_embeddings, warmup_labels = make_batch(100, args.batch_size, args.embedding_size, device)
    train_step(*build(100, sample_rate, args.embedding_size, args.optimizer, device), warmup_embeddings,
               warmup_labels, args.precision)
    embeddings, labels = make_batch(num_classes, args.batch_size, args.embedding_size, device)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before_kib = _proc_status_kib("VmRSS")
    pfc, optimizer = build(num_classes, sample_rate, args.embedding_size, args.optimizer, device)
    for _ in range(2):
        train_step(pfc, optimizer, embeddings, labels, args.precision)
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def cpu_peak_in_fresh_process(args, num_classes: int, sample_rate: float) -> float:
    command = [sys.executable, "-m", "bench.bench_partial_fc", "--probe-memory",
               "--classes", str(num_classes), "--sample-rates", str(sample_rate),
               "--batch-size", str(args.batch_size), "--embedding-size", str(args.embedding_size),
               "--optimizer", args.optimizer, "--precision", args.precision]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])["peak_rss_growth_mib"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--sample-rates", type=float, nargs="+", default=list(SAMPLE_RATES),
                        help="the first is the baseline of the ratios")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch seen by the classifier")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="autocast dtype of the cosine product (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true", help="CPU: skip the fresh-process memory runs")
    parser.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.probe_memory:
        args.precision = args.precision or "fp32"
        peak = peak_rss_growth_mib(args, args.classes[0], args.sample_rates[0])
        print(json.dumps({"peak_rss_growth_mib": peak}))
        return
    device = pick_device(0, args.device)
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    memory_kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS growth, fresh process"
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch "
          f"{args.batch_size}, D {args.embedding_size}, {args.optimizer}, {args.precision}, "
          f"{args.steps} timed steps after {args.warmup} warm-up; memory: {memory_kind}")
    print(f"{'classes':>10}{'rate':>6}{'ms/step':>11}{'peak MiB':>11}{'time ratio':>12}{'memory ratio':>14}")
    for num_classes in args.classes:
        baseline = None
        for sample_rate in args.sample_rates:
            step_s, peak_mib = seconds_per_step(args, num_classes, sample_rate, device)
            if device.type == "cpu" and not args.skip_memory:
                peak_mib = cpu_peak_in_fresh_process(args, num_classes, sample_rate)
            baseline = baseline or (step_s, peak_mib)
            print(f"{num_classes:>10}{sample_rate:>6.2f}{step_s * 1e3:>11.1f}{peak_mib:>11.0f}"
                  f"{baseline[0] / step_s:>11.2f}x{baseline[1] / peak_mib:>13.2f}x", flush=True)


if __name__ == "__main__":
    main()
