"""Input noise for the student: RandAugment (albumentations ops), pad-and-crop, horizontal flip.

Images are numpy ``uint8`` arrays ``[H, W, C]`` with ``C`` in {1, 3}; every transform returns the
same shape and dtype. All randomness (which ops, their signs, crop offsets, flips) is drawn from
the ``np.random.Generator`` passed by the caller; every albumentations op is built with a fixed
value and ``p=1``, so albumentations' own random state never affects the output.

Magnitude scale ``M`` in [0, 30] (torchvision's 31 bins, default 9). An op's value at ``M`` is
``at0 + (at30 - at0) * M / 30`` (Posterize rounds: ``8 - round(M / 30 * 4)``); signed ops get a
random sign per application. ``OP_TABLE`` holds these numbers and ``OP_IMPLEMENTATION`` what each
op does; docs/noise.md's op table is generated from the two (tools/make_docs.py).

"blend a -> b by f" is ``a + f * (b - a)``; the enhancement factor ``1 + v`` lies in [0.1, 1.9].
Results match PIL within 1 level (Equalize: within a few). Geometric ops use nearest
interpolation (torchvision's default) and fill with 0. Sharpness keeps the 1-pixel border, like PIL.
On 1-channel images ``Color`` is excluded from the policy's pool (saturation needs colour).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

MAX_MAGNITUDE = 30.0


class OpRange(NamedTuple):
    """Linear magnitude mapping of one op: value(M) = at0 + (at30 - at0) * M / 30."""
    at0: float
    at30: float
    signed: bool


# what each op does, as the albumentations op built with the fixed value v
OP_IMPLEMENTATION = {
    "Identity": "nothing",
    "AutoContrast": '`AutoContrast(method="pil")`: per-channel min..max -> 0..255',
    "Equalize": '`Equalize(mode="pil")`: per-channel histogram equalisation',
    "Rotate": "`Affine(rotate=v)`: v degrees about the centre",
    "Solarize": "`Solarize(threshold_range=v/255)`: pixels >= v -> 255 - pixel",
    "Color": "`ColorJitter(saturation=1+v)`: blend gray -> img (PIL Color)",
    "Posterize": "`Posterize(num_bits=v)`: keep the v high bits (8 = identity)",
    "Contrast": "`ColorJitter(contrast=1+v)`: blend gray mean -> img (PIL Contrast)",
    "Brightness": "`ColorJitter(brightness=1+v)`: img * (1+v) (PIL Brightness)",
    "Sharpness": "PIL Sharpness, f = 1+v: blend SMOOTH(img) -> img by f; f >= 1 is "
                 "`Sharpen(alpha=(f-1)/13, lightness=1)` (PIL's kernel), f < 1 (a blur) "
                 "`cv2.filter2D`",
    "ShearX": "`Affine(shear=degrees(atan(v)))` along x, about the centre",
    "ShearY": "`Affine(shear=degrees(atan(v)))` along y, about the centre",
    "TranslateX": "`Affine(translate_px=int(v * W))`: v of the width",
    "TranslateY": "`Affine(translate_px=int(v * H))`: v of the height",
}


OP_TABLE: dict[str, OpRange | None] = {
    "Identity": None,
    "AutoContrast": None,
    "Equalize": None,
    "Rotate": OpRange(0.0, 30.0, True),
    "Solarize": OpRange(255.0, 0.0, False),
    "Color": OpRange(0.0, 0.9, True),
    "Posterize": OpRange(8.0, 4.0, False),
    "Contrast": OpRange(0.0, 0.9, True),
    "Brightness": OpRange(0.0, 0.9, True),
    "Sharpness": OpRange(0.0, 0.9, True),
    "ShearX": OpRange(0.0, 0.3, True),
    "ShearY": OpRange(0.0, 0.3, True),
    "TranslateX": OpRange(0.0, 0.45, True),
    "TranslateY": OpRange(0.0, 0.45, True),
}


def op_table_markdown() -> str:
    """docs/noise.md's op table, from OP_TABLE and OP_IMPLEMENTATION."""
    lines = ["| op | at M = 0 | at M = 30 | signed | what it does |", "|---|---|---|---|---|"]
    for name, r in OP_TABLE.items():
        ends = ["-", "-", "-"] if r is None else [f"{r.at0:g}", f"{r.at30:g}",
                                                   "yes" if r.signed else "no"]
        lines.append(f"| {name} | {' | '.join(ends)} | {OP_IMPLEMENTATION[name]} |")
    return "\n".join(lines)


