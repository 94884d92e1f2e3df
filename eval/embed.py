"""Network embeddings of a batch of uint8 faces and of their mirror images (the flip test).

Shared by the .bin verification and the IJB evaluation; each combines the two embeddings its own way.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from eval.guard import check_model_output
from utils.images import normalize


@torch.no_grad()
def embed_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device, *,
                amp_dtype: torch.dtype | None = None, flip: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings [B, D] float32 of uint8 RGB images [B, 3, H, W], and of their mirrors when `flip`
    (else None).

    Images and mirrors go through the model as one batch, under autocast to `amp_dtype` when given;
    the model's train/eval mode is the caller's.
    """
    x = normalize(images.to(device, non_blocking=True))  # [B, 3, H, W]
    if flip:
        x = torch.cat([x, x.flip(3)])  # [2B, 3, H, W]: images, then their mirrors
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        output = check_model_output(model(x), len(x), source=type(model).__name__,
                                    width=getattr(model, "num_features", None))  # a backbone's declared D
        embeddings = output.float().cpu().numpy()  # [B or 2B, D]
    num_images = len(images)
    return embeddings[:num_images], embeddings[num_images:] if flip else None
