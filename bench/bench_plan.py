"""tools.plan's memory per GPU beside the measured peak of whole training steps on one device.

For each shape (network, batch, classes, sample rate, precision) it prints the plan's per-GPU rows and
total for a 1-GPU run, then runs train.train_step (DPAP, EHSM, Partial FC, backward, AdamW) twice: the
first builds the optimizer state; the second is measured from a reset peak. On CUDA the measure is
torch.cuda.max_memory_allocated (what PyTorch's tensors hold at the peak, without the CUDA context or the
allocator's cached blocks, which the plan's headroom covers); on the CPU the growth of the peak resident
memory over the second step plus what was resident from the run before it (a rough check: the CPU
allocator keeps freed memory, so only CUDA figures are quotable).

    python -m bench.bench_plan --device cuda                          # the GPU check's shapes
    python -m bench.bench_plan --device cpu --shapes vit_nano:8:50:1.0:fp32
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import train
from tools import plan
from utils import distributed
from utils.config import BASE_CONFIG, derive, load_config

GIB = 2**30
DEFAULT_SHAPES = ("vit_s:256:85742:1.0:bf16", "vit_l_dp005_mask_005:128:200000:0.3:fp16")


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def config_for(network: str, batch: int, classes: int, sample_rate: float, precision: str):
    overrides = {"network": network, "batch_size": batch, "num_classes": classes, "num_image": batch * 100,
                 "sample_rate": sample_rate, "precision": precision}
    return load_config(BASE_CONFIG, [f"{k}={v!r}" for k, v in overrides.items()])


def measured_peak(cfg, ctx) -> int:
    """Bytes at the peak of the second of two training steps (see the module docstring)."""
    torch.manual_seed(0)
    run = train.build_run(derive(cfg, 1), ctx)
    run.model.train()
    generator = torch.Generator().manual_seed(0)
    batches = [((torch.rand(cfg.batch_size, 3, 112, 112, generator=generator) * 2 - 1).to(ctx.device),
                torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=generator).to(ctx.device))
               for _ in range(2)]
    train.train_step(run, [batches[0]])
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        train.train_step(run, [batches[1]])
        torch.cuda.synchronize(ctx.device)
        return torch.cuda.max_memory_allocated(ctx.device)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kib("VmRSS")
    train.train_step(run, [batches[1]])
    return (_kib("VmHWM") - before) * 1024 + _resident_state_bytes(run)


def _resident_state_bytes(run) -> int:
    """Bytes of the run's parameters, gradients and optimizer state on the CPU (held before the step)."""
    tensors = [*run.backbone.parameters(), *run.head.parameters()]
    for optimizer in (run.backbone_optimizer, run.head_optimizer):
        tensors += [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: this machine's GPU, else CPU)")
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES),
                        help="network:batch:classes:sample_rate:precision")
    args = parser.parse_args(argv)
    ctx = distributed.setup(args.device)
    memory = torch.cuda.get_device_properties(ctx.device).total_memory / GIB if ctx.device.type == "cuda" else 80.0
    what = "torch.cuda.max_memory_allocated" if ctx.device.type == "cuda" else "CPU peak RSS (rough)"
    print(f"device {ctx.device}, torch {torch.__version__}, load average {os.getloadavg()}; plan for 1 GPU of "
          f"{memory:.0f} GiB against {what}")
    for shape in args.shapes:
        network, batch, classes, sample_rate, precision = shape.split(":")
        cfg = config_for(network, int(batch), int(classes), float(sample_rate), precision)
        predicted = plan.make_plan(cfg, plan.Cluster(1, 1, memory, 1.0), advise=False)["per_gpu"]
        print(f"\n{network}, batch {batch}, {classes} classes, sample rate {sample_rate}, {precision}, "
              f"checkpointing {'on' if predicted['gradient_checkpointing'] else 'off'}")
        for key, value in predicted["rows"].items():
            print(f"  {key:<30}{value / GIB:8.3f} GiB")
        measured = measured_peak(cfg, ctx)
        print(f"  {'planned total':<30}{predicted['total'] / GIB:8.3f} GiB")
        print(f"  {'measured peak':<30}{measured / GIB:8.3f} GiB  planned / measured "
              f"{predicted['total'] / measured:.2f}", flush=True)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