RANDAUGMENT_OPS: tuple[str, ...] = tuple(OP_TABLE)
COLOR_ONLY_OPS: frozenset[str] = frozenset({"Color"})  # excluded from the pool when channels == 1
_TRANSLATE = ("TranslateX", "TranslateY")
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0  # PIL ImageFilter.SMOOTH
_DELTA = np.pad(np.ones((1, 1), np.float32), 1)  # identity 3x3 kernel
Image = np.ndarray
Noise = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def op_value(name: str, magnitude: float) -> float:
    """Unsigned value of op ``name`` at ``magnitude`` per ``OP_TABLE`` (0.0 for magnitude-free ops)."""
    _check_magnitude(magnitude)
    spec = OP_TABLE[_check_op(name)]
    if spec is None:
        return 0.0
    if name == "Posterize":
        return float(8 - round(magnitude / MAX_MAGNITUDE * 4))
    value = spec.at0 + (spec.at30 - spec.at0) * magnitude / MAX_MAGNITUDE
    return float(np.clip(value, min(spec.at0, spec.at30), max(spec.at0, spec.at30)))


def _signed(name: str) -> bool:
    spec = OP_TABLE[name]
    return spec is not None and spec.signed


def _check_magnitude(magnitude: float) -> None:
    if not (0.0 <= float(magnitude) <= MAX_MAGNITUDE):
        raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude}")


def _check_op(name: str) -> str:
    if name not in OP_TABLE:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(RANDAUGMENT_OPS)}")
    return name


def _check_image(image: Any) -> None:
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
    if not ok or image.shape[2] not in (1, 3):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 array [H, W, C] with C in (1, 3), got {desc}")


class _AlbOp:
    """Runs a fixed-value albumentations op; replays its params per shape (they are deterministic)."""

    def __init__(self, transform: A.BasicTransform) -> None:
        self.transform = transform
        self._params: dict[tuple[int, ...], dict[str, Any]] = {}

    def __call__(self, image: Image) -> Image:
        params = self._params.get(image.shape)
        if params is None:
            out = self.transform(image=image)["image"]
            self._params[image.shape] = dict(self.transform.params)
            return out
        return self.transform.apply_with_params(params, image=image)["image"]

    def __getstate__(self) -> dict[str, Any]:
        return {"transform": self.transform, "_params": {}}


class _Sharpness:
    """PIL ImageEnhance.Sharpness: blend(SMOOTH(img), img, factor), keeping the 1-pixel border like PIL."""
    def __init__(self, factor: float) -> None:
        a = (factor - 1.0) / 13.0  # Sharpen's kernel (1-a)*delta + a*[-1.. 9 ..-1] is PIL's for a >= 0
        sharpen = A.Sharpen(alpha=(a, a), lightness=(1.0, 1.0), method="kernel", p=1.0) if a >= 0 else None
        self.sharpen = _AlbOp(sharpen) if sharpen else None
        self.kernel = (factor * _DELTA + (1.0 - factor) * _SMOOTH).astype(np.float32)  # a < 0 (blur): cv2

    def __call__(self, image: Image) -> Image:
        out = self.sharpen(image) if self.sharpen else cv2.filter2D(image, -1, self.kernel)
        out = out.reshape(image.shape)
        out[0], out[-1], out[:, 0], out[:, -1] = image[0], image[-1], image[:, 0], image[:, -1]
        return out


def _affine(**kwargs: Any) -> _AlbOp:
    return _AlbOp(A.Affine(interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0, **kwargs))


def _jitter(brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0) -> _AlbOp:
    b, c, s = (float(x) for x in (brightness, contrast, saturation))
    return _AlbOp(A.ColorJitter(brightness=(b, b), contrast=(c, c), saturation=(s, s), hue=(0.0, 0.0), p=1.0))


def build_op(name: str, value: float, shape: tuple[int, ...] | None = None) -> Callable[[Image], Image] | None:
    """The deterministic op for a plan entry (``None`` = identity). Translate ops need ``shape``."""
    _check_op(name)
    if name == "Identity":
        return None
    if name == "AutoContrast":
        return _AlbOp(A.AutoContrast(method="pil", p=1.0))
    if name == "Equalize":
        return _AlbOp(A.Equalize(mode="pil", by_channels=True, p=1.0))
    if name == "Rotate":
        return _affine(rotate=(value, value))
    if name in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(value))
        axis = "x" if name == "ShearX" else "y"
        return _affine(shear={"x": (0.0, 0.0), "y": (0.0, 0.0), axis: (deg, deg)})
    if name in _TRANSLATE:
        if shape is None:
            raise ValueError(f"{name} needs the image shape")
        px = int(value * (shape[1] if name == "TranslateX" else shape[0]))  # truncation, like torchvision
        axis = "x" if name == "TranslateX" else "y"
        return _affine(translate_px={"x": (0, 0), "y": (0, 0), axis: (px, px)})
    if name == "Brightness":
        return _jitter(brightness=1.0 + value)
    if name == "Color":
        return _jitter(saturation=1.0 + value)
    if name == "Contrast":
        return _jitter(contrast=1.0 + value)
    if name == "Sharpness":
        return _Sharpness(1.0 + value)
    if name == "Posterize":
        bits = int(round(value))
        if not 1 <= bits <= 8:
            raise ValueError(f"Posterize bits must be in [1, 8], got {value}")
        return None if bits == 8 else _AlbOp(A.Posterize(num_bits=bits, p=1.0))
    # Solarize
    t = float(np.clip(value / 255.0, 0.0, 1.0))
    return _AlbOp(A.Solarize(threshold_range=(t, t), p=1.0))


