"""Input noise on whole batches of tensors, on any device: `noise.backend = "torch"`.

The same policy as `noise.StudentNoise` (reflect pad-and-crop, horizontal flip, then RandAugment
with ``num_ops`` ops drawn with replacement from the same pool, on the same ``OP_TABLE`` scale),
but each sample's random parameters are tensors and every op runs on the whole batch at once, so
the noise runs where the batch is: on the GPU when training on one, which takes augmentation off
the CPU DataLoader workers (the usual bottleneck of semi-supervised training on a GPU).

Each of the ``num_ops`` positions computes every op in the pool on the whole batch and keeps, per
sample, the one drawn (``torch.where``): no data-dependent indexing, so no host-device sync. The
geometric ops (Rotate, ShearX/Y, TranslateX/Y) are one affine resampling (nearest, zero fill).
Values are rounded to whole levels after each op, as with uint8 images, so each op matches PIL
within a level or so, like the albumentations path. The random draws come from a torch generator,
so the two backends give different (each deterministic) images for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .config import NoiseConfig
from .data.datasets import device_constant
from .noise import _SMOOTH, OP_TABLE, Noise, RandAugment, build_noise, op_value

_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


class BatchNoise:
    """`noise(x uint8 [B, C, H, W], generator) -> uint8 [B, C, H, W]`, on x's device."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, flip: bool = True,
                 crop_padding: int = 0, channels: int = 3,
                 ops: Sequence[str] | None = None) -> None:
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer in [0, inf), got {crop_padding}")
        policy = RandAugment(num_ops, magnitude, ops, channels)  # validates the same way
        self.num_ops, self.ops, self.channels = policy.num_ops, policy.ops, channels
        self.flip, self.crop_padding = bool(flip), int(crop_padding)
        # tuples: device_constant makes each once per device (it caches on its arguments)
        self.values = tuple(op_value(n, magnitude) for n in self.ops)
        self.signed = tuple(OP_TABLE[n] is not None and OP_TABLE[n].signed for n in self.ops)
        self.geometric = tuple(k for k, n in enumerate(self.ops) if n in _GEOMETRIC)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"batch noise takes uint8 [B, {self.channels}, H, W], got "
                             f"{x.dtype} {list(x.shape)}")
        b, dev = len(x), x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=dev)

        y = x.float()  # [B, C, H, W], whole levels 0..255
        if self.crop_padding:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, b), generator=generator,
                                    device=dev)
            y = pad_crop(y, self.crop_padding, offsets[0], offsets[1])
        if self.flip:
            y = torch.where((rand(b) < 0.5).view(-1, 1, 1, 1), y.flip(-1), y)
        values = device_constant(self.values, dev)
        signed = device_constant(self.signed, dev, torch.bool)
        for _ in range(self.num_ops):
            which = torch.randint(0, len(self.ops), (b,), generator=generator, device=dev)
            sign = torch.where(signed[which] & (rand(b) < 0.5), -1.0, 1.0)
            y = self.apply(y, which, values[which] * sign)
        return y.to(torch.uint8)

    def apply(self, y: torch.Tensor, which: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Sample i gets op `self.ops[which[i]]` at signed `value[i]`; y float [B, C, H, W]."""
        out, geometric = y, self.geometric
        if geometric:
            moved = affine(y, [self.ops[k] for k in geometric], which, value, geometric)
            out = torch.where(_member(which, geometric), moved, out)
        for k, name in enumerate(self.ops):
            if name in _GEOMETRIC or name == "Identity":
                continue
            op = _COLOR_OPS[name](y, value.view(-1, 1, 1, 1))
            out = torch.where((which == k).view(-1, 1, 1, 1), op.round().clamp(0, 255), out)
        return out


def _member(which: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(which, device_constant(ks, which.device, torch.long)).view(
        -1, 1, 1, 1)


def pad_crop(y: torch.Tensor, p: int, oy: torch.Tensor, ox: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by p, then crop [H, W] at per-sample offsets (oy, ox) in [0, 2p]."""
    b, c, h, w = y.shape
    padded = F.pad(y, (p, p, p, p), mode="reflect")  # [B, C, H + 2p, W + 2p]
    rows = (oy.view(-1, 1) + torch.arange(h, device=y.device)).view(b, 1, h, 1)
    cols = (ox.view(-1, 1) + torch.arange(w, device=y.device)).view(b, 1, 1, w)
    padded = padded.gather(2, rows.expand(b, c, h, w + 2 * p))  # [B, C, H, W + 2p]
    return padded.gather(3, cols.expand(b, c, h, w))


def affine(y: torch.Tensor, names: list[str], which: torch.Tensor, value: torch.Tensor,
           ks: Sequence[int]) -> torch.Tensor:
    """Every sample resampled by its own geometric op (identity for the others), about the
    centre, nearest neighbour, zero fill. Matrices map output pixels to input pixels."""
    _, _, h, w = y.shape
    zero = torch.zeros_like(value)
    a, sx, sy, tx, ty = zero, zero, zero, zero, zero  # angle (rad), shears, shifts (pixels)
    for name, k in zip(names, ks, strict=True):
        v = torch.where(which == k, value, zero)
        if name == "Rotate":
            a = a + v * (math.pi / 180)
        elif name == "ShearX":
            sx = sx + v
        elif name == "ShearY":
            sy = sy + v
        elif name == "TranslateX":
            tx = tx + torch.trunc(v * w)
        else:
            ty = ty + torch.trunc(v * h)
    cos, sin = torch.cos(a), torch.sin(a)
    # the pixel-space map [[cos, -sin + sx], [sin + sy, cos]] (one op per sample: a rotation or a
    # shear) and shift -t, in affine_grid's normalized coordinates (x * 2 / W, y * 2 / H)
    m = torch.stack([torch.stack([cos, (sx - sin) * h / w, -tx * 2 / w], -1),
                     torch.stack([(sy + sin) * w / h, cos, -ty * 2 / h], -1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(m, list(y.shape), align_corners=False)
    return F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _gray(y: torch.Tensor) -> torch.Tensor:
    """PIL's L conversion (ITU-R 601-2 luma), [B, 1, H, W]; 1-channel images are their own."""
    if y.shape[1] == 1:
        return y
    return (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]).round()


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return a + f * (b - a)  # PIL ImageEnhance: f = 0 gives a, f = 1 gives b


def _autocontrast(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    lo, hi = y.amin((2, 3), keepdim=True), y.amax((2, 3), keepdim=True)
    # floor, as PIL's int()
    return torch.where(hi > lo, torch.floor((y - lo) * 255.0 / (hi - lo).clamp_min(1)), y)


def _equalize(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize per channel: lut[i] = (step // 2 + #pixels below i) // step."""
    b, c, h, w = y.shape
    levels = y.long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=y.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float32))
    last = (torch.arange(256, device=y.device) * (hist > 0)).argmax(1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last), 255, rounding_mode="floor")  # [B*C, 1]
    below = hist.cumsum(1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp_min(1),
                    rounding_mode="floor").clamp_max(255)
    out = lut.gather(1, levels).view(b, c, h, w)
    return torch.where(step.view(b, c, 1, 1) > 0, out, y)


_SMOOTH_ROWS = tuple(map(tuple, _SMOOTH.tolist()))  # hashable, for device_constant


def _sharpness(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    c = y.shape[1]
    kernel = device_constant(_SMOOTH_ROWS, y.device).expand(c, 1, 3, 3)
    smooth = F.conv2d(y, kernel, groups=c).round()  # [B, C, H - 2, W - 2]
    out = y.clone()
    out[:, :, 1:-1, 1:-1] = _blend(smooth, y[:, :, 1:-1, 1:-1], 1 + v)  # the border is kept
    return out


def _posterize(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q = torch.exp2(8 - v.clamp(1, 8))  # keep v high bits (others' values are clamped, unused)
    return torch.floor(y / q) * q


_COLOR_OPS = {
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Brightness": lambda y, v: y * (1 + v),
    "Color": lambda y, v: _blend(_gray(y), y, 1 + v),
    "Contrast": lambda y, v: _blend(_gray(y).mean((1, 2, 3), keepdim=True).round(), y, 1 + v),
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": lambda y, v: torch.where(y >= v, 255 - y, y),
}


def build_batch_noise(enabled: bool, num_ops: int, magnitude: float, flip: bool,
                      crop_padding: int, channels: int) -> BatchNoise | None:
    """The student's batched noise, or `None` when disabled."""
    if not enabled:
        return None
    return BatchNoise(num_ops, magnitude, flip, crop_padding, channels)


def build_student_noise(cfg: NoiseConfig, channels: int) -> tuple[Noise | None, BatchNoise | None]:
    """`(per_image, per_batch)`: the student's noise as `noise.backend` places it, per image in
    the datasets (albumentations) or per batch in the training step (torch); the other is `None`,
    and both are `None` when the noise is off."""
    args = (cfg.enabled, cfg.num_ops, cfg.magnitude, cfg.flip, cfg.crop_padding, channels)
    if cfg.backend == "torch":
        return None, build_batch_noise(*args)
    return build_noise(*args), None
