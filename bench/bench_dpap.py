"""Benchmark DPAP: batched perturbation vs the released per-patch NumPy loop, and the cost in a training step.

    python -m bench.bench_dpap                      # CPU (and CUDA when present), 1 CPU thread
    python -m bench.bench_dpap --devices cpu --perturb-batches 128 512 1024 --rounds 20 --threads 0

Part 1 times `dpap.perturb` against a straightforward reimplementation of the released loop (device ->
host copy, one NumPy FFT mix per patch written back in place, host -> device copy), both at the released
p, K and alpha.
Part 2 times a training step (forward with patch info, linear-classifier cross-entropy, backward, AdamW)
without DPAP, with our DPAP (scoring pass on the chosen images + batched perturbation), and with the
released approach (a full extra no-grad forward of the whole batch + the per-patch loop), interleaved
round by round so that load from other processes hits every variant alike.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dpap
from backbones import get_model
from utils.errors import UserError, entry_point


def released_amplitude_mix(src: np.ndarray, ref: np.ndarray, lam: float, ratio: float) -> np.ndarray:
    """One patch [P, P, C] in pixel units, mixed as the released FFT helper does; returns uint8."""
    h, w = src.shape[:2]
    crop_h, crop_w = int(h * math.sqrt(ratio)), int(w * math.sqrt(ratio))
    start_h, start_w = h // 2 - crop_h // 2, w // 2 - crop_w // 2
    spectrum = np.fft.fft2(src, axes=(0, 1))
    amp_src = np.fft.fftshift(np.abs(spectrum), axes=(0, 1))
    amp_ref = np.fft.fftshift(np.abs(np.fft.fft2(ref, axes=(0, 1))), axes=(0, 1))
    window = (slice(start_h, start_h + crop_h), slice(start_w, start_w + crop_w))
    mixed = amp_src.copy()
    mixed[window] = lam * amp_ref[window] + (1 - lam) * amp_src[window]
    out = np.real(np.fft.ifft2(np.fft.ifftshift(mixed, axes=(0, 1)) * np.exp(1j * np.angle(spectrum)),
                               axes=(0, 1)))
    return np.uint8(np.clip(out, 0, 255))


def released_perturb(images: torch.Tensor, patch_weights: torch.Tensor, k: int, prob: float, alpha: float,
                     ratio: float, patch_size: int, rng: np.random.Generator) -> torch.Tensor:
    """The released per-patch loop: to host, perturb in place patch by patch, back to the device."""
    batch_size = images.shape[0]
    grid = images.shape[-1] // patch_size
    pixels = ((images * 0.5) + 0.5) * 255
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, C] on the host
    top_cells = torch.argsort(patch_weights, dim=1, descending=True).cpu().numpy()[:, :k]  # [B, K]
    for b in range(batch_size):
        if rng.random() > prob:
            continue
        for cell in top_cells[b]:
            row, col = divmod(int(cell), grid)
            p_b, p_row, p_col = rng.integers(0, batch_size), rng.integers(0, grid), rng.integers(0, grid)
            target = (b, slice(row * patch_size, (row + 1) * patch_size),
                      slice(col * patch_size, (col + 1) * patch_size))
            partner = pixels[p_b, p_row * patch_size:(p_row + 1) * patch_size,
                             p_col * patch_size:(p_col + 1) * patch_size]
            pixels[target] = released_amplitude_mix(pixels[target], partner, rng.uniform(0, alpha), ratio)
    back = torch.tensor(pixels).to(images.device).permute(0, 3, 1, 2)  # [B, C, H, W]
    return ((back / 255) - 0.5) / 0.5


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], object]], device: torch.device, rounds: int,
                warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each variant, one call of each per round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def random_batch(batch_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, 3, 112, 112), generator=g).float()
    return ((pixels / 255 - 0.5) / 0.5).to(device)


def perturb_variants(batch_size: int, device: torch.device, cfg: dpap.DPAP) -> dict[str, Callable[[], object]]:
    images = random_batch(batch_size, device)
    weights = torch.rand(batch_size, 144, device=device).softmax(dim=1)  # [B, N]
    generator = torch.Generator(device).manual_seed(0)
    rng = np.random.default_rng(0)
    return {
        "loop": lambda: released_perturb(images, weights, cfg.k, cfg.prob, cfg.alpha, cfg.ratio, 9, rng),
        "ours": lambda: dpap.perturb(images, weights, k=cfg.k, prob=cfg.prob, alpha=cfg.alpha, ratio=cfg.ratio,
                                     patch_size=9, quantize=cfg.quantize, generator=generator),
    }


def bench_perturb(batch_sizes: list[int], device: torch.device, rounds: int, cfg: dpap.DPAP) -> None:
    print(f"\n## perturbation only ({device.type}), k={cfg.k} p={cfg.prob} alpha={cfg.alpha}")
    print("| batch | released loop (ms) | batched (ms) | speed-up |")
    print("| --- | --- | --- | --- |")
    for batch_size in batch_sizes:
        result = interleaved(perturb_variants(batch_size, device, cfg), device, rounds)
        print(f"| {batch_size} | {result['loop'] * 1e3:.2f} | {result['ours'] * 1e3:.2f} | "
              f"{result['loop'] / result['ours']:.1f}x |")


class StepBench:
    """A training step: forward with patch info, linear-classifier CE, backward, AdamW (+ GradScaler)."""

    def __init__(self, network: str, batch_size: int, device: torch.device, fp16: bool, num_classes: int = 1000):
        torch.manual_seed(0)
        self.device = device
        self.model = get_model(network).to(device).train()
        self.head = nn.Linear(512, num_classes).to(device)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
        self.fp16 = fp16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.images = random_batch(batch_size, device)
        self.labels = torch.randint(num_classes, (batch_size,), device=device)
        self.generator = torch.Generator(device).manual_seed(0)
        self.rng = np.random.default_rng(0)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16)

    def train_step(self, images: torch.Tensor) -> None:
        with self.autocast():
            info = self.model(images, with_patch_info=True)
            loss = F.cross_entropy(self.head(info.embedding).float(), self.labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def plain(self) -> None:
        self.train_step(self.images)

    def ours(self, cfg: dpap.DPAP) -> None:
        with self.autocast():
            images, _ = cfg(self.model, self.images, self.generator)
        self.train_step(images)

    def released_weights(self) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.model(self.images, with_patch_info=True).patch_weights.float()

    def full_forward_batched(self, cfg: dpap.DPAP) -> None:
        images = dpap.perturb(self.images, self.released_weights(), k=cfg.k, prob=cfg.prob, alpha=cfg.alpha,
                              ratio=cfg.ratio, patch_size=self.model.patch_size, quantize=cfg.quantize,
                              generator=self.generator)
        self.train_step(images)

    def released(self, cfg: dpap.DPAP) -> None:
        images = released_perturb(self.images, self.released_weights(), cfg.k, cfg.prob, cfg.alpha,
                                  cfg.ratio, self.model.patch_size, self.rng)
        self.train_step(images)


def bench_step(network: str, batch_size: int, device: torch.device, fp16: bool, rounds: int,
               cfg: dpap.DPAP) -> None:
    bench = StepBench(network, batch_size, device, fp16)
    result = interleaved({
        "no DPAP": bench.plain,
        "ours: scoring pass on chosen images + batched perturb": lambda: bench.ours(cfg),
        "full extra forward + batched perturb": lambda: bench.full_forward_batched(cfg),
        "released: full extra forward + per-patch loop": lambda: bench.released(cfg),
    }, device, rounds)
    base = result["no DPAP"]
    precision = "fp16 autocast" if fp16 else "fp32"
    print(f"\n## training step ({device.type}, {network}, batch {batch_size}, {precision})")
    print("| step | ms | overhead vs no DPAP |")
    print("| --- | --- | --- |")
    for name, seconds in result.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {(seconds / base - 1) * 100:+.1f}% |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="devices to run on (default: cpu, plus cuda when available)")
    parser.add_argument("--perturb-batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per measurement")
    parser.add_argument("--cpu-network", default="vit_nano")
    parser.add_argument("--cpu-batch", type=int, default=64)
    parser.add_argument("--cuda-network", default="vit_s_dp005_mask_0")
    parser.add_argument("--cuda-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps CPU timings stable on a shared machine, 0 = torch's default")
    return parser.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    cfg = dpap.DPAP()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("command: python -m bench.bench_dpap " + " ".join(sys.argv[1:] if argv is None else argv))
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--devices {name} was asked for but CUDA is not available; use --devices cpu.")
        bench_perturb(args.perturb_batches, device, args.rounds, cfg)
        if device.type == "cuda":
            bench_step(args.cuda_network, args.cuda_batch, device, True, args.rounds, cfg)
        else:
            bench_step(args.cpu_network, args.cpu_batch, device, False, args.rounds, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
