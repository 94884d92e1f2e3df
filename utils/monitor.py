"""Training monitors: rank-0 log lines to the console and a file, throughput and ETA, scalars to TensorBoard
and (optionally) Weights & Biases."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from utils.errors import UserError
from utils.files import make_folder, open_append, real_folder


def setup_logging(output: str | Path, rank: int) -> None:
    """Rank 0 logs INFO to stderr and `<output>/training.log`; other ranks log warnings only.

    Handlers from an earlier call (a second run in the same process) are replaced; others are kept.
    """
    close_logging()
    root = logging.getLogger()
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


def close_logging() -> None:
    """Remove and close the handlers setup_logging added (at the end of a run), so that nothing logs later to
    a stream that was the run's stderr (a test's captured one) or to its closed training.log."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "transface", False)]:
        root.removeHandler(handler)
        handler.close()
        if handler.transface == "file":  # StreamHandler.close leaves the stream open
            handler.stream.close()


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


def import_wandb():
    """The `wandb` module, or a UserError saying how to install it (it is optional, not a requirement)."""
    try:
        import wandb
    except ImportError:
        raise UserError("using_wandb=True needs the wandb package, which is not installed; run `pip install "
                        "wandb` (then `wandb login`, or WANDB_MODE=offline) or set using_wandb=False.") from None
    return wandb


class Scalars:
    """Training scalars on rank 0, each `add` written to every sink that is on: TensorBoard event files in
    `<output>/tensorboard` and a Weights & Biases run (files in `<output>/wandb`). A no-op elsewhere or
    when both are off.

    Args:
        output: the run's output folder.
        tensorboard: write TensorBoard events.
        wandb_config: None (no W&B), or the run's config: `wandb_project`, `wandb_entity` name the W&B run,
            the whole mapping is stored as its config. Raises UserError when `wandb` is not installed.
    """

    def __init__(self, output: str | Path, tensorboard: bool, wandb_config: Mapping | None = None):
        self.writer = None
        self.wandb_run = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # The event file gets a fresh name (time, host, PID) inside a folder checked to be our own.
            self.writer = SummaryWriter(log_dir=str(real_folder(Path(output) / "tensorboard")))
        if wandb_config is not None:
            wandb = import_wandb()
            real_folder(Path(output) / "wandb")  # wandb.init(dir=output) writes there
            self.wandb_run = wandb.init(project=wandb_config["wandb_project"],
                                        entity=wandb_config["wandb_entity"] or None, name=Path(output).name,
                                        dir=str(output), config=dict(wandb_config))

    def add(self, values: dict[str, float], step: int) -> None:
        """Write `values` (name -> number) at optimizer step `step` to every sink."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(values), step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
