"""Seeds: one derivation of independent streams from (seed, rank, stream...), and seeding a whole process."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed for the stream named by `entropy` (e.g. seed, rank, stream id), independent of every
    other tuple: NumPy's SeedSequence hashes the tuple, so (1, 2) and (2, 1) give unrelated streams."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (every device) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
