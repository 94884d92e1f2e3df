"""Five-point face alignment onto the 112x112 ArcFace template (the crop every TransFace model expects).

Shared by the IJB evaluation, inference on image files and the demo data. Landmarks are (x, y) pixel
coordinates in the order left eye, right eye, nose tip, left mouth corner, right mouth corner (left and
right as seen in the image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.errors import UserError

# ArcFace reference landmarks for a 112x112 crop (the 96x112 template shifted right by 8 pixels).
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float32)

TEMPLATE_SIZE = 112


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; no reflection).

    Returns the 2x3 matrix M (float64) minimising sum_i |M [src_i; 1] - dst_i|^2, the same transform as
    Umeyama's method and skimage's SimilarityTransform.estimate. Points are [K, 2] with K >= 2. In the
    complex plane a similarity is z -> a z + b, and the least-squares `a` has a closed form.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"expected two point sets of the same shape [K >= 2, 2], got {src.shape} and "
                         f"{dst.shape}")
    src_c = src[:, 0] + 1j * src[:, 1]  # [K] complex
    dst_c = dst[:, 0] + 1j * dst[:, 1]
    src_centred = src_c - src_c.mean()
    dst_centred = dst_c - dst_c.mean()
    spread = np.sum(np.abs(src_centred) ** 2)
    if spread == 0:
        raise ValueError("all source points coincide; a similarity transform is undefined")
    scale_rotation = np.sum(np.conj(src_centred) * dst_centred) / spread  # a = s * exp(i theta)
    shift = dst_c.mean() - scale_rotation * src_c.mean()  # b
    a, b = scale_rotation.real, scale_rotation.imag
    return np.array([[a, -b, shift.real],
                     [b, a, shift.imag]])


# Landmarks closer together than this (RMS distance from their centre, pixels) give no usable alignment.
MIN_LANDMARK_SPREAD = 1.0


def check_landmarks(landmarks: np.ndarray, names: Sequence[str], source: str) -> None:
    """UserError naming the first image whose landmarks [N, 5, 2] are NaN/inf or (nearly) coincide, which
    would warp a black or meaningless crop; `source` says where the landmarks came from."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(len(names), 5, 2)
    finite = np.isfinite(points).all(axis=(1, 2))  # [N]
    points = np.where(finite[:, None, None], points, 0.0)  # spread of the finite rows only
    centred = points - points.mean(axis=1, keepdims=True)  # [N, 5, 2]
    spread = np.sqrt((centred ** 2).sum(axis=2).mean(axis=1))  # [N] RMS distance from the centre
    bad = ~finite | (spread < MIN_LANDMARK_SPREAD)
    if bad.any():
        row = int(np.argmax(bad))
        why = "not finite" if not finite[row] else f"within {spread[row]:.2g} pixels of each other"
        shown = np.asarray(landmarks, dtype=np.float64).reshape(len(names), 10)[row]
        raise UserError(f"{source}: the landmarks of '{names[row]}' are {why} "
                        f"({np.array2string(shown, precision=2, separator=' ')}); fix them or leave the image out.")


def reference_landmarks(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The ArcFace template scaled to a `size` x `size` crop, [5, 2] float32."""
    return ARCFACE_TEMPLATE * np.float32(size / TEMPLATE_SIZE)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Warp `image` (H x W x C uint8, any channel order) so its `landmarks` [5, 2] land on the template.

    Bilinear sampling, pixels from outside the image are 0, as in the released IJB evaluation.
    Returns size x size x C in the channel order of the input.
    """
    matrix = estimate_similarity(np.asarray(landmarks, dtype=np.float64).reshape(5, 2),
                                 reference_landmarks(size))
    from utils.opencv import cv2  # here, not at the top: eval_ijbc --features checks landmarks, starts without it

    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


__all__ = ["ARCFACE_TEMPLATE", "MIN_LANDMARK_SPREAD", "TEMPLATE_SIZE", "align_face", "check_landmarks",
            "estimate_similarity", "reference_landmarks"]
