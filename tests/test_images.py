"""utils.images: the [-1, 1] scaling every path into the network shares."""

import numpy as np
import torch

from utils.images import normalize, to_pixels


def test_normalize_equals_the_released_transform_on_every_pixel_value():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = (np.arange(256, dtype=np.float32).reshape(1, 1, 16, 16) / np.float32(255) - np.float32(0.5)) \
        / np.float32(0.5)  # ToTensor + Normalize(0.5, 0.5) in float32, computed by NumPy
    out = normalize(pixels)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out[0, 0, 0, 0] == -1 and out[0, 0, -1, -1] == 1


def test_normalize_leaves_its_input_unchanged_and_keeps_a_wider_float_type():
    pixels = torch.linspace(0, 255, 50, dtype=torch.float64)
    copy = pixels.clone()
    out = normalize(pixels)
    assert out.dtype == torch.float64 and torch.equal(pixels, copy)
    assert normalize(pixels.float()).dtype == torch.float32


def test_to_pixels_inverts_normalize():
    pixels = torch.arange(256, dtype=torch.uint8)
    torch.testing.assert_close(to_pixels(normalize(pixels)), pixels.float(), rtol=0, atol=1e-4)
