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


def build_optimizer(model: nn.Module, cfg: TrainConfig, pretrained: bool = False,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD (nesterov when momentum > 0) or AdamW; no weight decay on biases, norm weights and
    what a module names in its `no_weight_decay()` (timm's convention: a ViT's class and
    distillation tokens and position embedding, as in DeiT).

    Groups: head, then backbone (each with and without decay). For `pretrained` weights the
    backbone's lr is `lr * backbone_lr_scale`; frozen parameters (finetune = "head") are left out.
    `fused` (default: when every parameter is on a GPU): PyTorch's fused kernels, which launch
    less and skip a non-finite step on the device (`optimizer.found_inf`), without a host wait.
    """
    groups, exempt = [], no_decay_names(model)
    for part in ("head", "backbone"):
        scale = cfg.backbone_lr_scale if pretrained and part == "backbone" else 1.0
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and is_head(n) == (part == "head")]
        for decay in (True, False):
            chosen = [p for n, p in params if (p.ndim > 1 and n not in exempt) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                               "lr": cfg.lr * scale, "part": part})
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = (bool(params) and all(p.is_cuda for p in params)) or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules list in their `no_weight_decay()`."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names


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
