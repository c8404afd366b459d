"""tools/evaluate.py on a tiny finished run, and noisy_student.corruptions on crafted images."""

import itertools
import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisy_student.artifacts import open_run
from noisy_student.corruptions import (
    CORRUPTION_TABLE,
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_errors,
)
from noisy_student.metrics import classification_metrics, expected_calibration_error
from noisy_student.inference import predict_logits

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "evaluate.py"))
main = TOOL["main"]


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    """Two rounds on a small slice of digits (conftest's tiny config), made once."""
    return tiny_run


def test_writes_metrics_and_plots_equal_to_a_direct_computation(run_dir, tmp_path):
    assert main([str(run_dir), "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["phase"] == "round_1" and written["data"] == "test"
    run = open_run(run_dir)
    test = run.splits().test
    logits = predict_logits(run.model("last"), test.images, run.mean, run.std)
    direct = classification_metrics(logits, torch.from_numpy(test.labels), len(run.classes))
    for key in ("top1", "top5", "ece", "nll", "n"):
        assert written[key] == pytest.approx(direct[key], abs=1e-6), key
    assert written["per_class"] == pytest.approx(direct["per_class"], abs=1e-6)
    matrix = np.array(written["confusion"])
    assert matrix.sum() == len(test.labels)
    assert (matrix.sum(1) == np.bincount(test.labels, minlength=10)).all()  # rows: true class
    assert np.trace(matrix) / matrix.sum() == pytest.approx(direct["top1"])
    bins = written["reliability"]
    assert sum(b["count"] for b in bins) == len(test.labels)
    ece = sum(b["count"] / len(test.labels) * abs(b["accuracy"] - b["confidence"])
              for b in bins if b["count"])
    assert ece == pytest.approx(direct["ece"], abs=1e-6)
    side = round(TOOL["confusion_inches"](10) * TOOL["DPI"])
    reliability = round(TOOL["RELIABILITY_INCHES"] * TOOL["DPI"])
    for name, size in (("reliability.png", (reliability, reliability)),
                       ("confusion.png", (side, side))):
        with Image.open(tmp_path / name) as im:
            im.load()
            assert im.format == "PNG" and im.size == size, name


def test_weights_file_selects_its_phase(run_dir, capsys):
    assert main([str(run_dir / "teacher" / "model.safetensors"), "--limit", "20"]) == 0
    written = json.loads((run_dir / "evaluation" / "teacher" / "metrics.json").read_text())
    assert written["phase"] == "teacher" and written["n"] == 20
    assert main([str(run_dir / "round_0"), "--limit", "20"]) == 0
    assert (run_dir / "evaluation" / "round_0" / "confusion.png").is_file()


def test_ece_of_a_perfectly_calibrated_input_is_zero():
    # confidence 1.0: 2 of 2 right; 0.75: 3 of 4 right; 0.5: 1 of 2 right (exact in binary)
    rows = [([1.0, 0.0], 0)] * 2 + [([0.75, 0.25], 0)] * 3 + [([0.75, 0.25], 1)] + \
        [([0.5, 0.5], 0), ([0.5, 0.5], 1)]
    probs = torch.tensor([r[0] for r in rows])  # [8, 2]
    labels = torch.tensor([r[1] for r in rows])
    assert expected_calibration_error(probs, labels) == 0.0
    bins = [b for b in TOOL["reliability_bins"](probs, labels) if b["count"]]
    assert [(b["count"], b["accuracy"], b["confidence"]) for b in bins] == [
        (2, 0.5, 0.5), (4, 0.75, 0.75), (2, 1.0, 1.0)]
    logits = torch.log(probs.clamp_min(1e-12))  # softmax(log p) = p up to rounding
    assert classification_metrics(logits, labels, 2)["ece"] == pytest.approx(0.0, abs=1e-6)


def _crafted(side: int, channels: int, shift: int) -> np.ndarray:
    """A smooth gradient with a bright square (its edges off any block grid by `shift`)."""
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    image = 40 + 120 * (0.5 * x + 0.5 * y)
    q = side // 4
    image[q + shift:3 * q + shift, q - shift // 2:3 * q - shift // 2] = 220
    return np.repeat(np.round(image).astype(np.uint8)[..., None], channels, -1)


@pytest.mark.parametrize("channels", [1, 3])
def test_corruptions_grow_with_severity(channels):
    clean = np.stack([_crafted(32, channels, s) for s in range(8)])  # [8, 32, 32, C]
    for name in CORRUPTIONS:
        change = []
        for severity in SEVERITIES:
            out = corrupt(clean, name, severity, seed=0)
            assert out.shape == clean.shape and out.dtype == np.uint8
            change.append(np.abs(out.astype(float) - clean).mean())
        assert all(b >= a - 0.5 for a, b in itertools.pairwise(change)), (name, change)
        assert change[-1] > change[0] + 1.0, (name, change)


def test_corruptions_are_seeded_and_checked():
    images = np.stack([_crafted(32, 3, s) for s in range(3)])
    for name in ("gaussian_noise", "shot_noise", "motion_blur", "elastic"):
        a, b = corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=1)
        assert (a == b).all() and not (a == corrupt(images, name, 3, seed=2)).all()
        whole = corrupt(images, name, 3, seed=1)
        parts = np.concatenate([corrupt(images[:1], name, 3, seed=1),
                                corrupt(images[1:], name, 3, seed=1, offset=1)])
        assert (whole == parts).all()  # chunk by chunk = at once
    assert set(CORRUPTION_TABLE) == {(c, s) for c in CORRUPTIONS for s in SEVERITIES}
    assert CORRUPTION_TABLE["gaussian_noise", 5] == (
        "GaussNoise", {"std_range": (0.38, 0.38), "mean_range": (0.0, 0.0), "per_channel": True})
    ce, mce = corruption_errors({"jpeg": {"1": 0.2, "5": 0.4}, "elastic": {"1": 0.1, "5": 0.3}},
                                {"jpeg": {"1": 0.1, "5": 0.2}, "elastic": {"1": 0.0, "5": 0.0}})
    assert ce == {"jpeg": pytest.approx(2.0), "elastic": None} and mce == pytest.approx(2.0)
    with pytest.raises(ValueError, match="valid corruptions: gaussian_noise"):
        corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
        corrupt(images, "jpeg", 6)


def test_robustness_of_every_round(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--round", "all", "--robustness", "--limit", "50",
                 "--severities", "1", "5", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "robustness.json").read_text())
    assert list(result["phases"]) == ["teacher", "round_0", "round_1"]
    assert result["n"] == 50 and result["severities"] == [1, 5]
    teacher = result["phases"]["teacher"]
    assert teacher["mce"] == 1.0 and all(v == 1.0 for v in teacher["ce"].values())
    for name, phase in result["phases"].items():
        assert math.isfinite(phase["mce"]) and phase["mce"] > 0, name
        for c in CORRUPTIONS:
            errors = phase["errors"][c]
            assert set(errors) == {"1", "5"} and all(0 <= e <= 1 for e in errors.values())
            base = sum(result["phases"]["teacher"]["errors"][c].values())
            assert phase["ce"][c] == pytest.approx(sum(errors.values()) / base)
        assert phase["mce"] == pytest.approx(np.mean(list(phase["ce"].values())))
    for name in ("teacher", "round_0", "round_1"):
        assert (tmp_path / name / "metrics.json").is_file()
    table = capsys.readouterr().out
    assert "mCE" in table and "100.0" in table


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2_with_a_message(run_dir, tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not inside a run directory" in _error_line(capsys)
    assert main([str(run_dir), "--round", "7"]) == 2
    assert "round 7 is not finished" in _error_line(capsys)
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in _error_line(capsys)
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "3").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "3" / "a.png")
    assert main([str(run_dir), "--images", str(folder)]) == 2
    assert "unknown classes ['cat']" in _error_line(capsys)
    assert main([str(run_dir / "round_0"), "--round", "teacher"]) == 2
    assert "--round teacher" in _error_line(capsys)
    assert main([str(run_dir / "config.json")]) == 2
    assert "not a phase's weights file" in _error_line(capsys)
    assert main([str(run_dir), "--round", "first"]) == 2
    assert "expected K (a round number), teacher, last or all" in _error_line(capsys)


def test_image_folder(run_dir, tmp_path):
    folder = tmp_path / "images"
    run = open_run(run_dir)
    test = run.splits().test
    for i in range(12):
        (folder / str(test.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, :, :, 0]).save(folder / str(test.labels[i]) / f"{i}.png")
    assert main([str(run_dir), "--round", "teacher", "--images", str(folder)]) == 0
    written = json.loads((run_dir / "evaluation" / "teacher_images" / "metrics.json").read_text())
    assert written["n"] == 12 and written["data"] == str(folder)
