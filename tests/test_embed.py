"""eval.embed.embed_batch: the flip-test embeddings shared by .bin verification and IJB evaluation."""

import numpy as np
import torch

from backbones import get_model
from eval.embed import embed_batch


def _setup():
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=16).eval()
    images = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, images


def test_embed_batch_gives_the_embeddings_of_the_images_and_of_their_mirrors():
    model, images = _setup()
    plain, mirrored = embed_batch(model, images, torch.device("cpu"))
    with torch.no_grad():
        x = images.double() / 127.5 - 1.0  # [B, 3, H, W], computed independently
        expected_plain = model(x.float()).numpy()
        expected_mirrored = model(x.flip(-1).float()).numpy()
    assert plain.shape == mirrored.shape == (3, 16) and plain.dtype == mirrored.dtype == np.float32
    np.testing.assert_allclose(plain, expected_plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mirrored, expected_mirrored, rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain, mirrored)


def test_embed_batch_without_flip_returns_no_mirrors_and_keeps_images_and_mode():
    model, images = _setup()
    copy = images.clone()
    plain, mirrored = embed_batch(model, images, torch.device("cpu"), flip=False)
    with_flip, _ = embed_batch(model, images, torch.device("cpu"), flip=True)
    assert mirrored is None and plain.shape == (3, 16)
    np.testing.assert_allclose(plain, with_flip, rtol=1e-4, atol=1e-5)
    assert torch.equal(images, copy) and not model.training
