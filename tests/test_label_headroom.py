"""tools/label_headroom.py: neighbour smoothing and label propagation by hand, then one tiny run."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from noisy_student.artifacts import open_run
from noisy_student.data import to_tensor
from noisy_student.inference import ViewAverage

ROOT = Path(__file__).resolve().parents[1]
tool = runpy.run_path(str(ROOT / "tools" / "label_headroom.py"))


def test_neighbour_smoothing_by_hand():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    index = np.array([[1, 2], [0, 2], [0, 1]])
    sim = np.array([[1.0, 0.5], [1.0, -0.3], [1.0, 1.0]])
    out = tool["neighbour_smoothed"](probs, index, sim, weight=0.5)
    # row 0: weights 1 and 0.125 -> around = (1*[0,1] + 0.125*[.5,.5]) / 1.125
    around0 = (np.array([0.0, 1.0]) + 0.125 * np.array([0.5, 0.5])) / 1.125
    assert out[0] == pytest.approx(0.5 * np.array([1.0, 0.0]) + 0.5 * around0)
    # row 1: the negative similarity weighs nothing -> around = row 0's probabilities
    assert out[1] == pytest.approx([0.5, 0.5])
    assert out[2] == pytest.approx([0.5, 0.5])
    assert out.sum(1) == pytest.approx(1.0)
    assert tool["neighbour_smoothed"](probs, index, sim, weight=0.0) == pytest.approx(probs)


def test_nearest_never_picks_the_row_itself():
    feats = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    index, sim = tool["nearest"](feats, 1, chunk=3)  # chunks: rows 0-2, then row 3
    assert index[:, 0].tolist() == [1, 3, 3, 1]
    assert sim[:, 0] == pytest.approx([0.8, 0.96, 0.8, 0.96])


def test_label_propagation_fills_two_clusters_from_one_label_each():
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    x = np.concatenate([c + 0.1 * rng.normal(size=(20, 3)) for c in centres])
    feats = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    index, sim = tool["nearest"](feats, 5)
    seeds = np.full(40, -1)
    seeds[0], seeds[20] = 0, 1
    z = tool["propagated"](index, sim, seeds, 2)
    assert z.argmax(1).tolist() == [0] * 20 + [1] * 20


def test_alone_is_the_run_s_own_labeling_without_a_mirror_view(tiny_run):
    run = open_run(tiny_run)
    assert not run.config.pseudo_label.flip_average  # the tiny run labels without mirror views
    sp = run.splits()
    with torch.no_grad():
        plain = run.model("last")(to_tensor(sp.validation.images, run.mean, run.std))
    hand = round(100 * float((plain.argmax(1).numpy() == sp.validation.labels).mean()), 2)
    assert tool["headroom"](tiny_run)["alone"]["val"] == hand


def test_view_averaged_probabilities_are_the_teacher_s_view_average(tiny_run):
    run = open_run(tiny_run)
    model, images = run.model("last"), run.splits().validation.images
    _, probs = tool["view_averaged"](model, images, run.mean, run.std, True, 1, batch=7)
    with torch.no_grad():
        teacher = ViewAverage(model, True, 1)(to_tensor(images, run.mean, run.std)).softmax(1)
    assert probs == pytest.approx(teacher.numpy(), abs=1e-5)


def test_headroom_on_a_finished_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "headroom.json"
    assert tool["main"]([str(tiny_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["alone", "last 2 students", "neighbours k=10", "label propagation"]
    for r in result.values():
        assert set(r) == {"unlabeled", "val"} and all(0 <= v <= 100 for v in r.values())
    assert "label propagation" in capsys.readouterr().out
    teacher = tool["headroom"](tiny_run, "teacher")
    assert "last 2 students" not in teacher  # an ensemble of rounds is for the last phase only


def test_headroom_outside_a_run_exits_2(tmp_path, capsys):
    assert tool["main"]([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("label_headroom:") and "\n" not in err
