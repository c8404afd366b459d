"""tools/oracle_round.py: the hidden labels in place of a round's pseudo-labels; a tiny run."""

import json
import runpy
from pathlib import Path

import numpy as np

from noisy_student.artifacts import open_run
from noisy_student.checkpoint import file_sha256, load_npz
from noisy_student.pseudo_label import PseudoLabels

ROOT = Path(__file__).resolve().parents[1]
tool = runpy.run_path(str(ROOT / "tools" / "oracle_round.py"))


def test_oracle_labels_keep_every_image_and_the_teacher_s_identity():
    meta = {"teacher_sha256": "t", "settings": "s", "temperature": 1.0, "num_classes": 3}
    arrays = {"indices": np.array([0, 0, 2]), "predicted": np.array([1, 2, 0]),
              "confidence_all": np.array([0.9, 0.2, 0.8], np.float32),
              "meta": np.array(json.dumps(meta))}
    truth = np.array([2, 0, 1])
    hard = PseudoLabels.from_arrays(tool["oracle_labels"](arrays, truth))
    assert hard.indices.tolist() == [0, 1, 2] and hard.targets.tolist() == [2, 0, 1]
    assert hard.confidence.tolist() == [1.0, 1.0, 1.0] and hard.soft is None
    assert hard.meta == meta
    arrays["soft_probs"] = np.full((3, 3), 1 / 3, np.float32)
    soft = PseudoLabels.from_arrays(tool["oracle_labels"](arrays, truth))
    assert soft.targets.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    stored = {**arrays, "meta": np.array(json.dumps({**meta, "soft_parts": [{"file": "x"}]}))}
    del stored["soft_probs"]  # soft labels kept in parts beside the .npz: one-hot in memory now
    soft = PseudoLabels.from_arrays(tool["oracle_labels"](stored, truth))
    assert soft.targets.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert "soft_parts" not in soft.meta


def test_a_fraction_of_the_wrong_labels_is_corrected_and_the_right_ones_stay():
    meta = {"num_classes": 3}
    arrays = {"indices": np.array([3]), "predicted": np.array([1, 2, 0, 0, 1]),
              "confidence_all": np.ones(5, np.float32), "meta": np.array(json.dumps(meta))}
    truth = np.array([2, 0, 1, 0, 1])  # images 0, 1, 2 wrong, 3 and 4 right
    for fix, still_wrong in [(0.0, 3), (2 / 3, 1), (1.0, 0)]:
        labels = tool["oracle_labels"](arrays, truth, fix, seed=7)["predicted"]
        assert (labels != truth).sum() == still_wrong
        assert labels[3:].tolist() == [0, 1]
        assert set(np.flatnonzero(labels != truth)) <= {0, 1, 2}
    assert tool["oracle_labels"](arrays, truth, 0.0)["predicted"].tolist() == [1, 2, 0, 0, 1]
    draws = {tuple(tool["oracle_labels"](arrays, truth, 1 / 3, seed)["predicted"])
             for seed in range(20)}
    assert len(draws) == 3  # which wrong label gets corrected is drawn: each of the three


def test_a_round_trained_again_on_the_hidden_labels_leaves_the_source_alone(tiny_run, tmp_path):
    source = tiny_run / "round_1" / "pseudo_labels.npz"
    before = file_sha256(source)
    out, results = tmp_path / "oracle", tmp_path / "results.json"
    assert tool["main"]([str(tiny_run), "1", "--out", str(out), "--results", str(results)]) == 0
    truth = open_run(tiny_run).splits().unlabeled.labels
    labels = load_npz(out / "round_1" / "pseudo_labels.npz")
    assert labels["predicted"].tolist() == truth.tolist()
    assert all((out / "round_1" / name).is_file() for name in ("DONE", "student.safetensors"))
    # round 0 and the teacher are the source's files, linked; the source's labels are untouched
    assert file_sha256(out / "round_0" / "student.safetensors") == \
        file_sha256(tiny_run / "round_0" / "student.safetensors")
    assert file_sha256(source) == before
    assert json.loads((tiny_run / "config.json").read_text())["rounds"] == 2
    # the row: the new student's figures beside the run's own round 1, with the commit
    (row,) = json.loads(results.read_text())["headroom"]["rows"].values()
    new = json.loads((out / "summary.json").read_text())["rounds"][-1]
    own = json.loads((tiny_run / "summary.json").read_text())["rounds"][1]
    assert row["labels"] == 1.0 and row["student_val"] == new["student_val_top1"]
    assert row["run_labels"] == own["pseudo_label_accuracy"]
    assert row["run_student_test"] == own["student_top1"] and row["provenance"]["commit"]
    report = results.with_suffix(".md").read_text()
    assert "| digits | 0 | 1 | hidden (perfect) | 100.00 |" in report


def test_the_headroom_table_lists_perfect_labels_first_then_the_corrected_fractions():
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))
    row = {"dataset": "d", "seed": 0, "round": 5, "labels": 0.95, "student_val": 0.9,
           "student_test": 0.89, "run_labels": 0.9, "run_student_val": 0.88,
           "run_student_test": 0.87, "minutes": 5.04}
    text = "\n".join(report["headroom_section"]({"rows": {
        "a": {**row, "fix": 0.5}, "b": {**row, "fix": 1.0, "labels": 1.0}}}))
    perfect = ("| d | 0 | 5 | hidden (perfect) | 100.00 | 90.00 | 89.00 | 90.00 / 88.00 / 87.00 "
               "| 5.0 |")
    half = "| d | 0 | 5 | the teacher's, 50% of its errors corrected | 95.00 |"
    assert perfect in text and half in text and text.index(perfect) < text.index(half)
    assert "| unrecorded (older code) |" in text  # no provenance in these rows


def test_bad_requests_exit_2_and_name_the_cause(tiny_run, tmp_path, capsys):
    assert tool["main"]([str(tmp_path), "0", "--out", str(tmp_path / "a")]) == 2
    assert "not inside a run directory" in capsys.readouterr().err
    assert tool["main"]([str(tiny_run), "5", "--out", str(tmp_path / "b")]) == 2
    assert "round 5 has no pseudo-labels" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert tool["main"]([str(tiny_run), "1", "--out", str(tiny_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert tool["main"]([str(tiny_run), "1", "--out", str(tmp_path / "c"), "--fix", "1.5"]) == 2
    assert "--fix 1.5" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert tool["main"]([str(tiny_run), "1", "--out", str(tmp_path / "d"),
                         "--set", "train.epochs=-1"]) == 2
    assert "train.epochs" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_a_round_trained_again_at_other_settings_says_which(tiny_run, tmp_path):
    """`--set train.epochs=E` trains the round's student for E epochs on the hidden labels; the
    row names the setting, and is a row of its own beside the one at the run's settings."""
    out, results = tmp_path / "longer", tmp_path / "results.json"
    epochs = json.loads((tiny_run / "config.json").read_text())["train"]["epochs"] + 1
    for folder, more in ((tmp_path / "same", []), (out, ["--set", f"train.epochs={epochs}"])):
        assert tool["main"]([str(tiny_run), "1", "--out", str(folder), "--results",
                             str(results), *more]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == epochs
    trained = json.loads((out / "round_1" / "metrics.json").read_text())["train"]
    assert max(e.get("epoch", 0) for e in trained) == epochs
    rows = json.loads(results.read_text())["headroom"]["rows"]
    assert sorted(r["overrides"] for r in rows.values()) == [[], [f"train.epochs={epochs}"]]
    assert f"| hidden (perfect), `train.epochs={epochs}` |" in results.with_suffix(".md").read_text()
