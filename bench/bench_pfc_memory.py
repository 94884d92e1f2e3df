"""Partial FC memory per GPU: peak bytes per logit element of the loss's forward + backward, the fused
one-buffer path (partial_fc.PartialFC) against the previous composition (bench/pfc_baseline.py).

The shape is one GPU of a run: the global batch N = batch per GPU × GPUs rows against this GPU's
classes ceil(classes / GPUs), sampled at each rate (S = ceil(rate · C) columns). One process plays
rank 0; every label is local (the memory of the target handling is per row, [N], either way).

    python -m bench.bench_pfc_memory                     # WebFace42M on 64 GPUs: N 8192, C 32187, ~8 GB peak
    python -m bench.bench_pfc_memory --classes 200000 --gpus 64 --batch-size 32   # a small check
    python -m bench.bench_pfc_memory --loss curricularface --sample-rates 1.0      # another margin head

Memory: each (path, rate) runs in a fresh Python process. After building the classifier and a batch
and one small warm-up step (code paths loaded), VmHWM (/proc/self/status, Linux) is reset to the
current RSS; the reported figure is the growth of the peak RSS over one forward + backward, divided by
N · S. Buffers this large are mmap'd by the allocator and returned on free, so the peak RSS follows the
live tensors; it includes the centre gradient [C, D] (4 · D / N bytes per element, 0.25 at N 8192) and
the sampled centres' copy. Run one at a time: the baseline at the full shape peaks at about 6.5 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import torch

from bench.pfc_baseline import UnfusedPartialFC
from losses import LOSS_NAMES, get_margin_loss
from partial_fc import PartialFC

PATHS = {"unfused (before)": UnfusedPartialFC, "fused (ours)": PartialFC}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; memory is measured on Linux only")


def _step(pfc, embeddings, labels) -> None:
    pfc(embeddings, labels).backward()


def probe(path: str, num_local: int, batch: int, embedding_size: int, sample_rate: float,
          loss: str = "arcface") -> dict:
    """Peak RSS growth of one forward + backward in this process, in bytes per element of [N, S], with
    the margin head `loss` (a losses.get_margin_loss name; ArcFace's combined margin by default)."""
    margin = get_margin_loss(loss)
    build = PATHS[path]
    generator = torch.Generator().manual_seed(0)
    warm = build(margin, embedding_size, 64, sample_rate)
    _step(warm, torch.randn(16, embedding_size, requires_grad=True), torch.randint(0, 64, (16,)))
    pfc = build(margin, embedding_size, num_local, sample_rate)
    embeddings = torch.randn(batch, embedding_size, generator=generator).requires_grad_(True)
    labels = torch.randint(0, num_local, (batch,), generator=generator)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before_kib = _proc_status_kib("VmRSS")
    _step(pfc, embeddings, labels)
    growth = (_proc_status_kib("VmHWM") - before_kib) * 1024
    num_sampled = pfc.num_sample
    return {"peak_growth_bytes": growth, "bytes_per_logit": growth / (batch * num_sampled),
            "num_sampled": num_sampled}


def run_fresh(args, path: str, sample_rate: float) -> dict:
    command = [sys.executable, "-m", "bench.bench_pfc_memory", "--probe", path, "--classes", str(args.classes),
               "--gpus", str(args.gpus), "--batch-size", str(args.batch_size),
               "--embedding-size", str(args.embedding_size), "--sample-rates", str(sample_rate), "--loss", args.loss]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=2_059_906, help="classes of the whole run (WebFace42M)")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128, help="per GPU")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--loss", choices=LOSS_NAMES, default="arcface",
                        help="margin head (default arcface); other heads than arcface measure the fused path only")
    parser.add_argument("--probe", choices=list(PATHS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    num_local = math.ceil(args.classes / args.gpus)  # rank 0's share
    batch = args.batch_size * args.gpus
    if args.probe:
        print(json.dumps(probe(args.probe, num_local, batch, args.embedding_size, args.sample_rates[0], args.loss)))
        return
    paths = list(PATHS) if args.loss == "arcface" else ["fused (ours)"]  # the baseline composes ArcFace only
    print(f"torch {torch.__version__}, fp32, N {batch} x C {num_local} (classes {args.classes} / {args.gpus} "
          f"GPUs, batch {args.batch_size} per GPU), D {args.embedding_size}, {args.loss}; peak RSS growth of one "
          f"forward + backward, fresh process each; load average {os.getloadavg()}")
    print(f"{'rate':>6}{'S':>8}{'path':>18}{'peak GiB':>10}{'B / logit':>11}{'ratio':>8}")
    for sample_rate in args.sample_rates:
        results = {path: run_fresh(args, path, sample_rate) for path in paths}
        baseline = results[paths[0]]["peak_growth_bytes"]
        for path, result in results.items():
            print(f"{sample_rate:>6.2f}{result['num_sampled']:>8}{path:>18}"
                  f"{result['peak_growth_bytes'] / 2**30:>10.2f}{result['bytes_per_logit']:>11.2f}"
                  f"{baseline / result['peak_growth_bytes']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
