"""Precision names ("fp32", "fp16", "bf16") as configs, CLIs and benchmarks spell them, and their autocast."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(DTYPES)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast runs in for `precision`, or None for fp32 (autocast off)."""
    return None if precision == "fp32" else DTYPES[precision]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast on `device`'s type in `precision`'s dtype; disabled for fp32."""
    device_type = torch.device(device).type
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on `device_type`, for the parts that the released models compute in fp32 whatever
    the caller's precision; a no-op where autocast does not exist (the meta device)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
