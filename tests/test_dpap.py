"""DPAP: amplitude mixing against NumPy, the released per-patch algorithm, the locality and statistics of
the batched perturbation, and the scoring pass of the training-step helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from easydict import EasyDict

import dpap
from backbones import get_model
from utils.errors import UserError

PATCH = 9


def uint8_batch(batch_size: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    """Normalised images [B, 3, size, size] on the uint8 grid, as the data loader produces them."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), generator=g).float()
    return (pixels / 255 - 0.5) / 0.5


def random_weights(batch_size: int, num_patches: int = 144, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, num_patches, generator=g).softmax(dim=1)


def numpy_amplitude_mix(src: np.ndarray, ref: np.ndarray, lam: float, ratio: float) -> np.ndarray:
    """The released FACT-style mix, one channel at a time: src, ref [C, H, W] -> [C, H, W]."""
    _, h, w = src.shape
    crop_h, crop_w = int(h * math.sqrt(ratio)), int(w * math.sqrt(ratio))
    start_h, start_w = h // 2 - crop_h // 2, w // 2 - crop_w // 2
    out = np.empty_like(src, dtype=np.float64)
    for c in range(src.shape[0]):
        spectrum = np.fft.fft2(src[c])
        amp_src = np.fft.fftshift(np.abs(spectrum))
        amp_ref = np.fft.fftshift(np.abs(np.fft.fft2(ref[c])))
        mixed = amp_src.copy()
        window = (slice(start_h, start_h + crop_h), slice(start_w, start_w + crop_w))
        mixed[window] = lam * amp_ref[window] + (1 - lam) * amp_src[window]
        out[c] = np.real(np.fft.ifft2(np.fft.ifftshift(mixed) * np.exp(1j * np.angle(spectrum))))
    return out


def released_loop(images: torch.Tensor, patch_weights: torch.Tensor, k: int, prob: float, alpha: float,
                  ratio: float, quantize: bool, seed: int) -> torch.Tensor:
    """The released per-patch loop in NumPy, fed with the draws `dpap` documents, partners from the clean
    batch."""
    g = torch.Generator().manual_seed(seed)
    batch_size, num_patches = patch_weights.shape
    grid = images.shape[-1] // PATCH
    chosen = torch.nonzero(torch.rand(batch_size, generator=g) < prob).squeeze(1).tolist()
    partner_images = torch.randint(batch_size, (len(chosen), k), generator=g).numpy()
    partner_cells = torch.randint(num_patches, (len(chosen), k), generator=g).numpy()
    lams = (torch.rand(len(chosen), k, generator=g) * alpha).numpy()
    clean = ((images.double().numpy() * 0.5) + 0.5) * 255  # [B, C, H, W]
    out = clean.copy()
    order = np.argsort(-patch_weights.numpy(), axis=1, kind="stable")
    for m, b in enumerate(chosen):
        for j in range(k):
            row, col = divmod(int(order[b, j]), grid)
            p_row, p_col = divmod(int(partner_cells[m, j]), grid)
            src = clean[b, :, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH]
            ref = clean[partner_images[m, j], :, p_row * PATCH:(p_row + 1) * PATCH,
                        p_col * PATCH:(p_col + 1) * PATCH]
            mixed = np.clip(numpy_amplitude_mix(src, ref, float(lams[m, j]), ratio), 0, 255)
            if quantize:
                mixed = mixed.astype(np.uint8)
            out[b, :, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = mixed
    return torch.from_numpy((out / 255 - 0.5) / 0.5)


def replay_choice(batch_size: int, prob: float, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.nonzero(torch.rand(batch_size, generator=g) < prob).squeeze(1).tolist()


# ---- amplitude_mix ----

def test_amplitude_mix_with_zero_lambda_returns_the_source():
    src, ref = torch.rand(2, 3, 3, PATCH, PATCH) * 255, torch.rand(2, 3, 3, PATCH, PATCH) * 255
    assert torch.allclose(dpap.amplitude_mix(src, ref, 0.0), src, atol=1e-3)
    assert torch.allclose(dpap.amplitude_mix(src.double(), ref.double(), 0.0), src.double(), atol=1e-10)


def test_amplitude_mix_with_unit_lambda_has_reference_amplitude_and_source_phase():
    src = torch.rand(4, 3, PATCH, PATCH, dtype=torch.float64) * 255
    ref = torch.rand(4, 3, PATCH, PATCH, dtype=torch.float64) * 255
    out_spectrum = torch.fft.fft2(dpap.amplitude_mix(src, ref, 1.0))
    src_spectrum, ref_spectrum = torch.fft.fft2(src), torch.fft.fft2(ref)
    assert torch.allclose(out_spectrum.abs(), ref_spectrum.abs(), atol=1e-8)
    nonzero = (src_spectrum.abs() > 1e-6) & (ref_spectrum.abs() > 1e-6)
    unit_out = out_spectrum[nonzero] / out_spectrum[nonzero].abs()
    unit_src = src_spectrum[nonzero] / src_spectrum[nonzero].abs()
    assert torch.allclose(unit_out, unit_src, atol=1e-8)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3, 0.1])
