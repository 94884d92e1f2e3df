"""Backbone throughput, training step and inference, same process: for a ViT, SDPA versus explicit fp32
attention; for a CNN, the CNN versus a baseline network (vit_t unless --baseline says otherwise).

    python -m bench.bench_backbone --network vit_micro --batch-size 32
    python -m bench.bench_backbone --network vit_s_dp005_mask_0 --batch-size 128 --device cuda --precision fp16
    python -m bench.bench_backbone --network r50 --batch-size 16

A ViT's training step uses the patch information (as with EHSM); a CNN comparison trains both networks on
the embedding alone, the CNN training contract.
"""

from __future__ import annotations

import argparse
import time

import torch

from backbones import get_model, has_patch_info
from utils.distributed import pick_device
from utils.precision import PRECISIONS, autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model, x, train: bool, precision: str, steps: int, warmup: int,
                      patch_info: bool = True) -> float:
    """Images/s of forward (inference) or forward+backward (train) under autocast in `precision`; the
    training loss uses the patch standard deviation too when `patch_info`."""
    model.train(train)
    device = x.device
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with autocast(device.type, precision):
            if train and patch_info:
                embedding, _, patch_std = model(x, with_patch_info=True)
                loss = embedding.float().square().mean() + patch_std.float().mean()
            elif train:
                loss = model(x).float().square().mean()
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


def compare(models: dict, x, precisions, steps: int, warmup: int, patch_info: bool) -> None:
    """Print img/s of the two `models` (baseline first) and the ratio second / first, per precision and mode."""
    (base_name, baseline), (name, model) = models.items()
    print(f"{'precision':<10}{'mode':<12}{base_name + ' img/s':>24}{name + ' img/s':>24}{'ratio':>8}")
    for precision in precisions:
        for train in (True, False):
            rates = [images_per_second(m, x, train, precision, steps, warmup, patch_info) for m in (baseline, model)]
            mode = "train" if train else "inference"
            print(f"{precision:<10}{mode:<12}{rates[0]:>24.1f}{rates[1]:>24.1f}{rates[1] / rates[0]:>7.2f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="vit_micro")
    parser.add_argument("--baseline", default="vit_t", help="network a CNN is compared with (default vit_t)")
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
    print(f"network {args.network}, batch {args.batch_size}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if has_patch_info(args.network):
        sdpa = get_model(args.network).to(device)
        explicit = get_model(args.network, attn_impl="explicit").to(device)
        explicit.load_state_dict(sdpa.state_dict())
        models, patch_info = {"explicit": explicit, "sdpa": sdpa}, True
    else:
        models = {args.baseline: get_model(args.baseline).to(device), args.network: get_model(args.network).to(device)}
        patch_info = False
    compare(models, x, precisions, args.steps, args.warmup, patch_info)


if __name__ == "__main__":
    main()
