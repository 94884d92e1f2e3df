"""Time of Partial FC's optimizer step with sampling: AdamW over every centre (centre_update "all", the
default) against SampledRowsAdamW over the sampled rows only ("sampled", the released rule), same process.

The shard is one GPU's share (default: WebFace42M's 2,059,906 classes over 64 GPUs, D 512); each step
first runs the classifier's forward and backward on a batch (untimed), then times optimizer.step().

    python -m bench.bench_centre_update                      # rates 0.1 and 0.3, ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from easydict import EasyDict

from losses import CombinedMarginLoss
from partial_fc import PartialFC
from utils.optim import build_head_optimizer


def step_seconds(centre_update: str, num_local: int, batch: int, embedding_size: int, sample_rate: float,
                 steps: int) -> float:
    """Mean seconds of optimizer.step() over `steps` steps after one warm-up step."""
    cfg = EasyDict(optimizer="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1, momentum=0.9,
                   no_weight_decay_on_norm_bias=False, centre_update=centre_update)
    pfc = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), embedding_size, num_local, sample_rate,
                    generator=torch.Generator().manual_seed(0))
    optimizer = build_head_optimizer(cfg, pfc)
    generator = torch.Generator().manual_seed(1)
    elapsed = 0.0
    for step in range(steps + 1):
        embeddings = torch.randn(batch, embedding_size, generator=generator)
        labels = torch.randint(0, num_local, (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=False)
        pfc(embeddings, labels).backward()
        start = time.perf_counter()
        optimizer.step()
        elapsed += (time.perf_counter() - start) if step > 0 else 0.0
    return elapsed / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=2_059_906)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512, help="global batch of the (untimed) forward")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    num_local = math.ceil(args.classes / args.gpus)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, C {num_local}, D {args.embedding_size}, "
          f"{args.steps} timed steps; load average {os.getloadavg()}")
    print(f"{'rate':>6}{'all ms':>10}{'sampled ms':>12}{'speed-up':>10}")
    for sample_rate in args.sample_rates:
        dense, sampled = (step_seconds(update, num_local, args.batch_size, args.embedding_size, sample_rate,
                                       args.steps) for update in ("all", "sampled"))
        print(f"{sample_rate:>6.2f}{dense * 1e3:>10.1f}{sampled * 1e3:>12.1f}{dense / sampled:>9.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
