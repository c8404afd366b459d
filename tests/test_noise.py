"""Tests for noisy_student.noise: the student's RandAugment / crop / flip input noise."""

from __future__ import annotations

import os
import pickle
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest

from noisy_student.noise import (
    OP_TABLE,
    RANDAUGMENT_OPS,
    RandAugment,
    StudentNoise,
    build_noise,
    build_op,
    op_value,
)

MAGNITUDE_OPS = [n for n in RANDAUGMENT_OPS if OP_TABLE[n] is not None]
SIGNED_OPS = [n for n in MAGNITUDE_OPS if OP_TABLE[n].signed]
# ops whose value-0 version is exactly the identity (Posterize/Solarize are identity at 8 bits / 255, see below)
ZERO_IS_IDENTITY = ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Color", "Contrast",
                    "Sharpness"]
SHAPES = [(8, 8, 1), (8, 8, 3), (28, 28, 1), (32, 32, 3), (9, 13, 3), (13, 9, 1)]


def textured(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random texture on a gradient, values in [10, 245] (no saturated pixels)."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    grad = np.linspace(40, 200, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    return np.clip(grad + rng.normal(0, 25, (h, w, c)), 10, 245).astype(np.uint8)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_op_names_and_table() -> None:
    assert set(RANDAUGMENT_OPS) == set(OP_TABLE) and len(RANDAUGMENT_OPS) == 14
    assert {"Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
            "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"} == set(RANDAUGMENT_OPS)
    # torchvision's maxima, scaled by M / 30
    for name, at30 in [("Rotate", 30.0), ("ShearX", 0.3), ("ShearY", 0.3), ("TranslateX", 0.45),
                       ("TranslateY", 0.45), ("Brightness", 0.9), ("Color", 0.9), ("Contrast", 0.9),
                       ("Sharpness", 0.9)]:
        assert op_value(name, 30) == pytest.approx(at30)
        assert op_value(name, 9) == pytest.approx(at30 * 9 / 30)
        assert op_value(name, 0) == 0.0
    for name in ("Identity", "AutoContrast", "Equalize"):
        assert op_value(name, 17) == 0.0


@pytest.mark.parametrize(
    ("magnitude", "bits", "threshold"),
    # bits = 8 - round(M/30*4), threshold = 255 * (1 - M/30), computed by hand
    [(0, 8, 255.0), (9, 7, 178.5), (15, 6, 127.5), (20, 5, 85.0), (26, 5, 34.0), (27, 4, 25.5), (30, 4, 0.0)],
)
def test_posterize_solarize_follow_table(magnitude: float, bits: int, threshold: float) -> None:
    assert op_value("Posterize", magnitude) == bits
    assert op_value("Solarize", magnitude) == pytest.approx(threshold)
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    ra = RandAugment(num_ops=1, magnitude=magnitude, ops=["Posterize", "Solarize"], channels=1)
    post = ra.apply(ramp, [("Posterize", op_value("Posterize", magnitude))])
    assert np.array_equal(post, ramp & np.uint8((0xFF << (8 - bits)) & 0xFF))
    assert len(np.unique(post)) == 2**bits
    sol = ra.apply(ramp, [("Solarize", op_value("Solarize", magnitude))])
    assert np.array_equal(sol, np.where(ramp >= threshold, 255 - ramp, ramp))


def test_policy_changes_images() -> None:
    img = textured((32, 32, 3))
    ra = RandAugment(num_ops=2, magnitude=9)
    changed = [not np.array_equal(ra(img, np.random.default_rng(i)), img) for i in range(100)]
    assert sum(changed) >= 90


@pytest.mark.parametrize("shape", SHAPES)
def test_every_op_keeps_dtype_and_shape(shape: tuple[int, int, int]) -> None:
    img = textured(shape)
    ra = RandAugment(channels=shape[2])
    for name in RANDAUGMENT_OPS:
        for m in (0, 9, 30):
            v = op_value(name, m)
            for value in (v, -v) if name in SIGNED_OPS else (v,):
                out = ra.apply(img, [(name, value)])
                assert out.dtype == np.uint8 and out.shape == shape, (name, value)
    noise = StudentNoise(num_ops=3, magnitude=30, crop_padding=2, channels=shape[2])
    for i in range(20):
        out = noise(img, np.random.default_rng(i))
        assert out.dtype == np.uint8 and out.shape == shape


def test_apply_does_not_modify_or_alias_input() -> None:
    img = textured((8, 8, 3))
    before = img.copy()
    out = RandAugment(num_ops=0).apply(img, [])
    out[:] = 0
    assert np.array_equal(img, before)
    RandAugment(num_ops=4, magnitude=30)(img, np.random.default_rng(0))
    assert np.array_equal(img, before)


@pytest.mark.parametrize("num_ops", [0, 1, 2, 5])
def test_sample_length_and_call_is_apply_of_sample(num_ops: int) -> None:
    ra = RandAugment(num_ops=num_ops, magnitude=12)
    img = textured((16, 16, 3))
    for seed in range(10):
        plan = ra.sample(np.random.default_rng(seed))
        assert len(plan) == num_ops
        for name, value in plan:
            assert name in ra.ops
            assert abs(value) == pytest.approx(op_value(name, 12))
        assert np.array_equal(ra.apply(img, plan), ra(img, np.random.default_rng(seed)))


def test_signs_are_random_per_application() -> None:
    ra = RandAugment(num_ops=2, magnitude=9, ops=["Rotate"])
    values = {v for s in range(50) for _, v in ra.sample(np.random.default_rng(s))}
    assert values == {9.0, -9.0}


def test_ops_drawn_uniformly_with_replacement() -> None:
    ra = RandAugment(num_ops=3, magnitude=9)
    counts = {n: 0 for n in RANDAUGMENT_OPS}
    repeats = 0
    for s in range(1000):
        names = [n for n, _ in ra.sample(np.random.default_rng(s))]
        repeats += len(set(names)) < len(names)
        for n in names:
            counts[n] += 1
    assert min(counts.values()) > 3000 / 14 * 0.7 and max(counts.values()) < 3000 / 14 * 1.3
    assert repeats > 0


def test_same_seed_same_output_different_seeds_differ() -> None:
    img = textured((28, 28, 3))
    noise = StudentNoise(num_ops=2, magnitude=9, crop_padding=4)
    a = [noise(img, np.random.default_rng([7, 1, i])) for i in range(32)]
    # albumentations' / python's / numpy's global random state must not matter
    random.seed(123)
    np.random.seed(456)
    b = [noise(img, np.random.default_rng([7, 1, i])) for i in range(32)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = [noise(img, np.random.default_rng([8, 1, i])) for i in range(32)]
    assert sum(not np.array_equal(x, y) for x, y in zip(a, c)) >= 28
    assert len({x.tobytes() for x in a}) >= 28


@pytest.mark.parametrize("name", ZERO_IS_IDENTITY)
@pytest.mark.parametrize("channels", [1, 3])
def test_value_zero_is_identity(name: str, channels: int) -> None:
    img = textured((12, 12, channels))
    assert op_value(name, 0) == 0.0
    assert np.array_equal(RandAugment(channels=3).apply(img, [(name, 0.0)]), img)


def test_magnitude_zero_policy_is_identity() -> None:
    img = textured((16, 16, 3))  # no pixel is 255, so Solarize at threshold 255 changes nothing
    ops = ZERO_IS_IDENTITY + ["Identity", "Posterize", "Solarize"]
    ra = RandAugment(num_ops=3, magnitude=0, ops=ops)
    for s in range(40):
        assert np.array_equal(ra(img, np.random.default_rng(s)), img)
    # and M = 0 Solarize still inverts 255, like torchvision's threshold 255
    white = np.full((4, 4, 1), 255, np.uint8)
    assert (ra.apply(white, [("Solarize", op_value("Solarize", 0))]) == 0).all()


@pytest.mark.parametrize("name", SIGNED_OPS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_larger_magnitude_moves_image_further(name: str, sign: float) -> None:
    img = textured((32, 32, 3), seed=3)
    ra = RandAugment()
    small = ra.apply(img, [(name, sign * op_value(name, 5))])
    large = ra.apply(img, [(name, sign * op_value(name, 25))])
    assert 0 < mad(small, img) < mad(large, img)


def test_enhancements_match_pil() -> None:
    Image = pytest.importorskip("PIL.Image")
    ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ra = RandAugment()
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        for value in (-0.81, -0.27, 0.27, 0.81):
            ref = np.asarray(getattr(ImageEnhance, name)(Image.fromarray(img)).enhance(1 + value))
            diff = np.abs(ra.apply(img, [(name, value)]).astype(int) - ref.astype(int))
            assert diff.max() <= 1, (name, value)


def test_geometric_ops() -> None:
    img = textured((20, 20, 1))
    ra = RandAugment(channels=1)
    t = op_value("TranslateX", 9)  # 0.135 -> int(0.135 * 20) = 2 pixels
    out = ra.apply(img, [("TranslateX", t)])
    shifted = np.concatenate([np.zeros((20, 2, 1), np.uint8), img[:, :-2]], axis=1)
    flipped = np.concatenate([img[:, 2:], np.zeros((20, 2, 1), np.uint8)], axis=1)
    assert np.array_equal(out, shifted) or np.array_equal(out, flipped)
    assert not np.array_equal(ra.apply(img, [("TranslateX", t)]), ra.apply(img, [("TranslateX", -t)]))
    out = ra.apply(img, [("TranslateY", 0.45)])  # int(0.45 * 20) = 9 rows, filled with 0
    assert (out[:9] == 0).all() or (out[-9:] == 0).all()
    rot = ra.apply(img, [("Rotate", 30.0)])
    assert rot[0, 0, 0] == 0 and rot[-1, -1, 0] == 0  # rotated-in corners are filled with 0
    # nearest interpolation (torchvision's default) creates no new pixel values
    for name in ("Rotate", "ShearX", "ShearY"):
        out = ra.apply(img, [(name, op_value(name, 21))])
        assert set(np.unique(out)) <= set(np.unique(img)) | {0}, name


def test_bad_arguments_raise() -> None:
    for bad in (-1, -0.01, 30.5, float("nan")):
        with pytest.raises(ValueError, match=r"magnitude.*\[0, 30\]"):
            RandAugment(magnitude=bad)
        with pytest.raises(ValueError, match="magnitude"):
            build_noise(True, 2, bad, True, 0, 3)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=r"num_ops.*\[0"):
            RandAugment(num_ops=bad)
    with pytest.raises(ValueError, match="crop_padding"):
        StudentNoise(crop_padding=-2)
    with pytest.raises(ValueError, match="channels"):
        RandAugment(channels=2)
    with pytest.raises(ValueError, match="Blur") as err:
        RandAugment(ops=["Rotate", "Blur"])
    assert all(name in str(err.value) for name in RANDAUGMENT_OPS)
    with pytest.raises(ValueError, match="unknown op"):
        RandAugment().apply(textured((8, 8, 3)), [("Invert", 0.0)])
    with pytest.raises(ValueError, match="uint8"):
        RandAugment()(textured((8, 8, 3)).astype(np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        RandAugment()(textured((8, 8, 3))[..., 0], np.random.default_rng(0))


def test_magnitude_30_is_valid_for_every_op() -> None:
    img = textured((16, 16, 3))
    ra = RandAugment(num_ops=1, magnitude=30)
    for name in RANDAUGMENT_OPS:
        v = op_value(name, 30)
        for value in (v, -v) if name in SIGNED_OPS else (v,):
            assert ra.apply(img, [(name, value)]).shape == img.shape
    assert (ra.apply(img, [("Solarize", 0.0)]) == 255 - img).all()


def test_one_channel_excludes_color() -> None:
    assert "Color" in RandAugment(channels=3).ops
    gray = RandAugment(num_ops=3, channels=1)
    assert "Color" not in gray.ops and len(gray.ops) == len(RANDAUGMENT_OPS) - 1
    assert all(n != "Color" for s in range(200) for n, _ in gray.sample(np.random.default_rng(s)))
    assert "Color" not in StudentNoise(channels=1).randaugment.ops
    with pytest.raises(ValueError, match="channels=1"):
        RandAugment(ops=["Color"], channels=1)


@pytest.mark.parametrize(("shape", "p"), [((10, 12, 3), 3), ((28, 28, 1), 4), ((4, 5, 1), 5)])
def test_crop_padding_keeps_shape_and_takes_a_window_of_the_reflect_padded_image(shape: tuple, p: int) -> None:
    img = textured(shape)
    h, w, _ = shape
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")
    windows = {(y, x): padded[y:y + h, x:x + w] for y in range(2 * p + 1) for x in range(2 * p + 1)}
    noise = StudentNoise(num_ops=0, flip=False, crop_padding=p)
    seen = set()
    for s in range(300):
        out = noise(img, np.random.default_rng(s))
        assert out.shape == img.shape
        hits = [k for k, win in windows.items() if np.array_equal(win, out)]
        assert hits
        seen.update(hits)
    assert len(seen) >= 0.7 * (2 * p + 1) ** 2  # offsets cover (almost) all positions
    assert np.array_equal(StudentNoise(num_ops=0, flip=False)(img, np.random.default_rng(0)), img)


def test_flip_is_random_and_reproducible() -> None:
    img = textured((8, 8, 1))
    noise = StudentNoise(num_ops=0, flip=True)
    outs = [noise(img, np.random.default_rng(s)) for s in range(100)]
    flips = [np.array_equal(o, img[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, img) for f, o in zip(flips, outs))
    assert 30 <= sum(flips) <= 70
    assert all(np.array_equal(o, noise(img, np.random.default_rng(s))) for s, o in enumerate(outs))
    assert all(np.array_equal(StudentNoise(num_ops=0, flip=False)(img, np.random.default_rng(s)), img)
               for s in range(20))


@pytest.mark.parametrize("channels", [1, 3])
def test_pickle_round_trip(channels: int) -> None:
    img = textured((28, 28, channels))
    for transform in (RandAugment(num_ops=2, magnitude=9, channels=channels),
                      StudentNoise(num_ops=2, magnitude=9, crop_padding=4, channels=channels)):
        before = [transform(img, np.random.default_rng(s)) for s in range(30)]  # warms the caches
        clone = pickle.loads(pickle.dumps(transform))
        after = [clone(img, np.random.default_rng(s)) for s in range(30)]
        assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_build_noise() -> None:
    assert build_noise(False, 2, 9, True, 4, 3) is None
    noise = build_noise(True, 3, 12.0, False, 4, 1)
    assert isinstance(noise, StudentNoise)
    assert (noise.flip, noise.crop_padding) == (False, 4)
    ra = noise.randaugment
    assert (ra.num_ops, ra.magnitude, ra.channels) == (3, 12.0, 1) and "Color" not in ra.ops
    out = noise(textured((28, 28, 1)), np.random.default_rng(0))
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8


def test_build_op_caches_are_deterministic_across_shapes() -> None:
    op = build_op("Rotate", 20.0)
    a, b = textured((8, 8, 3)), textured((12, 10, 1))
    first = (op(a), op(b))
    assert np.array_equal(op(a), first[0]) and np.array_equal(op(b).reshape(first[1].shape), first[1])
