"""Small residual CNNs for tiny inputs (8x8 digits, 28x28 MNIST-like, 32x32).

Conv3x3 stem with ``width`` channels, 3 stages of widths (w, 2w, 4w) with ``depth``
pre-activation basic blocks each, stride 2 at stages 2 and 3 (8x8 -> 4x4 -> 2x2),
BN-ReLU, global average pool, dropout, linear.

Variants (params at 10 classes): cnn_tiny (w=16, d=1, 78k) < cnn_small (w=32, d=1, 308k)
< cnn_medium (w=32, d=2, 696k) < cnn_large (w=64, d=3, 4.3M); ``width``/``depth`` override.
On 28x28+ inputs pass ``stem_stride=2`` (28 -> 14 -> 7 -> 4): about 4x less compute.
"""

from __future__ import annotations

from typing import Any

from ._registry import register_model
from .preact import PreActResNet


def _cnn(width: int, depth: int, **kwargs: Any) -> PreActResNet:
    """Widths (w, 2w, 4w), ``depth`` blocks per stage, stem of ``width`` channels."""
    return PreActResNet(
        widths=(width, 2 * width, 4 * width), depth=depth, stem_width=width, **kwargs
    )


@register_model
def cnn_tiny(width: int = 16, depth: int = 1, **kwargs: Any) -> PreActResNet:
    return _cnn(width, depth, **kwargs)


@register_model
def cnn_small(width: int = 32, depth: int = 1, **kwargs: Any) -> PreActResNet:
    return _cnn(width, depth, **kwargs)


@register_model
def cnn_medium(width: int = 32, depth: int = 2, **kwargs: Any) -> PreActResNet:
    return _cnn(width, depth, **kwargs)


@register_model
def cnn_large(width: int = 64, depth: int = 3, **kwargs: Any) -> PreActResNet:
    return _cnn(width, depth, **kwargs)
