"""Pre-activation residual network shared by the ``cnn_*`` and ``wrn_*`` families.

Stem conv3x3 -> stages of pre-activation basic blocks -> BN-ReLU -> global average pool
-> dropout -> linear head (He et al. 2016, "Identity Mappings in Deep Residual Networks").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, drop_path_rates, init_weights


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with DropPath on the branch.

    The 1x1 projection shortcut (used when stride or width changes) reads the
    pre-activated input, as in pre-activation ResNets and Wide ResNets.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = conv3x3(out_chs, out_chs)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x), inplace=True)  # [B, Cin, H, W]
        shortcut = x if self.shortcut is None else self.shortcut(out)  # [B, Cout, H/s, W/s]
        out = self.conv1(out)  # [B, Cout, H/s, W/s]
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        return shortcut + self.drop_path(out)

    def zero_init_last(self) -> None:
        """Zero the branch's last conv, so that the branch adds nothing: with an identity
        shortcut the block then computes its input (a block that `weights.grow` adds)."""
        nn.init.zeros_(self.conv2.weight)


class PreActResNet(nn.Module):
    """Stages of ``depth`` pre-activation blocks with the given ``widths`` and ``strides``.

    Args:
        widths: output channels of each stage.
        depth: blocks per stage (one int for all stages, or one per stage).
        stem_width: channels of the conv3x3 stem.
        strides: stride of the first block of each stage.
        stem_stride: stride of the stem conv; 2 quarters the compute on inputs of 16+ pixels.
    """

    def __init__(
        self,
        widths: Sequence[int],
        depth: int | Sequence[int],
        stem_width: int,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        strides: Sequence[int] = (1, 2, 2),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        depths = [depth] * len(widths) if isinstance(depth, int) else list(depth)
        if not (len(depths) == len(widths) == len(strides)):
            raise ValueError("widths, depth and strides must have one entry per stage")
        if min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"widths and depths must be >= 1, got {widths}, {depths}")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.drop_rate = drop_rate

        self.stem = conv3x3(in_chans, stem_width, stem_stride)
        rates = iter(drop_path_rates(sum(depths), drop_path_rate))
        stages, in_chs = [], stem_width
        for width, n, stride in zip(widths, depths, strides):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_chs, width, stride if i == 0 else 1, next(rates)))
                in_chs = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(in_chs)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [B, stem_width, H / stem_stride, W / stem_stride]
        x = self.stages(x)  # [B, widths[-1], H', W'], downsampled by prod(strides)
        x = F.relu(self.final_bn(x), inplace=True)
        return x.mean(dim=(2, 3))  # [B, num_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))  # [B, num_classes]
