"""CIFAR-style residual networks for 32x32+ inputs: ResNet-18/34/50 and Wide ResNets.

``ResNet`` uses a 3x3 stem and no max-pool (32x32 -> 4x4 before pooling);
``WideResNet`` follows Zagoruyko & Komodakis (2016): depth = 6n + 4, widen factor k,
pre-activation blocks. Every residual branch has DropPath with linearly increasing rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import DropPath, drop_path_rates, init_weights
from .preact import PreActResNet


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN shortcut when the shape changes, else None (identity)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, DropPath, add shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_chs: int, chs: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.conv2 = nn.Conv2d(chs, chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(chs)
        self.shortcut = _projection(in_chs, chs, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)  # [B, chs, H/s, W/s]
        out = self.bn2(self.conv2(out))
        return F.relu(shortcut + self.drop_path(out))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck (stride on the 3x3, as in torchvision's ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_chs: int, chs: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        out_chs = chs * self.expansion
        self.conv1 = nn.Conv2d(in_chs, chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.conv2 = nn.Conv2d(chs, chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(chs)
        self.conv3 = nn.Conv2d(chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = _projection(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)  # [B, chs, H, W]
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)  # [B, chs, H/s, W/s]
        out = self.bn3(self.conv3(out))  # [B, 4 * chs, H/s, W/s]
        return F.relu(shortcut + self.drop_path(out))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (conv3x3-BN-ReLU, no max-pool) and 4 stages (64..512)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1] * block.expansion
        self.drop_rate = drop_rate

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        rates = iter(drop_path_rates(sum(layers), drop_path_rate))
        stages, in_chs = [], widths[0]
        for stage_idx, (chs, n) in enumerate(zip(widths, layers)):
            blocks = []
            for i in range(n):
                stride = 2 if stage_idx > 0 and i == 0 else 1
                blocks.append(block(in_chs, chs, stride, next(rates)))
                in_chs = chs * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [B, 64, H, W]
        x = self.stages(x)  # [B, num_features, H/8, W/8]
        return x.mean(dim=(2, 3))  # [B, num_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))  # [B, num_classes]


class WideResNet(PreActResNet):
    """WRN-depth-k: 16-channel stem, 3 stages of widths (16k, 32k, 64k), n = (depth - 4) / 6."""

    def __init__(self, depth: int = 28, widen_factor: int = 2, **kwargs: Any) -> None:
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        k = widen_factor
        super().__init__(
            widths=(16 * k, 32 * k, 64 * k), depth=(depth - 4) // 6, stem_width=16, **kwargs
        )


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def wrn_16_4(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=16, widen_factor=4, **kwargs)


@register_model
def wrn_28_2(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=28, widen_factor=2, **kwargs)


@register_model
def wrn_28_4(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=28, widen_factor=4, **kwargs)


@register_model
def wrn_28_10(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=28, widen_factor=10, **kwargs)
