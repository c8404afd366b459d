"""Tests for the model registry and families (CPU, no downloads)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn

from noisy_student.models import count_params, create_model, list_models
from noisy_student.models.layers import DropPath, drop_path, drop_path_rates
from noisy_student.models.torchvision_models import _resolve_pretrained

CNNS = ["cnn_tiny", "cnn_small", "cnn_medium", "cnn_large"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    """A small input suited to the family."""
    if name.startswith("cnn"):
        return torch.randn(batch, 1, 8, 8)
    if name.startswith("tv_"):
        return torch.randn(batch, 3, 64, 64)
    return torch.randn(batch, 3, 32, 32)


def _build(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    in_chans = 1 if name.startswith("cnn") else 3
    if name == "timm_model":  # one family for every timm architecture: try a small one
        pytest.importorskip("timm")
        name = "timm_model(arch=resnet10t)"
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


# ---------------------------------------------------------------- registry


def test_registry_has_all_families() -> None:
    names = set(list_models())
    expected = CNNS + ["resnet18", "resnet34", "resnet50", "wrn_16_4", "wrn_28_2", "wrn_28_4"]
    expected += ["wrn_28_10", "tv_resnet18", "tv_resnet50", "tv_efficientnet_b0"]
    expected += ["tv_convnext_tiny"]
    assert set(expected) <= names
    assert list_models() == sorted(list_models())


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError) as err:
        create_model("cnn_smal", num_classes=10)
    msg = str(err.value)
    assert "cnn_smal" in msg and "Did you mean" in msg and "'cnn_small'" in msg
    assert "wrn_28_2" in msg  # the list of available models


def test_count_params_includes_frozen() -> None:
    model = create_model("cnn_tiny", num_classes=10, in_chans=1)
    total = count_params(model)
    assert total == sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    assert count_params(model) == total


# ---------------------------------------------------------------- interface of every model


@pytest.mark.parametrize("name", list_models())
def test_every_model_interface(name: str) -> None:
    model = _build(name, num_classes=7).eval()
    x = _input(name)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, model.num_features)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (model.num_features, 7)
    # forward == head(forward_features) in eval: the head is the only thing after the features;
    # a distillation-token model averages its two heads, one per token (DeiT's late fusion)
    if getattr(model, "head_dist", None) is not None:
        with torch.no_grad():
            tokens = model.forward_tokens(x)  # [B, 2, D]
        torch.testing.assert_close(
            logits, (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2)
    else:
        torch.testing.assert_close(logits, model.head(feats))


@pytest.mark.parametrize("name", CNNS)
def test_cnn_on_28x28_and_3_channels(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    fast = create_model(name, num_classes=10, in_chans=3, stem_stride=2).eval()
    with torch.no_grad():
        assert fast(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn_width_depth_override() -> None:
    model = create_model("cnn_small", num_classes=10, in_chans=1, width=8, depth=2)
    assert model.num_features == 32
    assert sum(isinstance(m, DropPath) for m in model.modules()) == 6


def test_cnn_ladder_strictly_increasing() -> None:
    counts = [count_params(create_model(n, num_classes=10, in_chans=1)) for n in CNNS]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


def test_wrn_28_2_param_count() -> None:
    n = count_params(create_model("wrn_28_2", num_classes=10))
    assert abs(n - 1.47e6) / 1.47e6 < 0.02, n


def test_wrn_rejects_bad_depth() -> None:
    from noisy_student.models.resnet import WideResNet

    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=27, widen_factor=2, num_classes=10)


# ---------------------------------------------------------------- stochastic depth


def test_drop_path_rates_by_hand() -> None:
    assert drop_path_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(1, 0.3) == [0.3]
    assert drop_path_rates(3, 0.0) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        drop_path_rates(0, 0.2)


def test_drop_path_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(64, 3, 4, 4)
    layer = DropPath(0.5).eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(drop_path(x, 0.0, training=True), x)


def test_drop_path_train_statistics() -> None:
    x = torch.ones(40_000, 3, 2, 2)
    out = DropPath(0.5).train()(x)
    per_sample = out.flatten(1)
    dropped = (per_sample == 0).all(dim=1)
    kept = (per_sample == 2.0).all(dim=1)
    assert bool((dropped | kept).all())  # whole samples are dropped or scaled by 1/(1-p)
    assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(("name", "blocks"), [("cnn_medium", 6), ("resnet18", 8), ("wrn_28_2", 12)])
def test_models_use_linear_drop_path_rates(name: str, blocks: int) -> None:
    model = _build(name, drop_path_rate=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx(drop_path_rates(blocks, 0.2))


# ---------------------------------------------------------------- noise on / off


@pytest.mark.parametrize("name", ["cnn_small", "resnet18", "wrn_16_4", "tv_efficientnet_b0"])
def test_noise_only_in_train_mode(name: str) -> None:
    x = _input(name, batch=4)
    clean = _build(name)
    noisy = _build(name, drop_rate=0.5, drop_path_rate=0.5)
    noisy.load_state_dict(clean.state_dict())
    with torch.no_grad():
        noisy.eval()
        torch.testing.assert_close(noisy(x), noisy(x), rtol=0, atol=0)
        torch.testing.assert_close(noisy(x), clean.eval()(x))  # noise off in eval
        clean.train()
        torch.testing.assert_close(clean(x), clean(x))  # train mode without noise: deterministic
        noisy.train()
        assert not torch.allclose(noisy(x), noisy(x))


def test_drop_rate_only_affects_head_input() -> None:
    model = create_model("cnn_tiny", num_classes=10, in_chans=1, drop_rate=0.5).train()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), model.forward_features(x))
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("name", ["cnn_small", "wrn_16_4", "tv_efficientnet_b0"])
def test_channels_last_input(name: str) -> None:
    model = _build(name).eval()
    x = _input(name, batch=4)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- torchvision wrappers


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_efficientnet_b0"])
def test_tv_in_chans_1(name: str) -> None:
    model = create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_tv_resnet_rejects_drop_path() -> None:
    with pytest.raises(ValueError, match="stochastic depth"):
        create_model("tv_resnet18", num_classes=10, drop_path_rate=0.1)


def test_tv_drop_path_maps_to_stochastic_depth() -> None:
    model = create_model("tv_convnext_tiny", num_classes=10, drop_path_rate=0.3)
    probs = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert probs and max(probs) == pytest.approx(0.3)
    model = create_model("tv_efficientnet_b0", num_classes=10)  # default: no stochastic depth
    assert all(m.p == 0 for m in model.modules() if type(m).__name__ == "StochasticDepth")


def test_tv_backbone_has_no_extra_dropout() -> None:
    model = create_model("tv_efficientnet_b0", num_classes=10)
    assert not any(isinstance(m, nn.Dropout) for m in model.backbone.modules())


def test_pretrained_name_resolution_without_download() -> None:
    weights, path = _resolve_pretrained("resnet18", "IMAGENET1K_V1")
    assert weights is tvm.ResNet18_Weights.IMAGENET1K_V1 and path is None
    assert _resolve_pretrained("resnet18", None) == (None, None)
    with pytest.raises(ValueError, match="nope.safetensors"):
        create_model("tv_resnet18", num_classes=10, pretrained="nope.safetensors")


def test_pretrained_safetensors_round_trip(tmp_path) -> None:
    source = create_model("tv_resnet18", num_classes=10)
    path = tmp_path / "teacher.safetensors"
    save_file(source.state_dict(), str(path))

    model = create_model("tv_resnet18", num_classes=10, pretrained=str(path))
    expected = _backbone_state(source)
    got = _backbone_state(model)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert not torch.equal(model.head.weight, source.head.weight)  # head not loaded

    other = create_model("tv_resnet18", num_classes=3, pretrained=str(path))  # new head size
    assert other.head.out_features == 3
    assert torch.equal(other.backbone.conv1.weight, source.backbone.conv1.weight)


def test_pretrained_raw_torchvision_checkpoint(tmp_path) -> None:
    raw = tvm.resnet18()  # keys like "conv1.weight", "fc.weight", as torchvision ships them
    path = tmp_path / "resnet18.pth"
    torch.save(raw.state_dict(), path)
    model = create_model("tv_resnet18", num_classes=10, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[1].bn2.weight, raw.layer4[1].bn2.weight)
    gray = create_model("tv_resnet18", num_classes=10, in_chans=1, pretrained=str(path))
    torch.testing.assert_close(gray.backbone.conv1.weight, raw.conv1.weight.sum(1, keepdim=True))


def test_pretrained_unreadable_file_names_it(tmp_path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        create_model("tv_resnet18", num_classes=10, pretrained=str(path))


def test_model_spec_with_keyword_arguments():
    from noisy_student.models import parse_model_spec

    assert parse_model_spec("cnn_small") == ("cnn_small", {})
    assert parse_model_spec("cnn_small(width=40, stem_stride=2)") == (
        "cnn_small", {"width": 40, "stem_stride": 2})
    wide = create_model("cnn_small(width=40)", num_classes=10, in_chans=1)
    assert count_params(wide) > count_params(create_model("cnn_small", 10, in_chans=1))
    with pytest.raises(ValueError, match="not key=value"):
        parse_model_spec("cnn_small(40)")


def test_a_grown_network_computes_what_the_shallower_one_did() -> None:
    """weights.grow (Net2DeeperNet): cnn_medium's weights in a third block per stage; the three
    added blocks (identity shortcuts) start with a zero last conv, so the deeper network's
    logits equal the shallower one's; every tensor of the shallower one is copied."""
    from noisy_student.models.weights import grow

    small, deep = create_model("cnn_medium", num_classes=10, in_chans=1), create_model(
        "cnn_medium", depth=3, num_classes=10, in_chans=1)
    x = torch.randn(4, 1, 8, 8)
    small.eval(), deep.eval()
    assert not torch.allclose(small(x), deep(x))
    assert grow(deep, small.state_dict()) == ["stages.0.2", "stages.1.2", "stages.2.2"]
    with torch.no_grad():
        torch.testing.assert_close(deep(x), small(x))
    mine = deep.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in small.state_dict().items())
    assert not mine["stages.1.2.conv1.weight"].eq(0).all()  # only the last conv is zeroed
    assert grow(small, small.state_dict()) == []  # the same network: a plain load


def test_grow_refuses_a_wider_network_and_a_new_block_that_is_no_identity() -> None:
    """A wider network changes the shapes of the smaller one's tensors; a new stage that starts
    with a stride-2 projection cannot start as the identity. Both are refused, and named."""
    from noisy_student.models.preact import PreActResNet
    from noisy_student.models.weights import grow

    with pytest.raises(ValueError, match=r"stem.weight \(16, 1, 3, 3\) \(shape \(32, 1, 3, 3\)\)"):
        grow(create_model("cnn_small", num_classes=10, in_chans=1),
             create_model("cnn_tiny", num_classes=10, in_chans=1).state_dict())

    def net(stages: int) -> PreActResNet:
        return PreActResNet(widths=(8,) * stages, depth=1, stem_width=8, num_classes=10,
                            in_chans=1, strides=(1,) + (2,) * (stages - 1))

    with pytest.raises(ValueError, match="not in a new block that can start as the identity, "
                                         "first stages.2.0.bn1"):
        grow(net(3), net(2).state_dict())
