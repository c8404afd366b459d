"""Robustness corruptions made on the fly (ImageNet-C style, Hendrycks & Dietterich 2019).

Images are numpy ``uint8`` arrays ``[N, H, W, C]`` with ``C`` in {1, 3}; ``corrupt`` returns the
same shape and dtype. Nine corruptions at five severities (1 = mild .. 5 = severe); each one is an
albumentations op built with a FIXED value per severity (ranges ``(v, v)``, ``p=1``), so the
severity alone sets the strength. ``VALUES`` is the single source of these numbers:

==============  ===============================  ========================  ==========================
corruption      op, built with the value v       v at severity 1 .. 5      what it does
==============  ===============================  ========================  ==========================
gaussian_noise  GaussNoise(std_range=(v, v))     .08 .12 .18 .26 .38       x + N(0, (255 v)^2) per
                                                                           pixel and channel
shot_noise      ShotNoise(scale_range=(v, v))    1/60 1/25 1/12 1/5 1/3    Poisson(x / v) * v, x in
                                                                           linear light (x^2.2)
gaussian_blur   GaussianBlur(sigma_limit=(v,v))  .4 .6 .7 .8 1 px (*s)     Gaussian blur of sigma v
motion_blur     MotionBlur(blur_limit=(v, v))    3 5 7 9 11 px (*s, odd)   average along a centred
                                                                           line of v px, seeded angle
contrast        ColorJitter(contrast=(v, v))     .4 .3 .2 .1 .05           mean + v * (x - mean)
brightness      RandomBrightnessContrast(        .1 .2 .3 .4 .5            x + 255 v
                brightness_limit=(v, v))
jpeg            ImageCompression(quality_range)  25 18 15 10 7             JPEG at quality v
pixelate        A.Lambda(pixelate, scale=v)      .6 .5 .4 .3 .25           round(v * side) blocks per
                                                                           side, pixel -> block mean
elastic         ElasticTransform(alpha=v,        7.5 11 15 22 30 (*s^2)    seeded smooth displacement
                sigma=3 px (*s))                                           field, RMS per axis ~.5
                                                                           .75 1 1.5 2 px at 32 px
==============  ===============================  ========================  ==========================

Values without a size mark are ImageNet-C's (they do not depend on the image size). Values in
pixels are for 32-px images, the scale of this project's data sets (gaussian_blur: CIFAR-10-C's
sigmas; motion_blur and elastic: chosen here). An image of side ``S`` multiplies them by
``s = max(1, S / 32)`` (elastic's alpha by ``s^2``: its displacement ~ alpha / sigma grows like
``s``); smaller images keep the 32-px values. ShotNoise is albumentations' photon noise, computed
in linear light (ImageNet-C's is on the gamma-encoded values); brightness adds to every channel
(ImageNet-C adds to HSV's value). Pixelate is not albumentations' Downscale (INTER_AREA down,
nearest up): when ``v * S`` is not an integer the area footprints and the nearest blocks disagree,
and ``v = 0.6`` changes an image more than ``v = 0.5``. Here each pixel gets the exact mean of its
block (the blocks of ``cv2.INTER_NEAREST_EXACT`` upsampling), so the change grows with the block.

Randomness (noise draws, motion angles, elastic fields) comes from ``seed``: image ``i`` of a call
uses the stream ``SeedSequence([seed, offset + i])``, the same at every severity, so an image's
corruption does not depend on the other images in the batch and severities share their draws.
"""
from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A
import cv2
import numpy as np

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 32  # pixel values in VALUES are for images of this side

VALUES: dict[str, tuple[float, ...]] = {  # the severity's value v, severity 1..5
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (1 / 60, 1 / 25, 1 / 12, 1 / 5, 1 / 3),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "motion_blur": (3, 5, 7, 9, 11),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "elastic": (7.5, 11.0, 15.0, 22.0, 30.0),
}
CORRUPTIONS: tuple[str, ...] = tuple(VALUES)
ELASTIC_SIGMA = 3.0  # px at the reference side
_RANDOM = frozenset({"gaussian_noise", "shot_noise", "motion_blur", "elastic"})
SHORT = {"gaussian_noise": "gauss", "shot_noise": "shot", "gaussian_blur": "blur",
         "motion_blur": "motion", "brightness": "bright", "pixelate": "pixel"}  # table columns


def _check(name: str, severity: int) -> None:
    if name not in VALUES:
        raise ValueError(f"unknown corruption {name!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity!r}")


def _odd(x: float) -> int:
    k = max(3, round(x))
    return k if k % 2 else k + 1


