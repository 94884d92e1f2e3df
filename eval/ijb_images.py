"""IJB-B / IJB-C aligned faces: each loose crop decoded and aligned by its 5 landmarks, batched in file order.

Kept apart from the meta readers (eval/ijb_data.py) so that scoring saved features (`eval_ijbc.py
--features`) imports neither OpenCV nor PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eval.align import align_face
from utils.decode import check_image_size, decode_image
from utils.errors import UserError
from utils.files import read_bytes
from utils.opencv import cv2


class AlignedFaces(Dataset):
    """Reads an image (`utils.decode`), aligns it with its 5 landmarks and returns (uint8 RGB [3, S, S],
    index, ok).

    `ok` is False when the file cannot be decoded; the caller names the file, so a worker never raises.
    """

    def __init__(self, image_dir: str | Path, names: list[str], landmarks: np.ndarray, size: int = 112):
        self.image_dir = Path(image_dir)
        self.names = names
        self.landmarks = landmarks
        self.size = size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        try:
            data = read_bytes(self.image_dir / self.names[index], "image")
            check_image_size(data, "image")
            image = decode_image(data)  # [H, W, 3] RGB
        except (UserError, ValueError):  # not a regular file, a header claiming a bomb, or undecodable
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, False
        aligned = align_face(image, self.landmarks[index], self.size)  # [S, S, 3]
        return torch.from_numpy(np.ascontiguousarray(aligned.transpose(2, 0, 1))), index, True  # [3, S, S]


def _single_thread_opencv(_worker_id: int) -> None:
    """Each worker decodes one image at a time; OpenCV's own threads would only oversubscribe the cores."""
    cv2.setNumThreads(1)


def collate_aligned(batch: list[tuple[torch.Tensor, int, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, S, S] uint8, indices [B], ok [B]). Stacked by NumPy: torch.stack's threaded copy
    took 0.2 s per batch of 64 on a busy 2-core machine, 20x the decoding time."""
    images, indices, ok = zip(*batch)
    stacked = np.stack([image.numpy() for image in images])  # [B, 3, S, S]
    return torch.from_numpy(stacked), torch.tensor(indices), torch.tensor(ok)


def aligned_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches in file order; workers decode and align while the model runs on the previous batch.

    Workers are spawned, not forked: a child forked after the parent used OpenCV's thread pool can
    deadlock inside OpenCV (seen here in cv2.setNumThreads).
    """
    workers = dict(num_workers=num_workers, worker_init_fn=_single_thread_opencv, prefetch_factor=4,
                   multiprocessing_context="spawn") if num_workers else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=pin_memory,
                      collate_fn=collate_aligned, **workers)


__all__ = ["AlignedFaces", "aligned_loader", "collate_aligned"]
