"""Batched tensor noise (noise.backend = "torch"): each op against PIL, geometry by hand,
per-sample parameters, determinism, and its use in training."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from noisy_student.config import LossConfig, NoiseConfig, TrainConfig
from noisy_student.data import NoisedDataset
from noisy_student.losses import build_student_loss
from noisy_student.noise import StudentNoise
from noisy_student.noise_batch import (_COLOR_OPS, BatchNoise, affine, build_student_noise,
                                       pad_crop)
from noisy_student.train import TrainData, TrainHooks, train_model

GEOMETRIC = ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"]


def _images(b=4, c=3, h=12, w=16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (b, c, h, w), dtype=np.uint8)
    images[1] = images[1] // 4 + 40  # a low-contrast image: AutoContrast and Equalize move it
    return images


def _pil(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(i.transpose(1, 2, 0))))
                     for i in images]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name, value, pil, tolerance", [
    ("AutoContrast", 0.0, ImageOps.autocontrast, 1),  # PIL floors lo * scale in doubles
    ("Equalize", 0.0, ImageOps.equalize, 0),
    ("Posterize", 5.0, lambda im: ImageOps.posterize(im, 5), 0),
    ("Solarize", 128.0, lambda im: ImageOps.solarize(im, 128), 0),
    ("Brightness", 0.6, lambda im: ImageEnhance.Brightness(im).enhance(1.6), 1),
    ("Color", -0.6, lambda im: ImageEnhance.Color(im).enhance(0.4), 1),
    ("Contrast", 0.6, lambda im: ImageEnhance.Contrast(im).enhance(1.6), 1),
    ("Sharpness", 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9), 1),
    ("Sharpness", -0.9, lambda im: ImageEnhance.Sharpness(im).enhance(0.1), 1),
])
def test_color_ops_match_pil(name, value, pil, tolerance):
    images = _images()
    y = torch.from_numpy(images).float()
    out = _COLOR_OPS[name](y, torch.full((len(y), 1, 1, 1), value)).round().clamp(0, 255)
    diff = np.abs(out.numpy() - _pil(images, pil).astype(np.float32))
    assert diff.max() <= tolerance, f"{name}: off by up to {diff.max()} levels"


def test_translate_and_a_quarter_turn_by_hand():
    y = torch.from_numpy(_images(b=2, h=8, w=8)).float()
    which = torch.tensor([3, 4])  # sample 0: TranslateX, sample 1: TranslateY (names' order)
    out = affine(y, GEOMETRIC, which, torch.tensor([0.25, -0.25]), [0, 1, 2, 3, 4])
    shifted_x = torch.zeros_like(y[0])
    shifted_x[:, :, 2:] = y[0, :, :, :-2]  # 0.25 * 8 = 2 pixels right, zero fill
    shifted_y = torch.zeros_like(y[1])
    shifted_y[:, :-2] = y[1, :, 2:]  # 2 pixels up
    assert torch.equal(out[0], shifted_x) and torch.equal(out[1], shifted_y)
    turned = affine(y, ["Rotate"], torch.zeros(2, dtype=torch.long), torch.full((2,), 90.0), [0])
    assert any(torch.equal(turned, torch.rot90(y, k, (2, 3))) for k in (1, 3))  # exact on a grid
    same = affine(y, ["Rotate"], torch.zeros(2, dtype=torch.long), torch.zeros(2), [0])
    assert torch.equal(same, y)


def test_pad_crop_offsets():
    y = torch.from_numpy(_images(b=2, h=6, w=5)).float()
    p = 2
    out = pad_crop(y, p, torch.tensor([p, 0]), torch.tensor([p, 4]))
    assert torch.equal(out[0], y[0])  # offset (p, p): the image itself
    padded = np.pad(y[1].numpy(), ((0, 0), (p, p), (p, p)), mode="reflect")
    assert np.array_equal(out[1].numpy(), padded[:, 0:6, 4:9])


def test_each_sample_draws_its_own_sign():
    noise = BatchNoise(num_ops=1, magnitude=30, flip=False, ops=["Brightness"], channels=1)
    x = torch.full((64, 1, 4, 4), 100, dtype=torch.uint8)
    out = noise(x, torch.Generator().manual_seed(0))
    levels = out.view(64, -1).unique(dim=1).view(-1)  # one level per image: 100 * (1 +- 0.9)
    assert set(levels.tolist()) == {10, 190}
    assert 10 < int((levels == 190).sum()) < 54  # both signs, in about equal shares


def test_deterministic_in_the_generator_and_shapes_kept():
    noise = BatchNoise(num_ops=2, magnitude=9, flip=True, crop_padding=2, channels=3)
    x = torch.from_numpy(_images(b=16))
    a = noise(x, torch.Generator().manual_seed(5))
    b = noise(x, torch.Generator().manual_seed(5))
    c = noise(x, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    plain = BatchNoise(num_ops=3, magnitude=9, flip=False, ops=["Identity"], channels=3)
    assert torch.equal(plain(x, torch.Generator().manual_seed(0)), x)


def test_bad_input_is_named():
    noise = BatchNoise(channels=1)
    with pytest.raises(ValueError, match=r"uint8 \[B, 1, H, W\].*float32"):
        noise(torch.zeros(2, 1, 4, 4), torch.Generator())
    with pytest.raises(ValueError, match="magnitude"):
        BatchNoise(magnitude=31)


def test_the_backend_places_the_noise():
    """Per image in the datasets (albumentations) or per batch in the step (torch), never both."""
    per_image, per_batch = build_student_noise(NoiseConfig(num_ops=3, magnitude=5), 1)
    assert isinstance(per_image, StudentNoise) and per_batch is None
    per_image, per_batch = build_student_noise(NoiseConfig(backend="torch", num_ops=3), 3)
    assert per_image is None and isinstance(per_batch, BatchNoise)
    assert (per_batch.num_ops, per_batch.channels) == (3, 3)
    for backend in ("albumentations", "torch"):
        assert build_student_noise(NoiseConfig(enabled=False, backend=backend), 1) == (None, None)


def test_training_with_batch_noise_is_reproducible_and_noised():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 6, 6, 1), dtype=np.uint8)
    data = NoisedDataset(images, np.arange(24) % 3, None, [0.5], [0.25], seed=0)
    cfg = TrainConfig(batch_size=8, lr=0.1, device="cpu")
    seen = []

    def train(noise):
        def recording(x, g):
            out = noise(x, g)
            seen.append(out.clone())
            return out

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=False)
        return train_model(model, loss, cfg, torch.device("cpu"),
                           TrainData(data, epochs=2, batch_noise=recording),
                           TrainHooks("t")).model[1].weight

    noise = BatchNoise(num_ops=2, magnitude=9, flip=True, crop_padding=1, channels=1)
    a, b = train(noise), train(noise)
    assert torch.equal(a, b)
    assert len(seen) == 12 and all(torch.equal(x, y) for x, y in zip(seen[:6], seen[6:]))
    assert not torch.equal(seen[0], seen[1])  # a new draw every step


def test_the_loop_runs_with_the_torch_backend(tiny_config):
    from noisy_student.config import ConfigError
    from noisy_student.loop import run

    summary = run(tiny_config.with_overrides(['noise.backend="torch"', "rounds=1"]))
    assert len(summary["rounds"]) == 1 and 0 <= summary["rounds"][0]["student_top1"] <= 1
    with pytest.raises(ConfigError, match="noise.backend.*'albumentations'"):
        tiny_config.with_overrides(['noise.backend="gpu"'])
