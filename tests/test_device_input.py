"""device_input: batch JPEG decoding on the device, random flip and [-1, 1] (CPU; one CUDA test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import DataError, RecordDataset, collate_encoded
from device_input import BatchJpegDecoder, DeviceAugment, GpuJpegDecoder, flip_and_normalize
from utils.decode import decode_chw
from utils.opencv import cv2

FIXTURES = Path(__file__).parent / "data" / "recordio"


def random_face(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """A smooth random RGB image [H, W, 3] (JPEG-friendly)."""
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    return cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # [num_bytes]


def test_flip_and_normalize_matches_the_released_transform():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    kept = images.clone()
    plain = flip_and_normalize(images, flip=False)
    assert torch.equal(plain, (images.float() / 255 - 0.5) / 0.5)
    flipped = flip_and_normalize(images, flip=True, generator=torch.Generator().manual_seed(4))
    flip_mask = torch.rand(6, generator=torch.Generator().manual_seed(4)) < 0.5
    assert 0 < int(flip_mask.sum()) < 6  # the seed exercises both branches
    for index in range(6):
        want = plain[index].flip(-1) if flip_mask[index] else plain[index]
        assert torch.equal(flipped[index], want)
    assert torch.equal(images, kept) and flipped.min() >= -1 and flipped.max() <= 1


def test_device_augment_moves_a_loader_batch_to_training_input():
    augment = DeviceAugment("cpu", flip=False)
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    inputs, labels = augment((images, torch.tensor([3, 1])))
    assert inputs.dtype == torch.float32 and torch.equal(inputs, torch.ones(2, 3, 4, 4))
    assert labels.tolist() == [3, 1]


def test_batch_decoder_matches_worker_decoding_and_replaces_bad_images():
    rng = np.random.default_rng(2)
    jpeg = cv2.imencode(".jpg", random_face(rng))[1].tobytes()
    png = cv2.imencode(".png", random_face(rng))[1].tobytes()
    payloads = [jpeg, png, jpeg[:40], jpeg]
    decoder = BatchJpegDecoder("cpu", num_images=4, max_corrupt_fraction=0.25)
    images, labels = decoder([byte_tensor(data) for data in payloads], torch.arange(4), [f"p{i}" for i in range(4)])
    assert images.shape == (4, 3, 112, 112) and images.dtype == torch.uint8
    for position in (0, 1, 3):
        assert torch.equal(images[position], decode_chw(payloads[position]))  # OpenCV's pixels
    assert labels.tolist() == [0, 1, 3, 3]  # the truncated JPEG is replaced by the next image, with its label
    assert torch.equal(images[2], images[3])
    assert decoder.corrupt.bad_names == {"p2"}
    with pytest.raises(DataError, match=r"2 images failed to decode"):
        decoder([byte_tensor(jpeg[:40]), byte_tensor(jpeg)], torch.arange(2), ["another bad", "ok"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_equals_cpu_decode_closely():
    encoded = RecordDataset(FIXTURES / "ms1m_style", decode=False)
    decoded = RecordDataset(FIXTURES / "ms1m_style")
    augment = DeviceAugment("cuda", flip=False, decoder=GpuJpegDecoder("cuda", len(encoded), 0.0))
    inputs, labels = augment(collate_encoded([encoded[i] for i in range(8)]))
    expected = torch.stack([decoded[i][0] for i in range(8)]).float() / 127.5 - 1
    assert inputs.device.type == "cuda" and labels.device.type == "cuda"
    assert (inputs.cpu() - expected).abs().mean() < 0.02  # nvJPEG and libjpeg differ by rounding
