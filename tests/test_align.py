"""Five-point alignment: the similarity estimate recovers known transforms and matches skimage; align_face
maps a warped face back onto the template."""

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from eval.align import ARCFACE_TEMPLATE, align_face, estimate_similarity, reference_landmarks
from utils.opencv import cv2


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """2x3 matrix of x -> scale * R(angle) x + shift."""
    theta = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return np.hstack([rotation, np.array(shift)[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def _smooth_face(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random colour image (bilinear resampling of it is nearly exact)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("angle, scale, shift", [(0.0, 1.0, (0.0, 0.0)), (17.0, 1.7, (40.0, 25.0)),
                                                 (-35.0, 0.6, (5.0, 90.0)), (170.0, 2.5, (300.0, 10.0))])
def test_estimate_similarity_recovers_the_inverse_of_a_known_transform(angle, scale, shift):
    forward = _similarity(angle, scale, shift)  # template -> image
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    recovered = estimate_similarity(landmarks, ARCFACE_TEMPLATE)  # image -> template
    np.testing.assert_allclose(recovered, _invert(forward), atol=1e-4)


def test_estimate_similarity_equals_skimage_least_squares_on_noisy_points():
    rng = np.random.default_rng(0)
    template = ARCFACE_TEMPLATE.astype(np.float64)
    for _ in range(20):
        src = _apply(_similarity(rng.uniform(-180, 180), rng.uniform(0.3, 4), rng.uniform(-50, 300, 2)),
                     template) + rng.normal(0, 4, (5, 2))
        expected = SimilarityTransform.from_estimate(src, template).params[:2]
        np.testing.assert_allclose(estimate_similarity(src, template), expected, atol=1e-9)


def test_estimate_similarity_never_reflects_like_skimage():
    mirrored = ARCFACE_TEMPLATE.astype(np.float64) * np.array([-1.0, 1.0])
    matrix = estimate_similarity(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0
    expected = SimilarityTransform.from_estimate(mirrored, ARCFACE_TEMPLATE.astype(np.float64)).params[:2]
    np.testing.assert_allclose(matrix, expected, atol=1e-9)


def test_estimate_similarity_rejects_coincident_points():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_align_face_undoes_a_known_warp():
    face = _smooth_face(1)
    forward = _similarity(25.0, 1.6, (60.0, 30.0))  # aligned face -> loose crop
    loose = cv2.warpAffine(face, forward, (260, 260), flags=cv2.INTER_CUBIC)
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    aligned = align_face(loose, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    error = np.abs(aligned.astype(np.float64) - face)[8:-8, 8:-8].mean()
    assert error < 2.0
    wrong = align_face(loose, landmarks + np.array([6.0, 0.0]))
    assert np.abs(wrong.astype(np.float64) - face)[8:-8, 8:-8].mean() > 4 * error


def test_align_face_fills_pixels_outside_the_image_with_zero():
    image = np.full((112, 112, 3), 200, dtype=np.uint8)
    landmarks = _apply(_similarity(0.0, 1.0, (-60.0, 0.0)), ARCFACE_TEMPLATE.astype(np.float64))
    aligned = align_face(image, landmarks)  # the face's left half lies left of the image
    assert (aligned[:, :50] == 0).all() and (aligned[:, 70:] == 200).all()


def test_reference_landmarks_scale_with_the_crop_size():
    np.testing.assert_allclose(reference_landmarks(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)
    assert align_face(_smooth_face(2), ARCFACE_TEMPLATE * 2, size=224).shape == (224, 224, 3)
