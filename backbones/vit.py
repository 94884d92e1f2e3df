"""The TransFace Vision Transformer: ViT blocks, an SE gate over patches, and a flatten-BN feature head.

Parameter names and shapes match the released checkpoints, so they load with strict=True.
Legend: B batch, N patches (144 for 112x112 input and 9-pixel patches), D width, H heads, K kept tokens.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.precision import autocast_off

ATTENTION_KINDS = ("sdpa", "explicit")  # fused kernels; the released fp32 softmax


class PatchInfo(NamedTuple):
    embedding: torch.Tensor  # [B, num_features]
    patch_weights: torch.Tensor  # [B, N], softmax over patches of the SE gate
    patch_std: torch.Tensor  # [B, N], unbiased std over channels of each gated token


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability `drop_prob`, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # [B, 1, 1]
    return x * mask / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution; pixels past the last whole patch are unused."""

    def __init__(self, img_size: int = 112, patch_size: int = 9, in_chans: int = 3, embed_dim: int = 512):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        x = self.proj(x)  # [B, D, grid, grid]
        return x.flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    """Multi-head self-attention; "sdpa" uses PyTorch's fused kernels, "explicit" the released fp32 math."""

    def __init__(self, dim: int, num_heads: int = 8, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if attn_impl not in ATTENTION_KINDS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_KINDS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim)  # [B, L, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D/H]
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, D/H]
        else:
            out = explicit_attention(q, k, v, self.scale)
        out = out.transpose(1, 2).reshape(B, L, D)  # [B, L, D]
        return self.proj(out)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v in fp32 whatever the autocast state, as the released code computes it.

    q, k, v: [B, H, L, d]; returns [B, H, L, d] in fp32.
    """
    with autocast_off(q.device.type):
        q, k, v = q.float(), k.float(), v.float()
        attn = (q @ k.transpose(-2, -1)) * scale  # [B, H, L, L]
        return attn.softmax(dim=-1) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random (1 - mask_ratio) of the tokens of each sample, MAE style.

    x: [B, N, D] -> (kept tokens [B, K, D], ids_restore [B, N]) where ids_restore puts the kept tokens
    followed by N - K fillers back into the original order.
    """
    B, N, D = x.shape
    num_keep = int(N * (1 - mask_ratio))
    noise = torch.rand(B, N, device=x.device)  # [B, N]
    ids_shuffle = torch.argsort(noise, dim=1)  # [B, N], ascending noise: the first K are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [B, N], inverse permutation
    ids_keep = ids_shuffle[:, :num_keep]  # [B, K]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # [B, K, D]
    return kept, ids_restore


class VisionTransformer(nn.Module):
    """TransFace ViT. `model(x)` -> embedding; `model(x, with_patch_info=True)` -> PatchInfo.

    Args:
        img_size: input height and width.
        patch_size: patch side in pixels (9 in every released model).
        num_features: embedding size.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over D.
        drop_path_rate: stochastic depth of the last block; rises linearly from 0.
        mask_ratio: fraction of tokens dropped in training (restored as `mask_token` after the blocks).
        using_checkpoint: recompute blocks in the backward pass to save memory (training only).
        attn_impl: "sdpa" (fused kernels) or "explicit" (fp32 softmax as released).
    """

    embedding_key = "feature.3.weight"  # the state_dict entry whose length is num_features

    def __init__(self, img_size: int = 112, patch_size: int = 9, num_features: int = 512,
                 embed_dim: int = 512, depth: int = 12, num_heads: int = 8, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, mask_ratio: float = 0.0, using_checkpoint: bool = False,
                 attn_impl: str = "sdpa"):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.num_features = num_features
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.using_checkpoint = using_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        # Trained only when tokens are masked; frozen otherwise so DDP sees no unused parameter.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=mask_ratio > 0)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, rate, attn_impl) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)
        flat_dim = self.num_patches * embed_dim
        self.feature = nn.Sequential(
            nn.Linear(flat_dim, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5),
        )
        self._init_weights()
        # Created after the ViT initialisation, so they keep PyTorch's default Linear init as released.
        self.senet = nn.Sequential(
            nn.Linear(flat_dim, self.num_patches, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(self.num_patches, self.num_patches, bias=False),
            nn.Sigmoid(),
        )

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> normalised tokens after the blocks [B, N, D], float32.

        In train mode with mask_ratio > 0 the dropped positions hold `mask_token`.
        """
        x = self.patch_embed(x) + self.pos_embed  # [B, N, D]
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, ids_restore = random_masking(x, self.mask_ratio)  # [B, K, D], [B, N]
        for block in self.blocks:
            if self.using_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x.float())
        if masking:
            B, K, D = x.shape
            fillers = self.mask_token.to(x.dtype).expand(B, self.num_patches - K, D)  # [B, N-K, D]
            x = torch.cat([x, fillers], dim=1)  # [B, N, D] in shuffled order
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))  # [B, N, D] original order
        return x

    def _gate(self, tokens: torch.Tensor) -> torch.Tensor:
        """SE gate in (0, 1) per patch: [B, N, D] -> [B, N]."""
        return self.senet(tokens.flatten(1))  # [B, N*D] -> [B, N]

    @torch.no_grad()
    def patch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the SE gate [B, N] without the feature head (DPAP's scoring pass; no BN update)."""
        return self._gate(self.forward_features(x)).softmax(dim=1)

    @overload
    def forward(self, x: torch.Tensor, with_patch_info: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, with_patch_info: Literal[True]) -> PatchInfo: ...

    def forward(self, x: torch.Tensor, with_patch_info: bool = False) -> torch.Tensor | PatchInfo:
        """Images [B, 3, H, W] in [-1, 1] -> embedding [B, num_features], or PatchInfo when
        `with_patch_info` (embedding, patch_weights [B, N], patch_std [B, N])."""
        tokens = self.forward_features(x)  # [B, N, D]
        gate = self._gate(tokens)  # [B, N]
        gated = tokens * gate.unsqueeze(-1)  # [B, N, D]
        embedding = self.feature(gated.flatten(1))  # [B, N*D] -> [B, num_features]
        if not with_patch_info:
            return embedding
        patch_std = gated.std(dim=2)  # [B, N], unbiased over channels
        return PatchInfo(embedding, gate.softmax(dim=1), patch_std)
