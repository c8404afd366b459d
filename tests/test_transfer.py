"""Transfer learning: pretrained backbones, a frozen backbone, discriminative learning rates."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from noisy_student.config import ConfigError, LossConfig, TrainConfig
from noisy_student.data import NoisedDataset, load_source, make_splits
from noisy_student.ladder import build_model
from noisy_student.loop import run
from noisy_student.losses import build_student_loss
from noisy_student.models import create_model
from noisy_student.optim import build_optimizer
from noisy_student.train import TrainData, TrainHooks, train_model


def _data(n=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return NoisedDataset(images, np.arange(n) % 3, None, [0.5], [0.25], seed=0)


def _train(model, cfg, pretrained):
    loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=False)
    return train_model(model, loss, cfg, torch.device("cpu"), TrainData(_data()),
                       TrainHooks("t"), pretrained=pretrained)


def test_head_only_leaves_the_backbone_byte_identical_and_moves_the_head():
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=3, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(batch_size=8, lr=0.1, device="cpu", finetune="head", ema_decay=0.0)
    _train(model, cfg, pretrained=True)
    after = model.state_dict()
    backbone = [k for k in before if not k.startswith("head")]
    assert backbone and any("running_mean" in k for k in backbone)  # BN statistics included
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_discriminative_learning_rates_are_parameter_groups():
    model = create_model("cnn_tiny", num_classes=3, in_chans=1)
    cfg = TrainConfig(lr=0.2, backbone_lr_scale=0.1)
    groups = build_optimizer(model, cfg, pretrained=True).param_groups
    by_part = {(g["part"], g["weight_decay"] > 0): g["lr"] for g in groups}
    assert by_part == {("head", True): 0.2, ("head", False): 0.2,
                       ("backbone", True): pytest.approx(0.02),
                       ("backbone", False): pytest.approx(0.02)}
    head = {id(p) for g in groups if g["part"] == "head" for p in g["params"]}
    assert head == {id(model.head.weight), id(model.head.bias)}
    plain = build_optimizer(model, cfg, pretrained=False).param_groups
    assert {g["lr"] for g in plain} == {0.2}  # a model not started from weights: one lr


def test_pretrained_backbone_is_loaded_for_the_rungs_it_applies_to(tiny_config, tmp_path):
    splits = make_splits(load_source(tiny_config.data), tiny_config.data, 0)
    torch.manual_seed(123)
    source = create_model("cnn_tiny", num_classes=7, in_chans=1)  # another head: not loaded
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    config = tiny_config.with_overrides([f'model.pretrained="{tmp_path / "w.safetensors"}"'])
    teacher, student = build_model(config, 0, splits), build_model(config, 1, splits)
    want = source.state_dict()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in want.items()
               if not k.startswith("head"))
    assert teacher.head.out_features == 10  # the data set's classes, freshly initialised
    assert not torch.equal(student.state_dict()["stem.weight"], want["stem.weight"])
    everyone = config.with_overrides(['model.pretrained_for="all"'])
    assert torch.equal(build_model(everyone, 1, splits).state_dict()["stem.weight"],
                       want["stem.weight"])
    summary = run(everyone.with_overrides(["rounds=1", 'train.finetune="head"']))
    assert len(summary["rounds"]) == 1


def test_transfer_settings_are_checked():
    from noisy_student.config import Config

    with pytest.raises(ConfigError, match="apply to pretrained weights"):
        Config.from_dict({"train": {"finetune": "head"}})
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        Config.from_dict({"model": {"pretrained": "x"}, "train": {"backbone_lr_scale": 0}})


def test_a_weights_name_needs_a_torchvision_model(tiny_config):
    splits = make_splits(load_source(tiny_config.data), tiny_config.data, 0)
    config = tiny_config.with_overrides(['model.pretrained="IMAGENET1K_V1"'])
    with pytest.raises(ValueError, match="not a file, and cnn_tiny takes no weights name"):
        build_model(config, 0, splits)
