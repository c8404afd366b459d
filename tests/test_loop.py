"""The whole loop on a tiny slice of digits, and the refusals that protect a run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from noisy_student.checkpoint import RunDirError
from noisy_student.config import ConfigError
from noisy_student.data import load_source, make_splits
from noisy_student.loop import SUMMARY_COLUMNS, Loop, run
from noisy_student.run_dir import RunStart
from noisy_student.pseudo_label import PseudoLabels

from conftest import make_tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_two_round_run_writes_every_documented_file(tiny_config, capsys):
    summary = run(tiny_config)
    out = tiny_config.out_dir
    for name in ("config.json", "splits.json", "summary.json", "metrics.jsonl",
                 "teacher/model.safetensors", "teacher/metrics.json", "teacher/DONE"):
        assert (out / name).is_file(), name
    for k in range(2):
        for name in ("pseudo_labels.npz", "student.safetensors", "metrics.json", "DONE"):
            assert (out / f"round_{k}" / name).is_file(), f"round_{k}/{name}"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [r["round"] for r in on_disk["rounds"]] == [0, 1]
    for entry in on_disk["rounds"]:
        assert set(SUMMARY_COLUMNS) <= set(entry)
        assert 0.0 <= entry["student_top1"] <= entry["student_top5"] <= 1.0
        assert entry["pseudo_label_accuracy"] is not None
    # round 1's teacher is round 0's student
    assert on_disk["rounds"][1]["teacher_top1"] == on_disk["rounds"][0]["student_top1"]
    assert on_disk["rounds"][0]["teacher_top1"] == on_disk["teacher"]["top1"]
    assert on_disk["rounds"][1]["student"] == "cnn_small"
    # the DONE manifest lists the folder's files
    done = json.loads((out / "round_1" / "DONE").read_text())
    assert set(done["files"]) == {"pseudo_labels.npz", "student.safetensors", "metrics.json"}
    # pseudo-labels name their teacher; soft labels are a part file beside them, one per rank
    pl = PseudoLabels.load(out / "round_1" / "pseudo_labels.npz")
    round0 = json.loads((out / "round_0" / "metrics.json").read_text())
    assert pl.meta["teacher_sha256"] == round0["student_sha256"]
    parts = sorted(p.name for p in (out / "round_1" / "soft_labels").iterdir())
    assert parts == ["part-00000-of-00001.probs.npy"]
    assert len(pl.soft) == len(pl.predicted) == 200  # every unlabeled image, kept or not
    np.testing.assert_allclose(pl.targets.sum(1), 1.0, atol=2e-3)
    assert (pl.targets.argmax(1) == pl.kept_classes()).all()  # T = 1 keeps the argmax
    # per-epoch and per-step lines with every loss part
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch" and r["phase"] == "round 0 student"]
    assert epochs and {"labeled_ce", "pseudo_soft_ce", "total", "lr"} <= set(epochs[0])
    assert any(r["event"] == "step" for r in lines)
    assert "student test" in capsys.readouterr().out  # the table is printed
    # every phase is scored on validation beside test, in metrics.json and the summary
    assert on_disk["teacher"]["val_top1"] == json.loads(
        (out / "teacher" / "metrics.json").read_text())["val"]["top1"]
    for k, entry in enumerate(on_disk["rounds"]):
        metrics = json.loads((out / f"round_{k}" / "metrics.json").read_text())
        assert metrics["val"]["n"] == 50 and metrics["test"]["n"] == 100
        assert entry["student_val_top1"] == metrics["val"]["top1"]
        assert entry["student_top1"] == metrics["test"]["top1"]
    assert {"val_top1", "val_ece"} <= set(epochs[-1]) and "test_top1" not in epochs[-1]


def test_the_hidden_labels_of_the_unlabeled_pool_never_reach_the_weights(tmp_path, monkeypatch):
    """Permuting the unlabeled images' hidden labels changes what they measure (pseudo-label
    accuracy), never the trained student."""
    import noisy_student.loop as loop_module

    def permuted(source, cfg, seed):
        splits = make_splits(source, cfg, seed)
        splits.unlabeled.labels = np.random.default_rng(5).permutation(splits.unlabeled.labels)
        return splits

    config = make_tiny_config(tmp_path / "plain").replace(rounds=1)
    plain = run(config)
    monkeypatch.setattr(loop_module, "make_splits", permuted)
    shuffled = run(config.replace(out=str(tmp_path / "shuffled")))
    sha = [json.loads((tmp_path / o / "round_0" / "metrics.json").read_text())["student_sha256"]
           for o in ("plain", "shuffled")]
    assert sha[0] == sha[1]
    assert (plain["rounds"][0]["pseudo_label_accuracy"]
            != shuffled["rounds"][0]["pseudo_label_accuracy"])


def test_splits_are_reproducible_and_disjoint(tiny_config):
    a = make_splits(load_source(tiny_config.data), tiny_config.data, 3)
    b = make_splits(load_source(tiny_config.data), tiny_config.data, 3)
    c = make_splits(load_source(tiny_config.data), tiny_config.data, 4)
    assert a.record == b.record and a.record["labeled"] != c.record["labeled"]
    lab, unl, test = (set(a.record[k]) for k in ("labeled", "unlabeled", "test"))
    assert not (lab & unl) and not (lab & test) and not (unl & test)
    assert np.bincount(a.labeled.labels).tolist() == [5] * 10


def test_smaller_student_is_refused(tiny_config):
    small_last = tiny_config.with_overrides(['model.ladder=["cnn_small", "cnn_tiny"]'])
    with pytest.raises(ConfigError, match="smaller than its teacher"):
        Loop(small_last)
    allowed = small_last.with_overrides(["model.allow_smaller_student=true"])
    Loop(allowed, RunStart(overwrite=True))  # accepted


def test_existing_run_directory_is_refused(tiny_config):
    out = tiny_config.out_dir
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old result")
    with pytest.raises(RunDirError, match="already holds a run"):
        Loop(tiny_config)
    assert (out / "keep.txt").read_text() == "old result"


def test_recipe_script_and_console_script_agree(tmp_path):
    args = ["--rounds", "2", "--out", str(tmp_path / "x"), "--set", "loss.temperature=2",
            "--print-config"]
    direct = subprocess.run([sys.executable, str(ROOT / "recipes" / "digits.py"), *args],
                            capture_output=True, text=True, check=True)
    via_cli = subprocess.run([sys.executable, "-m", "noisy_student.cli", "run",
                              str(ROOT / "recipes" / "digits.py"), *args],
                             capture_output=True, text=True, check=True)
    assert direct.stdout == via_cli.stdout
    config = json.loads(direct.stdout)
    assert config["rounds"] == 2 and config["loss"]["temperature"] == 2.0


def test_recipe_reports_bad_override_with_exit_2(tmp_path):
    bad = subprocess.run([sys.executable, str(ROOT / "recipes" / "digits.py"), "--set",
                          "loss.temprature=2", "--out", str(tmp_path / "y")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "did you mean 'temperature'" in bad.stderr
    assert not (tmp_path / "y").exists()


def test_round0_teacher_loaded_from_a_checkpoint(tiny_config, tmp_path):
    first = run(tiny_config.with_overrides(["rounds=1"]))
    weights = tiny_config.out_dir / "teacher" / "model.safetensors"
    loaded = tiny_config.with_overrides([
        "rounds=1", f'out="{tmp_path / "second"}"', "train.teacher_epochs=0",
        f'model.teacher_checkpoint="{weights}"'])
    second = run(loaded)
    assert second["teacher"]["top1"] == first["teacher"]["top1"]
    assert second["teacher"]["sha256"] == first["teacher"]["sha256"]
    assert second["teacher"]["loaded_from"] == str(weights)


def _without_seconds(summary):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["rounds"]]


def test_resume_after_a_crash_between_rounds_matches_an_uninterrupted_run(tiny_config, capsys):
    full = run(tiny_config)
    out = tiny_config.out_dir
    first = json.loads((out / "round_1" / "metrics.json").read_text())
    # a crash in round 1: its folder has no DONE, the student file was never written
    (out / "round_1" / "DONE").unlink()
    (out / "round_1" / "student.safetensors").unlink()
    capsys.readouterr()
    resumed = run(tiny_config, resume=True)
    printed = capsys.readouterr().out
    assert "round 0: finished" in printed
    # round 1's final training checkpoint survived: nothing is retrained
    assert "resume: continuing from" in printed and "round 1 student epoch" not in printed
    again = json.loads((out / "round_1" / "metrics.json").read_text())
    assert again["student_sha256"] == first["student_sha256"]  # identical weights
    assert again["test"] == first["test"]
    assert _without_seconds(resumed) == _without_seconds(full)
    assert (out / "round_1" / "DONE").is_file()


def test_a_moved_run_directory_resumes_where_it_lies(tiny_config, tmp_path):
    """Moving a run (scratch disk -> laptop) changes only `out`: it resumes without flags, and
    its config.json then names the new place."""
    import shutil

    full = run(tiny_config)
    first = json.loads((tiny_config.out_dir / "round_1" / "metrics.json").read_text())
    (tiny_config.out_dir / "round_1" / "DONE").unlink()  # a crash in round 1
    (tiny_config.out_dir / "round_1" / "student.safetensors").unlink()
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tiny_config.out_dir), moved)
    config = tiny_config.with_overrides([f'out="{moved}"'])
    resumed = run(config, resume=True)
    again = json.loads((moved / "round_1" / "metrics.json").read_text())
    assert again["student_sha256"] == first["student_sha256"]
    assert _without_seconds(resumed) == _without_seconds(full)
    assert json.loads((moved / "config.json").read_text())["out"] == str(moved)
    assert not (moved / "previous").exists()  # not a config change: nothing set aside


def test_resume_refuses_a_changed_config_with_a_diff(tiny_config):
    run(tiny_config.with_overrides(["rounds=1"]))
    changed = tiny_config.with_overrides(["rounds=1", "loss.temperature=3"])
    with pytest.raises(ConfigError) as e:
        run(changed, resume=True)
    assert "loss.temperature: saved 1.0, now 3.0" in str(e.value)
    with pytest.raises(RunDirError, match="nothing to resume"):
        run(tiny_config.with_overrides(['out="/nonexistent/run"']), resume=True)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_resume_names_a_damaged_file(tiny_config, damage):
    config = tiny_config.with_overrides(["rounds=1"])
    run(config)
    weights = config.out_dir / "round_0" / "student.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    else:
        data[-5] ^= 0xFF  # inside the last tensor: safetensors itself would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="round_0/student.safetensors") as e:
        run(config, resume=True)
    assert ("truncated" in str(e.value)) == (damage == "truncate")


def _round(out, k):
    data = json.loads((out / f"round_{k}" / "metrics.json").read_text())
    return data["student_sha256"], data["test"]


def test_from_round_in_place_reproduces_later_rounds_and_moves_the_old_ones_aside(tiny_config,
                                                                                 capsys):
    config = tiny_config.with_overrides(["rounds=3"])
    full = run(config)
    out = config.out_dir
    before = {k: _round(out, k) for k in range(3)}
    capsys.readouterr()
    again = run(config, from_round=1)
    printed = capsys.readouterr().out
    assert "round 0: finished" in printed and "reusing the pseudo-labels" in printed
    assert {k: _round(out, k) for k in range(3)} == before  # rounds 1 and 2 reproduced
    assert _without_seconds(again) == _without_seconds(full)
    (previous,) = (out / "previous").iterdir()  # nothing deleted: the old rounds are kept
    assert sorted(p.name for p in previous.iterdir()) == ["config.json", "round_1", "round_2",
                                                          "summary.json"]
    assert json.loads((previous / "round_2" / "metrics.json").read_text())["student_sha256"] \
        == before[2][0]
    # reused pseudo-labels bring their soft-label parts along: the new round folder is whole
    reused = PseudoLabels.load(out / "round_1" / "pseudo_labels.npz")
    assert (out / "round_1" / "soft_labels" / "part-00000-of-00001.probs.npy").is_file()
    assert len(reused.soft) == len(reused.predicted)


def test_from_round_with_other_pseudo_label_settings_recomputes_them(tiny_config, capsys):
    run(tiny_config)
    out = tiny_config.out_dir
    round0 = _round(out, 0)
    changed = tiny_config.with_overrides(["pseudo_label.balance=false"])
    capsys.readouterr()
    run(changed, from_round=1)
    printed = capsys.readouterr().out
    assert "not reusing" in printed and "pseudo_label.balance: saved True, now False" in printed
    assert _round(out, 0) == round0  # kept as it was
    meta = PseudoLabels.load(out / "round_1" / "pseudo_labels.npz").meta
    assert meta["balance"] is False
    assert json.loads((out / "config.json").read_text())["pseudo_label"]["balance"] is False


def test_from_round_with_a_teacher_file(tiny_config):
    run(tiny_config)
    out = tiny_config.out_dir
    before = _round(out, 1)
    (final,) = (out / "round_0" / "checkpoints").iterdir()  # round 0's final training state
    run(tiny_config, from_round=1, teacher=str(final))
    assert _round(out, 1) == before  # same teacher weights: the same round 1
    assert json.loads((out / "round_1" / "metrics.json").read_text())["teacher_from"] == str(final)
    # interrupted, then resumed: round 1 keeps the given teacher (a copy in its folder)
    (out / "round_1" / "DONE").unlink()
    (out / "round_1" / "student.safetensors").unlink()
    final.unlink()
    run(tiny_config, resume=True)
    assert _round(out, 1) == before
    assert (out / "round_1" / "teacher.safetensors").is_file()


def test_from_round_refusals(tiny_config, tmp_path):
    with pytest.raises(RunDirError, match="add --from-run"):
        run(tiny_config, from_round=0)
    run(tiny_config.with_overrides(["rounds=1"]))
    (tiny_config.out_dir / "round_0" / "DONE").unlink()
    with pytest.raises(RunDirError, match="round_0 is not finished"):
        run(tiny_config, from_round=1)
    with pytest.raises(ConfigError, match="exclude each other"):
        run(tiny_config, resume=True, from_round=1)
    with pytest.raises(RunDirError, match="no such file"):
        run(tiny_config, from_round=1, teacher=str(tmp_path / "missing.ckpt"))


def test_resume_with_an_allowed_config_change_records_it(tiny_config, capsys):
    config = tiny_config.with_overrides(["rounds=1"])
    run(config)
    changed = config.with_overrides(["checkpoint.keep=5"])
    run(changed, resume=True, allow_config_change=("checkpoint",))
    assert "checkpoint.keep: saved 2, now 5" in capsys.readouterr().out
    assert json.loads((config.out_dir / "config.json").read_text())["checkpoint"]["keep"] == 5
    (previous,) = (config.out_dir / "previous").iterdir()
    assert json.loads((previous / "config.json").read_text())["checkpoint"]["keep"] == 2


def test_overwrite_replaces_the_old_run_but_not_other_files(tiny_config):
    run(tiny_config)
    out = tiny_config.out_dir
    (out / "notes.txt").write_text("mine")
    run(tiny_config.with_overrides(["rounds=1"]), overwrite=True)
    assert not (out / "round_1").exists()  # no stale round of the old run
    assert (out / "notes.txt").read_text() == "mine"


def test_a_warm_started_student_starts_from_its_teacher(tiny_config):
    """model.student_init = 'teacher': at a vanishing learning rate each student ends where it
    began, on the weights of the model before it (round 0's teacher, then round 0's student);
    from scratch it does not. A student of another model is refused with the reason."""
    still = tiny_config.with_overrides(['model.ladder=["cnn_tiny"]', "train.lr=1e-12",
                                        "train.weight_decay=0"])
    run(still.with_overrides(['model.student_init="teacher"']))
    out = tiny_config.out_dir

    def params(path):
        return {k: v for k, v in load_file(path).items() if "running" not in k
                and "num_batches" not in k}

    teacher, first, second = (params(out / p) for p in (
        "teacher/model.safetensors", "round_0/student.safetensors", "round_1/student.safetensors"))
    for earlier, later in ((teacher, first), (first, second)):
        assert all(torch.allclose(earlier[k], later[k], atol=1e-6) for k in earlier)
    run(still.with_overrides([f'out="{out}-scratch"', "rounds=1"]))
    scratch = params(Path(f"{out}-scratch") / "round_0/student.safetensors")
    assert not all(torch.allclose(teacher[k], scratch[k], atol=1e-3) for k in teacher)
    with pytest.raises(ConfigError, match="round 1's student cnn_small from its teacher "
                                          "cnn_tiny's weights, so it must be the same model or "
                                          "a deeper one of its family: .* not widen"):
        Loop(tiny_config.with_overrides(['model.student_init="teacher"']),
             RunStart(overwrite=True))


def test_a_deeper_student_starts_as_its_teacher(tiny_config):
    """model.student_init = 'teacher' with a deeper student (cnn_tiny, then cnn_tiny with two
    blocks a stage): at a vanishing learning rate the student ends with its teacher's tensors
    and its added blocks' last convs still zero (Net2DeeperNet), so it computes its teacher."""
    config = tiny_config.with_overrides([
        'model.ladder=["cnn_tiny", "cnn_tiny(depth=2)"]', "rounds=1", "train.lr=1e-12",
        "train.weight_decay=0", 'model.student_init="teacher"'])
    run(config)
    teacher, student = (load_file(config.out_dir / p) for p in (
        "teacher/model.safetensors", "round_0/student.safetensors"))
    assert set(teacher) < set(student)
    assert all(torch.allclose(v, student[k], atol=1e-6) for k, v in teacher.items()
               if "running" not in k and "num_batches" not in k)
    added = [f"stages.{s}.1.conv2.weight" for s in range(3)]
    assert all(k not in teacher and student[k].abs().max() < 1e-6 for k in added)


