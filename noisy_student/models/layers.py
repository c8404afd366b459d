"""Shared layers: stochastic depth (DropPath) and its per-block rate schedule."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Drop whole samples of a residual branch with probability ``p`` (stochastic depth).

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged.
    Identity when ``p == 0`` or not ``training``.
    """
    if p == 0.0 or not training:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_path probability must be in [0, 1], got {p}")
    keep = 1.0 - p
    if keep == 0.0:
        return x * 0.0
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # [B, 1, 1, 1]: one draw per sample
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`, applied to a residual branch before the addition."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(num_blocks: int, drop_path_rate: float) -> list[float]:
    """Per-block drop rates: survival decays linearly from 1.0 (first block) to 1 - rate (last).

    ``drop_path_rates(5, 0.2) == [0.0, 0.05, 0.1, 0.15, 0.2]``; a single block gets the full rate.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if not 0.0 <= drop_path_rate <= 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1], got {drop_path_rate}")
    if num_blocks == 1:
        return [drop_path_rate]
    return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


def init_weights(module: nn.Module) -> None:
    """He (fan_out) init for convolutions; batch norm as identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
