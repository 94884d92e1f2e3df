"""MobileFaceNet (mbf, mbf_large), the light CNN of insightface's ArcFace models, as released with TransFace.

Parameter names, shapes and initialisation match insightface's arcface_torch `backbones/mobilefacenet.py`,
so its published `backbone.pth` files load with strict=True. The released `fp16` flag is gone: the caller
chooses the precision with autocast; the last 1x1 convolution and the GDC head run in fp32 as released.
Legend: B batch, C channels, H x W feature map (112 -> 56 -> 28 -> 14 -> 7).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.precision import autocast_off

HEAD_WIDTH = 512  # channels of the last convolution, whatever the scale


class ConvBlock(nn.Module):
    """Convolution without bias, BatchNorm, PReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.PReLU(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Convolution without bias and BatchNorm, no activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expansion to `hidden` channels, 3x3 depthwise, linear 1x1 projection.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        hidden: channels of the depthwise convolution (the released code calls it `groups`).
        stride: stride of the depthwise convolution.
        residual: add the input to the output (stride 1 and in_chs == out_chs only).
    """

    def __init__(self, in_chs: int, out_chs: int, hidden: int, stride: int = 1, residual: bool = False):
        super().__init__()
        if residual and (stride != 1 or in_chs != out_chs):
            raise ValueError("a residual DepthWise block keeps its shape: stride 1 and in_chs == out_chs")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_chs, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)  # [B, out_chs, H/stride, W/stride]
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num_blocks` residual DepthWise blocks of width `chs`."""

    def __init__(self, chs: int, num_blocks: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(chs, chs, hidden, residual=True) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise over the final map, linear, BatchNorm1d."""

    def __init__(self, num_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(HEAD_WIDTH, HEAD_WIDTH, kernel=7, groups=HEAD_WIDTH),  # [B, 512, 7, 7] -> [B, 512, 1, 1]
            nn.Flatten(),  # [B, 512]
            nn.Linear(HEAD_WIDTH, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """`model(x)`: [B, 3, 112, 112] in [-1, 1] -> embedding [B, num_features], in train and eval mode.

    Args:
        num_features: embedding size.
        blocks: blocks of the four stages; a first entry of 1 is a single grouped 3x3 convolution as released.
        scale: width multiplier (64 * scale channels in the first stages, 128 * scale in the last).
        using_checkpoint: recompute blocks in the backward pass to save memory (training only).
    """

    embedding_key = "features.layers.3.weight"  # the state_dict entry whose length is num_features

    def __init__(self, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2,
                 using_checkpoint: bool = False):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive block counts, got {tuple(blocks)}")
        self.blocks = tuple(blocks)
        self.num_features = num_features
        self.using_checkpoint = using_checkpoint
        narrow, wide = 64 * scale, 128 * scale
        if blocks[0] == 1:
            first = ConvBlock(narrow, narrow, kernel=3, padding=1, groups=64)
        else:
            first = Residual(narrow, blocks[0], hidden=128)
        self.layers = nn.ModuleList([
            ConvBlock(3, narrow, kernel=3, stride=2, padding=1),  # [B, narrow, 56, 56]
            first,
            DepthWise(narrow, narrow, hidden=128, stride=2),  # [B, narrow, 28, 28]
            Residual(narrow, blocks[1], hidden=128),
            DepthWise(narrow, wide, hidden=256, stride=2),  # [B, wide, 14, 14]
            Residual(wide, blocks[2], hidden=256),
            DepthWise(wide, wide, hidden=512, stride=2),  # [B, wide, 7, 7]
            Residual(wide, blocks[3], hidden=256),
        ])
        self.conv_sep = ConvBlock(wide, HEAD_WIDTH)
        self.features = GDC(num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _units(self) -> Iterator[nn.Module]:
        """The body in order, residual stages split into their blocks (the units of checkpointing)."""
        for layer in self.layers:
            yield from (layer.layers if isinstance(layer, Residual) else [layer])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 112, 112] -> [B, 128 * scale, 7, 7], in the caller's autocast precision."""
        for unit in self._units():
            if self.using_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(unit, x, use_reentrant=False)
            else:
                x = unit(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 128 * scale, 7, 7] -> [B, num_features], in fp32 as released."""
        with autocast_off(x.device.type):
            return self.features(self.conv_sep(x.float()))  # [B, 512, 7, 7] -> [B, num_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
