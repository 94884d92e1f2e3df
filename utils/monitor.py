"""Training monitors: rank-0 log lines to the console and a file, throughput and ETA, TensorBoard scalars."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from utils.files import make_folder, open_append, real_folder


def setup_logging(output: str | Path, rank: int) -> None:
    """Rank 0 logs INFO to stderr and `<output>/training.log`; other ranks log warnings only.

    Handlers from an earlier call (a second run in the same process) are replaced; others are kept.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "transface", False)]:
        root.removeHandler(handler)
        handler.close()
        if handler.transface == "file":  # StreamHandler.close leaves the stream open
            handler.stream.close()
    formatter = logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handlers = {"console": logging.StreamHandler(sys.stderr)}
    if rank == 0:
        make_folder(output)
        handlers["file"] = logging.StreamHandler(open_append(Path(output) / "training.log"))
    for kind, handler in handlers.items():
        handler.setFormatter(formatter)
        handler.transface = kind
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}GiB"
    return "-"


def format_seconds(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class SpeedMeter:
    """Global samples/s since the last report and the ETA of the remaining optimizer steps."""

    def __init__(self, samples_per_step: int, total_steps: int, start_step: int):
        self.samples_per_step = samples_per_step
        self.total_steps = total_steps
        self.last_step = start_step
        self.last_time = time.perf_counter()

    def report(self, step: int) -> tuple[float, float]:
        """(samples/s, seconds left) since the previous call."""
        now = time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        steps = max(step - self.last_step, 1)
        speed = steps * self.samples_per_step / elapsed
        eta = (self.total_steps - step) * elapsed / steps
        self.last_step, self.last_time = step, now
        return speed, eta


class Scalars:
    """TensorBoard scalars on rank 0 (a no-op elsewhere or when disabled)."""

    def __init__(self, output: str | Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # The event file gets a fresh name (time, host, PID) inside a folder checked to be our own.
            self.writer = SummaryWriter(log_dir=str(real_folder(Path(output) / "tensorboard")))

    def add(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
