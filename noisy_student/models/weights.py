"""Reading local weight files and loading them into a model's backbone (everything but ``head``)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    A checkpoint dict holding the weights under ``"state_dict"`` or ``"model"`` is unwrapped.
    Raises ``ValueError`` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained weights file not found: {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        raise ValueError(f"could not read pretrained weights from {str(path)!r}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} does not contain a state dict (got {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{str(path)!r} contains no tensors")
    return state


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a pretrained first-conv weight ``[O, I, kh, kw]`` to ``in_chans`` input channels.

    One channel: sum over input channels. Otherwise tile the channels and rescale by
    ``I / in_chans`` so the response to a constant image is unchanged (as timm does).
    """
    out_chs, old_in = weight.shape[:2]
    if in_chans == old_in:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / old_in)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (old_in / in_chans)


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load the backbone part of the weights in ``path`` into ``model``, non-strictly.

    Keys may be the model's own (``backbone.conv1.weight``) or, for wrapped models, those of
    the wrapped network (``conv1.weight``). ``head.*`` and keys the model lacks (e.g. an
    original ``fc``) are skipped; first-conv weights with a different number of input
    channels are adapted. Returns the model keys that were not found in the file.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")  # DDP / torch.compile
        if key not in own and f"backbone.{key}" in own:
            key = f"backbone.{key}"
        if key.startswith("head.") or key not in own:
            continue
        target = own[key].shape
        if value.shape != target:
            if value.ndim == 4 and value.shape[0] == target[0] and value.shape[2:] == target[2:]:
                value = adapt_input_conv(value, target[1])
            else:
                raise ValueError(
                    f"{str(path)!r}: shape of {key!r} is {tuple(value.shape)}, "
                    f"model expects {tuple(target)}"
                )
        loaded[key] = value
    if not loaded:
        raise ValueError(f"no weights in {str(path)!r} match the model's backbone")
    missing = [k for k in own if k not in loaded and not k.startswith("head.")]
    if missing:
        warnings.warn(
            f"{len(missing)} backbone tensors not found in {str(path)!r}, e.g. {missing[:3]}",
            stacklevel=2,
        )
    model.load_state_dict(loaded, strict=False)
    return missing


def grow(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Start ``model`` as the shallower network whose weights are ``state`` (Net2DeeperNet,
    Chen et al. 2016): each tensor of ``state`` is copied into ``model``'s tensor of the same
    name, and each residual block that ``state`` lacks has its branch's last layer zeroed
    (``zero_init_last``), so that the block starts as the identity and ``model`` computes what
    the smaller network did. The same network is an ordinary strict load.

    Returns the names of the new blocks. Raises ``ValueError`` when a tensor of ``state`` has
    no tensor of the same name and shape in ``model`` (a wider network, or another one), or a
    part of ``model`` missing from ``state`` is not a whole new block that can start as the
    identity (one with a projection shortcut cannot).
    """
    own = model.state_dict()
    misfits = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if misfits:
        k = misfits[0]
        has = f"shape {tuple(own[k].shape)}" if k in own else "no such tensor"
        raise ValueError(f"{len(misfits)} of the smaller network's tensors have no place in "
                         f"the deeper one: {k} {tuple(state[k].shape)} ({has}); it can only add "
                         "whole blocks, not widen or change them")
    missing = set(own) - set(state)
    new = [name for name, m in model.named_modules()
           if name and hasattr(m, "zero_init_last") and getattr(m, "shortcut", None) is None
           and all(k in missing for k in own if k.startswith(name + "."))]
    unexplained = sorted(k for k in missing if not any(k.startswith(n + ".") for n in new))
    if unexplained:
        raise ValueError(f"{len(unexplained)} of the deeper network's tensors are not in a new "
                         f"block that can start as the identity, first {unexplained[0]}")
    model.load_state_dict(state, strict=False)
    for name in new:
        model.get_submodule(name).zero_init_last()
    return new