def corruption_params(name: str, severity: int, side: int = REFERENCE_SIDE) -> tuple[str, dict[str, Any]]:
    """(albumentations op name, its keyword arguments) of `name` at `severity` for images of
    `side` pixels; pixel values scale by s = max(1, side / 32) (see the module's table)."""
    _check(name, severity)
    v = VALUES[name][severity - 1]
    s = max(1.0, side / REFERENCE_SIDE)
    if name == "gaussian_noise":
        return "GaussNoise", {"std_range": (v, v), "mean_range": (0.0, 0.0), "per_channel": True}
    if name == "shot_noise":
        return "ShotNoise", {"scale_range": (v, v)}
    if name == "gaussian_blur":
        return "GaussianBlur", {"blur_limit": 0, "sigma_limit": (v * s, v * s)}
    if name == "motion_blur":
        k = _odd(v * s)
        return "MotionBlur", {"blur_limit": (k, k), "angle_range": (0.0, 180.0),
                              "direction_range": (0.0, 0.0), "allow_shifted": False}
    if name == "contrast":
        return "ColorJitter", {"brightness": (1.0, 1.0), "contrast": (v, v),
                               "saturation": (1.0, 1.0), "hue": (0.0, 0.0)}
    if name == "brightness":
        return "RandomBrightnessContrast", {"brightness_limit": (v, v), "contrast_limit": (0.0, 0.0),
                                            "brightness_by_max": True}
    if name == "jpeg":
        return "ImageCompression", {"compression_type": "jpeg", "quality_range": (int(v), int(v))}
    if name == "pixelate":
        return "pixelate", {"scale": v}  # this module's `pixelate`, run as an A.Lambda
    # elastic
    return "ElasticTransform", {"alpha": v * s * s, "sigma": ELASTIC_SIGMA * s,
                                "noise_distribution": "uniform", "approximate": False,
                                "interpolation": cv2.INTER_LINEAR,
                                "border_mode": cv2.BORDER_REFLECT_101}


# (corruption, severity) -> (albumentations op, its arguments) at the reference side of 32 px
CORRUPTION_TABLE: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {
    (name, sev): corruption_params(name, sev) for name in CORRUPTIONS for sev in SEVERITIES}


def pixelate(image: np.ndarray, scale: float, **_: Any) -> np.ndarray:
    """uint8 [..., H, W, C] in round(scale * H) x round(scale * W) blocks, each pixel replaced by
    the mean of its block; pixel y is in block floor((y + 0.5) * h / H) (nearest-exact)."""
    height, width = image.shape[-3:-1]
    rows, cols = (np.minimum(((np.arange(n) + 0.5) * max(1, round(n * scale)) / n).astype(int),
                             max(1, round(n * scale)) - 1) for n in (height, width))
    starts = [np.flatnonzero(np.diff(b, prepend=-1)) for b in (rows, cols)]  # first pixel per block
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float64), starts[0], axis=-3),
                           starts[1], axis=-2)  # [..., h, w, C]
    counts = np.diff(np.append(starts[0], height))[:, None] * np.diff(np.append(starts[1], width))
    means = np.round(sums / counts[:, :, None])
    return means[..., rows, :, :][..., cols, :].astype(np.uint8)


def build_corruption(name: str, severity: int, side: int = REFERENCE_SIDE) -> A.BasicTransform:
    """The albumentations op of `name` at `severity` (p = 1) for images of `side` pixels."""
    op, kwargs = corruption_params(name, severity, side)
    if op == "pixelate":
        return A.Lambda(image=partial(pixelate, **kwargs), name="Pixelate", p=1.0)
    return getattr(A, op)(p=1.0, **kwargs)


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index`'s random stream: SeedSequence([seed, index])."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0,
            offset: int = 0) -> np.ndarray:
    """`images` uint8 [N, H, W, C] (or one [H, W, C]) corrupted by `name` at `severity` (1..5).

    `offset` is the index of images[0] in the whole set, so that corrupting a set chunk by chunk
    gives the same images as corrupting it at once."""
    _check(name, severity)
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images  # [N, H, W, C]
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, H, W, C] with C in (1, 3), got "
                         f"{batch.dtype} {images.shape}")
    transform = build_corruption(name, severity, min(batch.shape[1:3]))
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        if name in _RANDOM:
            transform.set_random_seed(image_seed(seed, offset + i))
        out[i] = transform(image=np.ascontiguousarray(image))["image"].reshape(image.shape)
    return out[0] if single else out


def corruption_errors(errors: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]
                      ) -> tuple[dict[str, float | None], float | None]:
    """Per corruption c, from top-1 errors E[c][severity]: CE_c = sum_s E(model, c, s) /
    sum_s E(baseline, c, s) (None where the baseline makes no error), and mCE = mean_c CE_c."""
    ce: dict[str, float | None] = {}
    for c, by_severity in errors.items():
        base = sum(baseline[c].values())
        ce[c] = sum(by_severity.values()) / base if base > 0 else None
    known = [v for v in ce.values() if v is not None]
    return ce, (sum(known) / len(known) if known else None)


def robustness_table(result: dict[str, Any]) -> str:
    """CE per corruption and mCE in % (the baseline = 100), one row per phase of
    `result["phases"]` (name -> {"clean_error", "ce": {corruption: CE}, "mce"})."""
    short = [SHORT.get(c, c) for c in CORRUPTIONS]
    header = ["phase", "clean err", *short, "mCE"]
    widths = [max(7, len(h)) for h in header]

    def fmt(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"

    rows = [header, *([m, fmt(r["clean_error"]), *(fmt(r["ce"][c]) for c in CORRUPTIONS),
                       fmt(r["mce"])] for m, r in result["phases"].items())]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in
                                                             zip(row[1:], widths[1:])])
                     for row in rows)
