"""Any timm architecture wrapped to the common interface: ``timm_model(arch=NAME, ...)``.

timm is optional (``pip install -e ".[timm]"``). The wrapped network (``backbone``) is built with
``num_classes=0``, so it returns pooled features; dropout + ``head`` come on top, as for every
family. ``drop_path_rate`` goes to timm, whose stochastic depth rises linearly to that rate at
the last block, as ours does. Other keyword arguments in the spec go to ``timm.create_model``
(``"timm_model(arch=vit_tiny_patch16_224, img_size=32)"``).

``pretrained`` (``model.pretrained``) is a local weights file, or a timm weights name fetched
from the Hugging Face hub when online: ``"default"`` (the architecture's default weights), a tag
(``"a1_in1k"``) or the full name (``"resnet18.a1_in1k"``); names are checked offline against
timm's list of pretrained weights before anything is downloaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ._registry import register_model
from .wrapped import WrappedModel


def _timm() -> Any:
    try:
        import timm
    except ImportError as e:
        raise ValueError("timm_model needs timm: pip install -e \".[timm]\" "
                         "(or pip install 'timm>=1.0,<2')") from e
    return timm


def check_arch(arch: str) -> None:
    """Refuse a name that is not a timm architecture, with the closest names."""
    timm = _timm()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"timm has no architecture {arch!r}.{hint}")


def weights_name(arch: str, pretrained: str) -> str:
    """The full timm weights name (``"arch.tag"``) for ``pretrained``; checked offline."""
    timm = _timm()
    if pretrained == "default":
        full = arch
    elif pretrained.startswith(f"{arch}."):
        full = pretrained
    else:
        full = f"{arch}.{pretrained}"
    known = timm.list_pretrained(f"{arch}.*")
    if (full == arch and known) or full in known:
        return full
    listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
    raise ValueError(f"pretrained={pretrained!r} is neither a file nor timm weights for {arch} "
                     f"({listed or 'timm has no pretrained weights for it'})")


class TimmModel(WrappedModel):
    """A timm network as ``backbone`` (pooled features) + dropout + linear ``head``."""

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
        check_arch(arch)
        weights_file = Path(pretrained) if pretrained and Path(pretrained).is_file() else None
        download = bool(pretrained) and weights_file is None  # a timm weights name
        backbone = _timm().create_model(
            weights_name(arch, pretrained) if download else arch, pretrained=download,
            num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs,
        )  # fmt: skip
        features = getattr(backbone, "head_hidden_size", backbone.num_features)
        self.attach(backbone, features, num_classes, drop_rate, weights_file)


@register_model
def timm_model(arch: str | None = None, **kwargs: Any) -> TimmModel:
    if not arch:
        raise ValueError("timm_model needs an architecture: timm_model(arch=resnet18)")
    return TimmModel(str(arch), **kwargs)
