"""IResNet, the improved ResNet of insightface's ArcFace models (r18 ... r200), as released with TransFace.

Parameter names, shapes and initialisation match insightface's arcface_torch `backbones/iresnet.py`, so its
published `backbone.pth` files load with strict=True. The released `fp16` flag is gone: the caller chooses
the precision with autocast; the head (flatten, fc, BatchNorm1d) runs in fp32 as released.
Legend: B batch, C channels, H x W feature map (112 -> 56 -> 28 -> 14 -> 7 through the four stages).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.precision import autocast_off

BN_EPS = 1e-5
STAGE_WIDTHS = (64, 128, 256, 512)
FINAL_SIZE = 7  # a 112x112 input halves four times


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN residual block; the stride sits on the second convolution.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: spatial stride of the block (2 in the first block of each stage).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs, eps=BN_EPS)
        self.conv1 = conv3x3(in_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        self.prelu = nn.PReLU(out_chs)
        self.conv2 = conv3x3(out_chs, out_chs, stride)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))  # [B, C_out, H/s, W/s]
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """`model(x)`: [B, 3, 112, 112] in [-1, 1] -> embedding [B, num_features], in train and eval mode.

    Args:
        layers: number of blocks in each of the four stages.
        num_features: embedding size.
        dropout: dropout before the fc layer (0 in every released recipe).
        using_checkpoint: recompute blocks in the backward pass to save memory (training only).
    """

    embedding_key = "features.weight"  # the state_dict entry whose length is num_features

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.0,
                 using_checkpoint: bool = False):
        super().__init__()
        if len(layers) != len(STAGE_WIDTHS) or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        self.layers = tuple(layers)
        self.num_features = num_features
        self.using_checkpoint = using_checkpoint
        self.conv1 = conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        in_chs = STAGE_WIDTHS[0]
        for index, (width, depth) in enumerate(zip(STAGE_WIDTHS, layers), start=1):
            blocks = [IBasicBlock(in_chs if i == 0 else width, width, 2 if i == 0 else 1) for i in range(depth)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_chs = width
        self.bn2 = nn.BatchNorm2d(in_chs, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_chs * FINAL_SIZE**2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The released model fixes the embedding BatchNorm's scale at 1; only its shift is trained.
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 112, 112] -> [B, 512, 7, 7], in the caller's autocast precision."""
        x = self.prelu(self.bn1(self.conv1(x)))  # [B, 64, 112, 112]
        for stage in self.stages():
            for block in stage:
                if self.using_checkpoint and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return self.bn2(x)  # [B, 512, 7, 7]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 512, 7, 7] -> [B, num_features], in fp32 as released."""
        with autocast_off(x.device.type):
            x = self.dropout(x.float().flatten(1))  # [B, 512*7*7]
            return self.features(self.fc(x))  # [B, num_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
