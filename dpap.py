"""Dominant Patch Amplitude Perturbation (DPAP): mix the amplitude spectrum of an image's top patches.

For a random subset of the batch, the K patches with the largest SE patch weights get the amplitude
spectrum of a random patch of a random image of the same batch mixed into theirs (phase kept), in pixel
units, as the released TransFace recipe does. Everything runs batched on the images' device.

Legend: B batch, M chosen images, K perturbed patches per image, N patches, C channels, P patch side.

Random draws, in this order, all from `generator` (or the global RNG of the images' device when it is
None): the image choice `rand(B) < prob`; then, for the M chosen images, partner images `randint(B)`
[M, K], partner cells `randint(N)` [M, K] and mixing weights `rand * alpha` [M, K]. `DPAP` runs the
scoring pass between the choice and the partner draws; in training mode that pass draws its stochastic
depth and token masking from the device's global RNG, never from `generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from utils.errors import UserError
from utils.images import PIXEL_MAX, normalize, to_pixels


def spectrum_window(height: int, width: int, ratio: float,
                    device: torch.device | None = None) -> torch.Tensor:
    """Frequencies whose amplitude is mixed, as a bool mask [H, W] in unshifted (torch.fft) order.

    The released code mixes the centred window of the fftshift-ed spectrum with sides
    int(H * sqrt(ratio)) by int(W * sqrt(ratio)) starting at H // 2 - crop // 2, so `ratio` is the
    fraction of the spectrum's area; for odd sides the window of an even crop sits one bin towards
    the negative frequencies. ratio 1.0 is the whole spectrum.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    crop_h, crop_w = int(height * math.sqrt(ratio)), int(width * math.sqrt(ratio))
    start_h, start_w = height // 2 - crop_h // 2, width // 2 - crop_w // 2
    shifted = torch.zeros(height, width, dtype=torch.bool, device=device)
    shifted[start_h:start_h + crop_h, start_w:start_w + crop_w] = True
    return torch.fft.ifftshift(shifted)


def amplitude_mix(src: torch.Tensor, ref: torch.Tensor, lam: torch.Tensor | float,
                  ratio: float = 1.0) -> torch.Tensor:
    """Re(IFFT2(A' e^{i phase(src)})) with A' = lam |FFT2(ref)| + (1 - lam) |FFT2(src)| on the window.

    src, ref: [..., C, H, W] in pixel units; lam broadcastable to the leading dims `...` (one weight
    per patch, shared by its channels). Returns [..., C, H, W] in at least fp32, unclipped.
    """
    if src.shape != ref.shape:
        raise ValueError(f"src and ref must have one shape, got {tuple(src.shape)} and {tuple(ref.shape)}")
    dtype = torch.promote_types(src.dtype, torch.float32)
    spectrum = torch.fft.fft2(src.to(dtype))  # [..., C, H, W] complex
    amp_src = spectrum.abs()
    amp_ref = torch.fft.fft2(ref.to(dtype)).abs()
    lam = torch.as_tensor(lam, dtype=dtype, device=src.device)[..., None, None, None]  # [..., 1, 1, 1]
    amp_mixed = lam * amp_ref + (1 - lam) * amp_src
    if ratio < 1.0:
        window = spectrum_window(src.shape[-2], src.shape[-1], ratio, src.device)  # [H, W]
        amp_mixed = torch.where(window, amp_mixed, amp_src)
    # e^{i phase} as F / |F| (cheaper than angle + polar); angle(0) = 0 gives 1 where |F| = 0.
    nonzero = amp_src > 0
    unit_phase = torch.where(nonzero, spectrum / torch.where(nonzero, amp_src, 1), 1)
    return torch.fft.ifft2(amp_mixed * unit_phase).real


