"""Backbone throughput: SDPA versus explicit fp32 attention, training step and inference, same process.

    python -m bench.bench_backbone --network vit_micro --batch-size 32
    python -m bench.bench_backbone --network vit_s_dp005_mask_0 --batch-size 128 --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import time

import torch

from backbones import get_model
from utils.distributed import pick_device
from utils.precision import PRECISIONS, autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model, x, train: bool, precision: str, steps: int, warmup: int) -> float:
    """Images/s of forward (inference) or forward+backward (train) under autocast in `precision`."""
    model.train(train)
    device = x.device
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with autocast(device.type, precision):
            if train:
                embedding, _, patch_std = model(x, with_patch_info=True)
                loss = embedding.float().square().mean() + patch_std.float().mean()
            else:
                with torch.no_grad():
                    model(x)
        if train:
            loss.backward()
            for p in params:
                p.grad = None

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="vit_micro")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="autocast dtype (default: fp32 on CPU, fp16 and bf16 on CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    device = pick_device(0, args.device)
    precisions = [args.precision] if args.precision else (["fp16", "bf16"] if device.type == "cuda" else ["fp32"])
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 112, 112, device=device) * 2 - 1
    sdpa = get_model(args.network).to(device)
    explicit = get_model(args.network, attn_impl="explicit").to(device)
    explicit.load_state_dict(sdpa.state_dict())
    print(f"network {args.network}, batch {args.batch_size}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'precision':<10}{'mode':<12}{'explicit img/s':>16}{'sdpa img/s':>14}{'ratio':>8}")
    for precision in precisions:
        for train in (True, False):
            rates = [images_per_second(model, x, train, precision, args.steps, args.warmup)
                     for model in (explicit, sdpa)]
            mode = "train" if train else "inference"
            print(f"{precision:<10}{mode:<12}{rates[0]:>16.1f}{rates[1]:>14.1f}{rates[1] / rates[0]:>7.2f}x")


if __name__ == "__main__":
    main()
