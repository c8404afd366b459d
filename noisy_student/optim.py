"""What trains and how fast: parameter groups (head / backbone, weight decay), the learning-rate
schedule, and a frozen backbone for transfer learning."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def is_head(name: str) -> bool:
    """Whether a parameter or module name belongs to the classifier head(s) (`head`,
    `head_dist`); everything else is the backbone."""
    return name.split(".")[0].startswith("head")


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    pretrained: bool = False) -> torch.optim.Optimizer:
    """SGD (nesterov when momentum > 0) or AdamW; no weight decay on biases and norm weights.

    Groups: head, then backbone (each with and without decay). For `pretrained` weights the
    backbone's lr is `lr * backbone_lr_scale`; frozen parameters (finetune = "head") are left out.
    """
    groups = []
    for part in ("head", "backbone"):
        scale = cfg.backbone_lr_scale if pretrained and part == "backbone" else 1.0
        params = [p for n, p in model.named_parameters()
                  if p.requires_grad and is_head(n) == (part == "head")]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                               "lr": cfg.lr * scale, "part": part})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def freeze_backbone(model: nn.Module) -> None:
    """finetune = "head": the backbone's parameters stop requiring gradients (see `train_mode`
    for its batch-norm statistics)."""
    for name, p in model.named_parameters():
        if not is_head(name):
            p.requires_grad_(False)


def train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """model.train(), with a frozen backbone's batch-norm layers kept in eval mode (their
    running statistics stay as loaded); dropout and stochastic depth stay on."""
    model.train()
    if frozen_backbone:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not is_head(name):
                m.eval()
