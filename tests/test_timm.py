"""timm architectures through the registry: the common interface, model noise, weights names
checked offline, and local weights loaded into the backbone (no download anywhere)."""

import pytest
import torch
from safetensors.torch import save_file

from noisy_student.data import load_source, make_splits
from noisy_student.ladder import build_model
from noisy_student.models import create_model

timm = pytest.importorskip("timm")

from noisy_student.models.timm_models import weights_name  # noqa: E402


def test_a_timm_model_has_the_common_interface_and_model_noise():
    model = create_model("timm_model(arch=resnet10t)", num_classes=7, in_chans=1,
                         drop_rate=0.5, drop_path_rate=0.2)
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    assert model.forward_features(x).shape == (2, model.num_features) == (2, 512)
    assert model(x).shape == (2, 7)
    assert isinstance(model.head, torch.nn.Linear) and model.head_drop.p == 0.5
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2) and rates == sorted(rates)  # linear
    assert model.backbone.conv1[0].in_channels == 1


def test_spec_keywords_go_to_timm():
    model = create_model("timm_model(arch=test_vit, img_size=16, patch_size=4)", num_classes=3)
    assert model.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_bad_names_are_refused_with_what_exists():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("timm_model(arch=resnet81)", num_classes=3)
    with pytest.raises(ValueError, match="needs an architecture"):
        create_model("timm_model", num_classes=3)
    assert weights_name("resnet18", "a1_in1k") == "resnet18.a1_in1k"
    assert weights_name("resnet18", "resnet18.a2_in1k") == "resnet18.a2_in1k"
    assert weights_name("resnet18", "default") == "resnet18"
    with pytest.raises(ValueError, match=r"neither a file nor timm weights.*resnet18\.a1_in1k"):
        weights_name("resnet18", "IMAGENET1K_V1")


def test_local_weights_fill_the_backbone_of_a_timm_rung(tiny_config, tmp_path):
    splits = make_splits(load_source(tiny_config.data), tiny_config.data, 0)
    torch.manual_seed(5)
    source = create_model("timm_model(arch=resnet10t)", num_classes=4, in_chans=1)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    config = tiny_config.with_overrides(['model.ladder=["timm_model(arch=resnet10t)"]',
                                         f'model.pretrained="{tmp_path / "w.safetensors"}"'])
    teacher = build_model(config, 0, splits)
    got, want = teacher.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("head"))
    assert teacher.head.out_features == splits.num_classes
    named = config.with_overrides(['model.pretrained="no_such_tag"'])
    with pytest.raises(ValueError, match="no_such_tag"):
        build_model(named, 0, splits)