@pytest.mark.parametrize("size", [(PATCH, PATCH), (8, 8), (9, 6)])
def test_amplitude_mix_equals_numpy_per_channel(ratio, size):
    g = torch.Generator().manual_seed(3)
    src = torch.rand(5, 3, *size, generator=g, dtype=torch.float64) * 255
    ref = torch.rand(5, 3, *size, generator=g, dtype=torch.float64) * 255
    lam = torch.rand(5, generator=g, dtype=torch.float64)
    ours = dpap.amplitude_mix(src, ref, lam, ratio)
    expected = np.stack([numpy_amplitude_mix(s.numpy(), r.numpy(), float(v), ratio)
                         for s, r, v in zip(src, ref, lam)])
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-9)


def test_amplitude_mix_in_fp32_is_close_to_numpy():
    src, ref = torch.rand(7, 3, PATCH, PATCH) * 255, torch.rand(7, 3, PATCH, PATCH) * 255
    lam = torch.rand(7)
    ours = dpap.amplitude_mix(src, ref, lam, 0.5)
    assert ours.dtype == torch.float32
    expected = np.stack([numpy_amplitude_mix(s.double().numpy(), r.double().numpy(), float(v), 0.5)
                         for s, r, v in zip(src, ref, lam)])
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-3)


def test_spectrum_window_keeps_the_released_odd_size_indexing():
    # 9 * sqrt(0.5) -> crop 6, start 9 // 2 - 3 = 1: shifted rows/cols 1..6, one bin off centre.
    shifted = torch.fft.fftshift(dpap.spectrum_window(PATCH, PATCH, 0.5))
    expected = torch.zeros(PATCH, PATCH, dtype=torch.bool)
    expected[1:7, 1:7] = True
    assert torch.equal(shifted, expected)
    assert dpap.spectrum_window(PATCH, PATCH, 1.0).all()


# ---- perturb ----

def test_perturb_matches_the_released_per_patch_loop_without_quantisation():
    images, weights = uint8_batch(12).double(), random_weights(12)
    ours = dpap.perturb(images, weights, k=7, prob=0.5, alpha=1.0, ratio=1.0, patch_size=PATCH,
                        quantize=False, generator=torch.Generator().manual_seed(5))
    expected = released_loop(images, weights, 7, 0.5, 1.0, 1.0, quantize=False, seed=5)
    assert torch.allclose(ours, expected, atol=1e-9)


@pytest.mark.parametrize("ratio", [1.0, 0.4])
def test_perturb_matches_the_released_per_patch_loop_with_uint8_truncation(ratio):
    images, weights = uint8_batch(12).double(), random_weights(12)
    ours = dpap.perturb(images, weights, k=7, prob=0.5, alpha=1.0, ratio=ratio, patch_size=PATCH,
                        generator=torch.Generator().manual_seed(6))
    expected = released_loop(images, weights, 7, 0.5, 1.0, ratio, quantize=True, seed=6)
    level_gap = ((ours - expected) * 0.5 * 255).abs()
    assert level_gap.max() <= 1 + 1e-6  # a value a hair away from an integer may truncate the other way
    assert (level_gap > 1e-6).float().mean() < 1e-4
    assert not torch.equal(ours, images)


