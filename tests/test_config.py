"""The config refuses bad input with messages that name the key and what is allowed."""

import json
from pathlib import Path

import pytest

from noisy_student.config import Config, ConfigError, LossConfig

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = Config()
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert Config.load(path) == config


def test_unknown_key_gets_a_suggestion():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"loss": {"temprature": 2}})
    assert "unknown key loss.temprature" in str(e.value)
    assert "did you mean 'temperature'" in str(e.value)


def test_all_problems_are_listed_at_once():
    bad = {"rounds": "3", "train": {"optimizer": "adam", "lr": -1},
           "pseudo_label": {"threshold": 1.0}, "loss": {"temperature": 0}}
    with pytest.raises(ConfigError) as e:
        Config.from_dict(bad)
    problems = e.value.problems
    assert any(p.startswith("rounds = '3': expected int") for p in problems)
    assert any("train.optimizer = 'adam': expected one of 'sgd', 'adamw'" in p for p in problems)
    assert any(p.startswith("train.lr = -1.0 is out of range") for p in problems)
    assert any(p.startswith("pseudo_label.threshold = 1.0 is out of range: allowed [0, 1)")
               for p in problems)
    assert any(p.startswith("loss.temperature = 0.0 is out of range: allowed (0, inf)")
               for p in problems)
    assert len(problems) == 5


def test_python_built_config_is_type_checked():
    with pytest.raises(ConfigError, match="loss.temperature = 'hot': expected float"):
        Config(loss=LossConfig(temperature="hot"))


def test_overrides_parse_values_as_json_never_code():
    c = Config().with_overrides(["loss.temperature=2", "model.ladder=[\"cnn_tiny\", \"cnn_small\"]",
                                 "noise.enabled=false", "name=__import__('os')"])
    assert c.loss.temperature == 2.0
    assert c.model.ladder == ["cnn_tiny", "cnn_small"]
    assert c.noise.enabled is False
    assert c.name == "__import__('os')"  # stays text


def test_bad_overrides():
    with pytest.raises(ConfigError) as e:
        Config().with_overrides(["noise.magnitud=3", "rounds", "train.batch_size=0"])
    text = str(e.value)
    assert "did you mean 'magnitude'" in text
    assert "expected KEY=VALUE" in text
    assert "train.batch_size = 0 is out of range" in text


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="needs soft pseudo-labels"):
        Config.from_dict({"pseudo_label": {"kind": "hard"}, "loss": {"distillation": "kd"}})
    with pytest.raises(ConfigError, match="image_folder"):
        Config.from_dict({"data": {"source": "image_folder"}})
    Config.from_dict({"pseudo_label": {"kind": "hard"}, "loss": {"distillation": "hard"}})
    with pytest.raises(ConfigError, match="train.amp_cpu .* needs train.amp = true"):
        Config.from_dict({"train": {"amp": False, "amp_cpu": True}})


def test_fingerprint_changes_with_its_sections_only():
    a = Config()
    b = a.with_overrides(["pseudo_label.threshold=0.5"])
    c = a.with_overrides(["train.lr=0.3"])
    assert a.fingerprint("pseudo_label") != b.fingerprint("pseudo_label")
    assert a.fingerprint("pseudo_label") == c.fingerprint("pseudo_label")
    assert json.loads(a.to_json())["loss"]["temperature"] == 1.0


def _leaves(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("key", [k for k, _ in _leaves(Config().to_dict())])
def test_every_field_refuses_a_value_of_the_wrong_type(key):
    with pytest.raises(ConfigError) as e:
        Config().with_overrides([f'{key}={{"not": "a value"}}'])
    assert key in str(e.value)


@pytest.mark.parametrize("override", [
    "rounds=0", "data.labeled_per_class=0", "data.test_fraction=1.0", "data.image_size=4",
    "data.channels=2", 'data.on_bad_file="ignore"', "model.drop_rate=1.0",
    "model.drop_path_rate=-0.1", "noise.magnitude=31", "noise.num_ops=-1",
    'pseudo_label.kind="medium"', "pseudo_label.threshold=1.0", "pseudo_label.threshold=-0.1",
    "pseudo_label.per_class=0", "loss.temperature=0", "loss.label_smoothing=1.0",
    'loss.distillation="kl"', "train.lr=0", "train.unlabeled_ratio=0", "train.batch_size=0",
    "train.momentum=1.0", "train.ema_decay=1.0", 'train.device="tpu"',
    "train.max_skipped_steps=-1", "checkpoint.keep=0", "checkpoint.every_steps=-1",
    'tracking.mode="sometimes"', "tracking.init_timeout=0", "tracking.samples_per_class=-1"])
def test_every_range_and_enum_is_checked(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().with_overrides([override])


def test_sync_batchnorm_on_the_cpu_is_refused():
    with pytest.raises(ConfigError, match="sync_batchnorm = true needs CUDA"):
        Config().with_overrides(['train.device="cpu"', "train.sync_batchnorm=true"])


def test_configuration_reference_is_generated_from_the_config_and_names_every_key():
    from noisy_student.config import configuration_doc

    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == configuration_doc(), "out of date: run python tools/make_docs.py"
    keys = [k for k, _ in _leaves(Config().to_dict())]
    assert len(keys) > 80
    for key in keys:
        assert f"| `{key}` |" in doc, key


def test_every_declared_range_is_enforced():
    """Each field declared with a lower bound refuses a value just under it, by name."""
    import dataclasses

    for section in ("data", "model", "noise", "pseudo_label", "loss", "train", "checkpoint",
                    "tracking"):
        cls = type(getattr(Config(), section))
        for f in dataclasses.fields(cls):
            lo, _, lo_open, _ = f.metadata["range"]
            if lo is None:
                continue
            value = lo if lo_open else lo - 1
            with pytest.raises(ConfigError, match=f"{section}.{f.name} = .* is out of range"):
                Config().with_overrides([f"{section}.{f.name}={value}"])