class RandAugment:
    """N ops drawn uniformly (with replacement, like torchvision) per image, each at magnitude M."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, ops: Sequence[str] | None = None,
                 channels: int = 3) -> None:
        if int(num_ops) != num_ops or num_ops < 0:
            raise ValueError(f"num_ops must be an integer in [0, inf), got {num_ops}")
        _check_magnitude(magnitude)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        names = [_check_op(n) for n in (RANDAUGMENT_OPS if ops is None else ops)]
        if channels == 1:
            names = [n for n in names if n not in COLOR_ONLY_OPS]
        if not names:
            raise ValueError(f"ops must name at least one op usable with channels={channels}")
        self.num_ops, self.magnitude, self.channels = int(num_ops), float(magnitude), channels
        self.ops: tuple[str, ...] = tuple(names)
        self._values = {n: op_value(n, self.magnitude) for n in self.ops}
        self._init_cache()

    def _init_cache(self) -> None:
        self._cache: dict[tuple[Any, ...], Callable[[Image], Image] | None] = {}
        for name in set(self.ops) - set(_TRANSLATE):  # translate is cached per image size, lazily
            v = self._values[name]
            for value in {v, -v} if _signed(name) else {v}:
                self._cache[(name, value)] = build_op(name, value)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def sample(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The plan: ``num_ops`` (op_name, signed_value) pairs; values as in ``OP_TABLE``."""
        idx = rng.integers(0, len(self.ops), size=self.num_ops)
        negative = rng.random(self.num_ops) < 0.5
        plan = []
        for i, neg in zip(idx, negative):
            name = self.ops[int(i)]
            value = self._values[name]
            plan.append((name, -value if neg and value and _signed(name) else value))
        return plan

    def _op(self, name: str, value: float, shape: tuple[int, ...]) -> Callable[[Image], Image] | None:
        key = (name, value, shape[:2]) if name in _TRANSLATE else (name, value)
        if key not in self._cache:
            self._cache[key] = build_op(name, value, shape)
        return self._cache[key]

    def apply(self, image: np.ndarray, plan: list[tuple[str, float]]) -> np.ndarray:
        """Apply a plan (from ``sample``) in order; uint8 [H, W, C] in and out."""
        _check_image(image)
        out = image
        for name, value in plan:
            op = self._op(name, float(value), image.shape)
            if op is not None:
                out = op(out)
                if out.ndim == 2:
                    out = out[..., None]
        return out if out is not image else image.copy()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng))

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude:g}, ops={list(self.ops)})"


class StudentNoise:
    """The student's input noise: pad-and-random-crop, horizontal flip, then RandAugment."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, flip: bool = True, crop_padding: int = 0,
                 channels: int = 3, ops: Sequence[str] | None = None) -> None:
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer in [0, inf), got {crop_padding}")
        self.flip, self.crop_padding = bool(flip), int(crop_padding)
        self.randaugment = RandAugment(num_ops=num_ops, magnitude=magnitude, ops=ops, channels=channels)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_image(image)
        h, w, _ = image.shape
        if self.crop_padding:
            p = self.crop_padding
            if p < min(h, w):  # cv2's BORDER_REFLECT_101 == numpy "reflect" == torchvision "reflect", faster
                padded = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_REFLECT_101).reshape(h + 2 * p, w + 2 * p, -1)
            else:
                padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
            y, x = (int(o) for o in rng.integers(0, 2 * p + 1, size=2))
            image = padded[y : y + h, x : x + w]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return self.randaugment(np.ascontiguousarray(image), rng)

    def __repr__(self) -> str:
        return f"StudentNoise(flip={self.flip}, crop_padding={self.crop_padding}, {self.randaugment!r})"


def build_noise(
    enabled: bool, num_ops: int, magnitude: float, flip: bool, crop_padding: int, channels: int
) -> Noise | None:
    """The student's noise transform, or ``None`` when disabled (callers treat ``None`` as identity)."""
    if not enabled:
        return None
    return StudentNoise(num_ops=num_ops, magnitude=magnitude, flip=flip, crop_padding=crop_padding, channels=channels)
