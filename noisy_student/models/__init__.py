"""Model registry and families.

>>> model = create_model("cnn_small", num_classes=10, in_chans=1, drop_path_rate=0.2)

Every model maps ``[B, C, H, W] -> [B, num_classes]`` and exposes ``forward_features``
(pooled ``[B, num_features]``), ``num_features`` and ``head`` (the final ``nn.Linear``);
the backbone is everything except ``head`` (and ``head_dist``, the distillation token's head of
``deit_*`` models, which return both heads' logits in training and their mean in eval).
Families: ``cnn_*``, ``resnet*``/``wrn_*`` (CIFAR-style), ``vit_*``/``deit_*``, ``tv_*``
(torchvision) and ``timm_model(arch=NAME)`` (any timm architecture; timm is optional).
"""

from ._registry import count_params, create_model, list_models, parse_model_spec, register_model

# Importing the family modules registers their models.
from . import cnn, resnet, timm_models, torchvision_models, vit  # noqa: E402,F401  (isort: skip)

__all__ = ["count_params", "create_model", "list_models", "parse_model_spec", "register_model"]