def _teacher_steps(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x.get("event") == "step" and x.get("phase") == "teacher"]


def test_a_consistency_teacher_learns_from_view_pairs_of_the_unlabeled_images(tiny_config):
    """train.teacher_consistency: round 0's teacher takes unlabeled_ratio x batch_size view pairs
    a step besides its labeled batch, for as many steps as without them (3 epochs of 50 labeled
    images at 16: 12 steps), logging the consistency loss and the share of images above the
    threshold: every image at 0.1 (no prediction over 10 classes is less sure), none at a
    threshold no prediction reaches, where the unlabeled term is zero at every step."""
    config = tiny_config.with_overrides(["rounds=1", "train.teacher_consistency=true",
                                         "train.consistency_threshold=0.1"])
    run(config)
    steps = _teacher_steps(config.out_dir)
    assert [x["step"] for x in steps] == [2, 4, 6, 8, 10, 12]
    assert all(x["pseudo_mask"] == 1 and x["pseudo_consistency"] > 0 for x in steps)
    never = config.with_overrides([f'out="{tiny_config.out_dir}-never"',  # batch noise too
                                   "train.consistency_threshold=0.9999999",
                                   'noise.backend="torch"'])
    run(never)
    steps = _teacher_steps(never.out_dir)
    assert len(steps) == 6 and all(x["pseudo_consistency"] == 0 == x["pseudo_mask"]
                                   for x in steps)
