"""The common shape of wrapped networks (torchvision's, timm's): the network returns pooled
features as ``backbone``; dropout and a linear ``head`` come on top, as for every family."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .weights import load_backbone_weights


class WrappedModel(nn.Module):
    """``backbone`` (pooled features ``[B, num_features]``) + dropout + linear ``head``."""

    def attach(self, backbone: nn.Module, num_features: int, num_classes: int,
               drop_rate: float, weights_file: Path | None) -> None:
        """Set the backbone and a fresh head; load the backbone from ``weights_file`` if given."""
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes)
        if weights_file is not None:
            load_backbone_weights(self, weights_file)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # [B, num_features], pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))  # [B, num_classes]
