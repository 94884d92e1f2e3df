"""Photos in, similarity out: detect the largest face, align it, embed it with a trained backbone.

    from eval.recognizer import FaceRecognizer
    recognizer = FaceRecognizer("vit_s_dp005_mask_0", "model.pt", detector_model="face_detection_yunet_2023mar.onnx")
    recognizer.compare("a.jpg", "b.jpg")  # cosine similarity in [-1, 1]
"""

from __future__ import annotations

import os

import numpy as np
import torch

from backbones import load_backbone
from eval.detect import Face, align_largest, load_detector
from eval.embed import embed_batch
from eval.guard import check_embeddings, unit_rows
from utils.distributed import pick_device

Photo = str | os.PathLike | np.ndarray  # a file path, or H x W x 3 uint8 RGB


class FaceRecognizer:
    """A backbone and a face detector: `embed(photo)` and `compare(a, b)` for photos of any size.

    Args:
        network: backbone name (`backbones.get_model`), for example "vit_s_dp005_mask_0".
        weights: the backbone state_dict (.pt) for `network`.
        detector_model: YuNet ONNX file; None looks for $TRANSFACE_DETECTOR_MODEL, then the cached download
            (`eval.detect.find_detector_model`).
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        flip: add the embedding of the mirrored face before normalising (the flip test).

    Raises UserError for a missing or mismatched weights file or a missing detector model.
    """

    def __init__(self, network: str, weights: str | os.PathLike, detector_model: str | os.PathLike | None = None,
                 device: str | None = None, flip: bool = False):
        self.device = pick_device(0, device)
        self.model = load_backbone(network, weights).eval().to(self.device)
        self.detector = load_detector(detector_model)
        self.flip = flip

    def align(self, photo: Photo) -> tuple[np.ndarray, Face]:
        """(aligned crop 112 x 112 x 3 uint8 RGB, detection) of the largest face in `photo`.

        Raises UserError when the photo cannot be read or has no face.
        """
        return align_largest(self.detector, photo)

    def embed_aligned(self, crops: np.ndarray) -> np.ndarray:
        """Unit-norm float32 embeddings [F, D] of aligned crops [F, 112, 112, 3] uint8 RGB.

        Raises eval.guard.NonFiniteEmbeddings (a UserError) when the network gives non-finite embeddings.
        """
        images = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)  # [F, H, W, 3] -> [F, 3, H, W]
        embeddings, mirrored = embed_batch(self.model, images, self.device, flip=self.flip)  # [F, D] each
        if mirrored is not None:
            embeddings = embeddings + mirrored
        check_embeddings(embeddings, source="the faces given", unit="faces")
        return unit_rows(embeddings, source="the faces given", describe=lambda row: f"face {row}")

    def embed(self, photo: Photo) -> np.ndarray:
        """Unit-norm float32 embedding [D] (D = 512) of the largest face in `photo`."""
        crop, _ = self.align(photo)
        return self.embed_aligned(crop[None])[0]

    def compare(self, a: Photo, b: Photo) -> float:
        """Cosine similarity in [-1, 1] of the largest faces of photos `a` and `b`."""
        return float(self.embed(a) @ self.embed(b))
