"""torchvision ImageNet models wrapped to the common interface (``tv_*``).

The original classifier is removed from the wrapped network (``backbone``) and replaced by
dropout + ``head``. ``drop_path_rate`` maps to torchvision's ``stochastic_depth_prob``
(EfficientNet, ConvNeXt; torchvision applies its own linear per-block schedule). torchvision's
ResNets have no stochastic depth, so ``drop_path_rate > 0`` raises for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._registry import register_model
from .weights import adapt_input_conv
from .wrapped import WrappedModel

# Dotted path of the classifier to drop, per family; convnext keeps its LayerNorm + Flatten.
_CLASSIFIER = {"resnet": "fc", "efficientnet": "classifier", "convnext": "classifier.2"}
_HAS_STOCHASTIC_DEPTH = {"resnet": False, "efficientnet": True, "convnext": True}


def _family(arch: str) -> str:
    return next(f for f in _CLASSIFIER if arch.startswith(f))


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _resolve_pretrained(arch: str, pretrained: str | None) -> tuple[Any, Path | None]:
    """``(weights enum, None)`` for a torchvision weights name, ``(None, path)`` for a file."""
    if pretrained is None:
        return None, None
    import torchvision.models as tvm  # imported on use: it takes seconds

    enum_cls = tvm.get_model_weights(arch)
    name = pretrained.removeprefix(f"{enum_cls.__name__}.")
    if name in enum_cls.__members__:
        return enum_cls[name], None
    if Path(pretrained).is_file():
        return None, Path(pretrained)
    raise ValueError(
        f"pretrained={pretrained!r} is neither a torchvision weights name for {arch} "
        f"({', '.join(enum_cls.__members__)}) nor an existing file"
    )


class TorchvisionModel(WrappedModel):
    """A torchvision classifier as ``backbone`` (pooled features) + dropout + linear ``head``."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        family = _family(arch)
        if _HAS_STOCHASTIC_DEPTH[family]:
            kwargs["stochastic_depth_prob"] = drop_path_rate
        elif drop_path_rate > 0:
            raise ValueError(
                f"torchvision's {arch} has no stochastic depth; drop_path_rate must be 0, "
                f"got {drop_path_rate} (use the CIFAR-style '{arch}' or wrn_* for DropPath)"
            )
        import torchvision.models as tvm  # imported on use: it takes seconds

        weights, weights_file = _resolve_pretrained(arch, pretrained)
        backbone = getattr(tvm, arch)(weights=weights, **kwargs)  # downloads if weights is set

        classifier = backbone.get_submodule(_CLASSIFIER[family])
        linear = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1]
        _set_module(backbone, _CLASSIFIER[family], nn.Identity())
        if in_chans != 3:
            self._replace_first_conv(backbone, in_chans, adapt=weights is not None)

        self.attach(backbone, linear.in_features, num_classes, drop_rate, weights_file)

    @staticmethod
    def _replace_first_conv(backbone: nn.Module, in_chans: int, adapt: bool) -> None:
        """Swap the first conv for one with ``in_chans`` inputs; adapt pretrained weights."""
        name, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d))
        new = nn.Conv2d(
            in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=conv.bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            if adapt:
                new.weight.copy_(adapt_input_conv(conv.weight, in_chans))
            else:  # keep the family's random init distribution: tile the channels
                reps = -(-in_chans // conv.in_channels)
                new.weight.copy_(conv.weight.repeat(1, reps, 1, 1)[:, :in_chans])
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        _set_module(backbone, name, new)


@register_model
def tv_resnet18(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("resnet18", **kwargs)


@register_model
def tv_resnet34(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("resnet34", **kwargs)


@register_model
def tv_resnet50(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("resnet50", **kwargs)


@register_model
def tv_efficientnet_b0(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("efficientnet_b0", **kwargs)


@register_model
def tv_efficientnet_b1(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("efficientnet_b1", **kwargs)


@register_model
def tv_efficientnet_b2(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("efficientnet_b2", **kwargs)


@register_model
def tv_efficientnet_b3(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("efficientnet_b3", **kwargs)


@register_model
def tv_convnext_tiny(**kwargs: Any) -> TorchvisionModel:
    return TorchvisionModel("convnext_tiny", **kwargs)