def _draw(sample, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`sample(generator, source_device)` run where `generator` lives (so a CPU generator also drives
    CUDA images, reproducibly across devices), then moved to `device`; with no generator, the global
    RNG of `device`."""
    source = generator.device if generator is not None else device
    return sample(generator, source).to(device)


def choose_images(batch_size: int, prob: float, device: torch.device,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [M] of the images chosen for perturbation, each independently with probability `prob`."""
    def sample(g, d):
        draws = torch.rand(batch_size, generator=g, device=d)  # [B]
        return torch.nonzero(draws < prob).squeeze(1)  # [M]

    return _draw(sample, generator, device)


def _patch_pixel_index(images_shape: torch.Size, image_index: torch.Tensor, cells: torch.Tensor,
                       patch_size: int) -> torch.Tensor:
    """Flat indices [M, K, C, P, P] into a contiguous [B, C, H, W] batch of the pixels of patch `cells`
    [M, K] (row-major over the grid) of images `image_index` [M, K]."""
    _, C, H, W = images_shape
    grid_w = W // patch_size
    device = cells.device
    corner = image_index * (C * H * W) + (cells // grid_w) * (patch_size * W) + (cells % grid_w) * patch_size
    channel = torch.arange(C, device=device) * (H * W)  # [C]
    row = torch.arange(patch_size, device=device) * W  # [P]
    col = torch.arange(patch_size, device=device)  # [P]
    within = channel[:, None, None] + row[None, :, None] + col[None, None, :]  # [C, P, P]
    return corner[..., None, None, None] + within  # [M, K, C, P, P]


def dominant_patches(patch_weights: torch.Tensor, k: int) -> torch.Tensor:
    """Grid cells [M, K] (row-major) of the `k` largest SE weights of each row of `patch_weights` [M, N],
    largest first: the patches DPAP perturbs."""
    return patch_weights.topk(k, dim=1).indices  # [M, K]


def perturb_chosen(images: torch.Tensor, chosen: torch.Tensor, chosen_patch_weights: torch.Tensor, *,
                   k: int = 7, alpha: float = 1.0, ratio: float = 1.0, patch_size: int = 9,
                   quantize: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Perturb the top-k patches of the images `chosen` [M] (distinct indices), given their weights [M, N].

    Partners come from the clean batch. Returns a perturbed copy of `images` [B, C, H, W]; pixels
    outside the grid of whole patches and the other images are copied unchanged.
    """
    B, _, H, W = images.shape
    grid_h, grid_w = H // patch_size, W // patch_size
    num_patches = grid_h * grid_w
    num_chosen = chosen.numel()
    if chosen_patch_weights.shape != (num_chosen, num_patches):
        raise ValueError(f"patch weights of shape {tuple(chosen_patch_weights.shape)} do not fit "
                         f"{num_chosen} chosen images with a {grid_h}x{grid_w} grid of "
                         f"{patch_size}-pixel patches")
    if k > num_patches:
        raise UserError(f"dpap_k={k} exceeds the {num_patches} patches of the network; set dpap_k to at "
                        f"most {num_patches}.")
    if num_chosen == 0:
        return images
    device = images.device
    chosen = chosen.to(device)
    top_cells = dominant_patches(chosen_patch_weights.to(device), k)  # [M, K]
    partner_images = _draw(lambda g, d: torch.randint(B, (num_chosen, k), generator=g, device=d),
                           generator, device)  # [M, K]
    partner_cells = _draw(lambda g, d: torch.randint(num_patches, (num_chosen, k), generator=g, device=d),
                          generator, device)  # [M, K]
    lam = _draw(lambda g, d: torch.rand(num_chosen, k, generator=g, device=d), generator, device) * alpha

    images = images.contiguous()
    owner = chosen.unsqueeze(1).expand(-1, k)  # [M, K], the image of each perturbed patch
    target = _patch_pixel_index(images.shape, owner, top_cells, patch_size)  # [M, K, C, P, P]
    partner = _patch_pixel_index(images.shape, partner_images, partner_cells, patch_size)  # [M, K, C, P, P]
    dtype = torch.promote_types(images.dtype, torch.float32)
    flat = images.view(-1)  # [B*C*H*W]
    src = to_pixels(flat.index_select(0, target.view(-1)).view(target.shape).to(dtype))  # [M, K, C, P, P]
    ref = to_pixels(flat.index_select(0, partner.view(-1)).view(partner.shape).to(dtype))  # [M, K, C, P, P]
    pixels = amplitude_mix(src, ref, lam, ratio).clamp(0, PIXEL_MAX)
    if quantize:
        pixels = pixels.trunc()  # the released uint8 cast of the clipped value
    out = images.clone()
    # [B*C*H*W] <- [M*K*C*P*P]; target patches are distinct, so no two writes collide.
    out.view(-1).index_copy_(0, target.view(-1), normalize(pixels).to(out.dtype).view(-1))
    return out


def perturb(images: torch.Tensor, patch_weights: torch.Tensor, *, k: int = 7, prob: float = 0.2,
            alpha: float = 1.0, ratio: float = 1.0, patch_size: int = 9, quantize: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """DPAP on a batch `images` [B, C, H, W] in [-1, 1] with SE weights `patch_weights` [B, N].

    Returns the perturbed batch, a new tensor (`images` itself when no image is chosen).
    """
    if patch_weights.shape[0] != images.shape[0]:
        raise ValueError(f"patch_weights has {patch_weights.shape[0]} rows for {images.shape[0]} images")
    chosen = choose_images(images.shape[0], prob, images.device, generator)  # [M]
    if chosen.numel() == 0:
        return images
    chosen_patch_weights = patch_weights[chosen.to(patch_weights.device)]  # [M, N]
    return perturb_chosen(images, chosen, chosen_patch_weights, k=k, alpha=alpha, ratio=ratio,
                          patch_size=patch_size, quantize=quantize, generator=generator)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel / DataParallel wrapper, else `model`."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


@dataclass(frozen=True)
class DPAP:
    """DPAP for the training step: choose images, score only those, perturb their dominant patches.

    Build with `DPAP.from_config(cfg)` when `cfg.dpap` is on; when it is off, do not call it (training
    is then bit-identical to a run without DPAP).
    """

    k: int = 7
    prob: float = 0.2
    alpha: float = 1.0
    ratio: float = 1.0
    quantize: bool = True

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")

    @classmethod
    def from_config(cls, cfg) -> DPAP:
        return cls(k=cfg.dpap_k, prob=cfg.dpap_prob, alpha=cfg.dpap_alpha, ratio=cfg.dpap_ratio,
                   quantize=cfg.dpap_quantize)

    def __call__(self, model: nn.Module, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """(perturbed images, number of perturbed images) for a batch [B, C, H, W] in [-1, 1].

        The scoring pass runs without gradient through the unwrapped network, in whatever mode it is
        in (training mode as released), on the chosen images only; it never touches BatchNorm
        statistics because it stops before the feature head.
        """
        network = unwrap(model)
        chosen = choose_images(images.shape[0], self.prob, images.device, generator)  # [M]
        num_chosen = chosen.numel()
        if num_chosen == 0:
            return images, 0
        chosen_patch_weights = network.patch_weights(images[chosen])  # [M, N]
        perturbed = perturb_chosen(images, chosen, chosen_patch_weights, k=self.k, alpha=self.alpha,
                                   ratio=self.ratio, patch_size=network.patch_size, quantize=self.quantize,
                                   generator=generator)
        return perturbed, num_chosen