def test_perturb_touches_only_top_k_patches_of_chosen_images_and_never_the_border():
    images, weights = uint8_batch(16), random_weights(16)
    k, prob, seed = 5, 0.4, 11
    out = dpap.perturb(images, weights, k=k, prob=prob, generator=torch.Generator().manual_seed(seed))
    chosen = replay_choice(16, prob, seed)
    assert 0 < len(chosen) < 16
    allowed = torch.zeros(16, 1, 112, 112, dtype=torch.bool)
    for b in chosen:
        for cell in weights[b].topk(k).indices.tolist():
            row, col = divmod(cell, 12)
            allowed[b, :, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = True
    changed = out != images  # [B, C, H, W]
    assert not (changed & ~allowed).any()
    assert not changed[:, :, 108:, :].any() and not changed[:, :, :, 108:].any()
    assert all(changed[b].any() for b in chosen)


def test_perturb_derives_the_grid_from_the_image_and_patch_size():
    images, weights = uint8_batch(6, size=30), random_weights(6, num_patches=16)  # 4x4 grid of 7 px
    out = dpap.perturb(images, weights, k=3, prob=1.0, patch_size=7,
                       generator=torch.Generator().manual_seed(2))
    changed = out != images
    assert not changed[:, :, 28:, :].any() and not changed[:, :, :, 28:].any()
    assert changed.any(dim=(1, 2, 3)).all()
    with pytest.raises(ValueError, match="patch weights"):
        dpap.perturb(images, random_weights(6), prob=1.0, patch_size=7)


def test_perturbed_pixels_are_whole_uint8_levels():
    images, weights = uint8_batch(8), random_weights(8)
    out = dpap.perturb(images, weights, prob=1.0, generator=torch.Generator().manual_seed(4))
    pixels = (out * 0.5 + 0.5) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert pixels.min() >= 0 and pixels.max() <= 255


def test_chosen_fraction_converges_to_prob():
    g = torch.Generator().manual_seed(7)
    for prob in (0.2, 0.5):
        num_draws, batch_size = 200, 64
        num_chosen = sum(dpap.choose_images(batch_size, prob, torch.device("cpu"), g).numel()
                         for _ in range(num_draws))
        n = num_draws * batch_size
        assert abs(num_chosen / n - prob) < 5 * math.sqrt(prob * (1 - prob) / n)
    assert dpap.choose_images(64, 0.0, torch.device("cpu"), g).numel() == 0
    assert dpap.choose_images(64, 1.0, torch.device("cpu"), g).tolist() == list(range(64))


def test_same_seed_gives_the_same_output_and_another_seed_another():
    images, weights = uint8_batch(16), random_weights(16)
    first = dpap.perturb(images, weights, prob=0.5, generator=torch.Generator().manual_seed(9))
    again = dpap.perturb(images, weights, prob=0.5, generator=torch.Generator().manual_seed(9))
    other = dpap.perturb(images, weights, prob=0.5, generator=torch.Generator().manual_seed(10))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    torch.manual_seed(9)
    global_first = dpap.perturb(images, weights, prob=0.5)
    torch.manual_seed(9)
    assert torch.equal(global_first, dpap.perturb(images, weights, prob=0.5))


def test_perturb_leaves_its_inputs_unchanged():
    images, weights = uint8_batch(8), random_weights(8)
    images_before, weights_before = images.clone(), weights.clone()
    out = dpap.perturb(images, weights, prob=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, images)
    assert torch.equal(images, images_before) and torch.equal(weights, weights_before)


def test_k_larger_than_the_grid_is_a_user_error():
    with pytest.raises(UserError, match="dpap_k"):
        dpap.perturb(uint8_batch(2), random_weights(2), k=145, prob=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cpu_agree_under_one_cpu_generator():
    images, weights = uint8_batch(32), random_weights(32)
    for quantize, level_tolerance in ((False, 1e-3), (True, 1 + 1e-3)):
        cpu = dpap.perturb(images, weights, prob=0.5, quantize=quantize,
                           generator=torch.Generator().manual_seed(8))
        cuda = dpap.perturb(images.cuda(), weights.cuda(), prob=0.5, quantize=quantize,
                            generator=torch.Generator().manual_seed(8))
        assert cuda.device.type == "cuda"
        gap = ((cuda.cpu() - cpu) * 0.5 * 255).abs()
        assert gap.max() <= level_tolerance
        assert (gap > 1e-3).float().mean() < 1e-3


# ---- the training-step helper ----

def recording_model() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = get_model("vit_nano", num_features=32).train()
    seen: list[torch.Tensor] = []
    model.patch_embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    return model, seen


def check_scoring_pass(model: torch.nn.Module, network: torch.nn.Module, seen: list[torch.Tensor]):
    images = uint8_batch(12)
    bn_before = {name: buf.clone() for name, buf in network.named_buffers()}
    helper = dpap.DPAP.from_config(EasyDict(dpap_k=7, dpap_prob=0.5, dpap_alpha=1.0, dpap_ratio=1.0,
                                            dpap_quantize=True))
    out, num_perturbed = helper(model, images, generator=torch.Generator().manual_seed(3))
    chosen = replay_choice(12, 0.5, 3)
    assert num_perturbed == len(chosen) > 0
    assert len(seen) == 1 and torch.equal(seen[0], images[chosen])
    assert all(torch.equal(buf, bn_before[name]) for name, buf in network.named_buffers())
    assert network.training
    unchanged = [b for b in range(12) if b not in chosen]
    assert torch.equal(out[unchanged], images[unchanged])
    assert all(not torch.equal(out[b], images[b]) for b in chosen)


def test_scoring_pass_runs_only_on_chosen_images_and_keeps_batchnorm_statistics():
    model, seen = recording_model()
    check_scoring_pass(model, model, seen)


def test_scoring_pass_goes_through_a_ddp_wrapper(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model, seen = recording_model()
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        check_scoring_pass(wrapped, model, seen)
    finally:
        dist.destroy_process_group()


def test_nothing_runs_when_no_image_is_chosen():
    model, seen = recording_model()
    images = uint8_batch(8)
    out, num_perturbed = dpap.DPAP(prob=0.0)(model, images, generator=torch.Generator().manual_seed(0))
    assert num_perturbed == 0 and out is images and not seen
