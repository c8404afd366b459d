"""Name -> constructor registry: the single plug-in point for model families."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Callable

from torch import nn

ModelFn = Callable[..., nn.Module]

_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Decorator: register a model constructor under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_MODELS)


_SPEC = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$")


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"cnn_small(width=40, stem_stride=2)"`` -> ``("cnn_small", {"width": 40, "stem_stride": 2})``.

    Values are JSON scalars (numbers, true/false, null, "text") or bare text; never evaluated.
    """
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"bad model spec {spec!r}: expected NAME or NAME(key=value, ...)")
    name, body = match.group(1), (match.group(2) or "").strip()
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"bad model spec {spec!r}: {item!r} is not key=value")
        try:
            kwargs[key.strip()] = json.loads(raw.strip())
        except json.JSONDecodeError:
            kwargs[key.strip()] = raw.strip()
    return name, kwargs


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; ``name`` may carry keyword arguments: ``"cnn_small(width=40)"``.

    ``drop_rate`` is dropout on the pooled features before ``head``; ``drop_path_rate`` is the
    stochastic-depth rate of the last residual block (linearly smaller for earlier blocks).
    Extra ``kwargs`` go to the family constructor (e.g. ``width``/``depth`` for ``cnn_*``,
    ``pretrained`` for ``tv_*``).
    """
    name, spec_kwargs = parse_model_spec(name)
    kwargs = {**spec_kwargs, **kwargs}
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Available models: {', '.join(list_models())}"
        )
    return _MODELS[name](
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())
