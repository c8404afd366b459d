"""wandb tracking, offline: read back with wandb's own reader (`wandb leet inspect --json`)."""

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from urllib.parse import urlparse

import numpy as np
import pytest
import wandb

from noisy_student.loop import run
from noisy_student.pseudo_label import PseudoLabels, confidence_extremes
from noisy_student.wandb_logger import logged_in, resolve_mode, wandb_row

WANDB_CLI = Path(sys.executable).parent / "wandb"


def records(run_dir: Path) -> dict[str, list[dict]]:
    """run id -> the records of its offline transaction logs, in order (all sessions)."""
    out: dict[str, list[dict]] = {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        text = subprocess.run([str(WANDB_CLI), "leet", "inspect", "--json", str(log)],
                              capture_output=True, text=True, check=True, timeout=120).stdout
        run_id = log.stem[len("run-"):]
        out.setdefault(run_id, []).extend(json.loads(line) for line in text.splitlines())
    return out


def of_type(recs: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in recs if r["type"] == kind]


@pytest.fixture
def offline(monkeypatch, tiny_config):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return tiny_config.with_overrides(['tracking.mode="offline"',
                                       "tracking.upload_checkpoints=true"])


def test_offline_run_holds_one_wandb_run_per_round_with_round_axis_and_table(offline):
    summary = run(offline)
    out = offline.out_dir
    ids = json.loads((out / "wandb.json").read_text())
    assert set(ids["runs"]) == {"teacher", "round_0", "round_1"}
    recs = records(out)
    assert set(recs) == set(ids["runs"].values())
    runs = {r["run"]["run_id"]: r["run"] for rs in recs.values() for r in rs if r["type"] == "run"}
    assert {r["run_group"] for r in runs.values()} == {ids["group"]}  # one group
    for k, entry in enumerate(summary["rounds"]):
        rid = ids["runs"][f"round_{k}"]
        info = runs[rid]
        assert info["display_name"] == f"tiny/round-{k}" and info["job_type"] == "round"
        config = info["config"]["update"]
        assert config["round"] == k and config["student"]["model"] == entry["student"]
        assert config["student"]["params"] == entry["student_params"]
        assert config["loss"]["temperature"] == offline.loss.temperature  # the full config
        rows = [h["item"] for h in of_type(recs[rid], "history")]
        (result,) = [r for r in rows if "round/student_top1" in r]
        assert result["round"] == k
        for key in ("teacher_top1", "teacher_top5", "teacher_ece", "student_top1", "student_top5",
                    "student_ece",
                    "pseudo_labels_kept", "pseudo_label_accuracy"):
            assert result[f"round/{key}"] == pytest.approx(entry[key])  # == summary.json
        (pl,) = [r for r in rows if "pseudo_labels/kept" in r]
        labels = PseudoLabels.load(out / f"round_{k}" / "pseudo_labels.npz")
        counts = np.bincount(labels.kept_classes(), minlength=10)
        assert [pl[f"pseudo_labels/per_class/{c}"] for c in range(10)] == counts.tolist()
        assert pl["pseudo_labels/mean_confidence"] == pytest.approx(labels.confidence.mean())
        steps = [r for r in rows if "train/step" in r]
        assert steps and {"train/labeled_ce", "train/pseudo_soft_ce", "train/total",
                          "train/lr", "train/images_per_second"} <= set(steps[0])
        (epoch,) = [r for r in rows if "epoch/labeled_train_accuracy" in r]  # epochs = 1
        assert 0 <= epoch["epoch/labeled_train_accuracy"] <= 1 and "epoch/val_top1" in epoch
        metrics = {m.get("glob_name"): m.get("step_metric") for m in of_type(recs[rid], "metric")}
        assert metrics["round/*"] == "round" and metrics["train/*"] == "train/step"
        # the sample table: 2 most + 2 least confident per predicted class
        (table,) = [r for r in rows if "pseudo_labels/samples.nrows" in r]
        expected = confidence_extremes(labels.predicted, labels.confidence_all, 10, 2)
        assert table["pseudo_labels/samples.nrows"] == len(expected)
        data = json.loads((next((out / "wandb").glob(f"offline-run-*-{rid}")) / "files" /
                           table["pseudo_labels/samples.path"]).read_text())
        assert [(row[1], row[3], row[6]) for row in data["data"]] == \
            [(c, which, i) for i, c, _, which in expected]
        assert data["columns"][:3] == ["image", "teacher_label", "confidence"]
        (images,) = [a for a in of_type(recs[rid], "artifact") if a["type"] == "run_table"]
        pngs = [c for c in images["manifest"]["contents"] if c["path"].endswith(".png")]
        assert len(pngs) == len({i for i, *_ in expected})  # one image file per sample
        (artifact,) = [a for a in of_type(recs[rid], "artifact") if a["type"] == "model"]
        assert json.loads(artifact["metadata"])["round"] == k
        assert {c["path"] for c in artifact["manifest"]["contents"]} == {
            "student.safetensors", "pseudo_labels.npz",
            "soft_labels/part-00000-of-00001.probs.npy"}  # the soft labels travel along
    # metrics.jsonl has the same numbers
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["student_top1"] for x in lines if x["event"] == "round"] == \
        [r["student_top1"] for r in summary["rounds"]]


def test_disabled_mode_writes_no_wandb_files(tiny_config, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run(tiny_config.with_overrides(['tracking.mode="disabled"', "rounds=1"]))
    assert not (tiny_config.out_dir / "wandb").exists()
    assert not (tiny_config.out_dir / "wandb.json").exists()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins over the config
    other = tiny_config.with_overrides(['tracking.mode="offline"', "rounds=1",
                                        f'out="{tiny_config.out_dir}-2"'])
    run(other)
    assert not (other.out_dir / "wandb").exists()
    # (only rank 0 talks to wandb: tests/test_distributed.py)


def test_a_failing_wandb_is_a_warning_not_a_lost_run(offline, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no route to host")

    monkeypatch.setattr(wandb, "init", broken)
    with pytest.warns(RuntimeWarning, match="wandb.init failed .*no route to host"):
        summary = run(offline)
    assert len(summary["rounds"]) == 2 and (offline.out_dir / "round_1" / "DONE").is_file()


def test_resume_continues_the_same_wandb_run(offline):
    config = offline.with_overrides(["rounds=1"])
    run(config)
    out = config.out_dir
    first = json.loads((out / "wandb.json").read_text())
    (out / "round_0" / "DONE").unlink()
    (out / "round_0" / "student.safetensors").unlink()
    time.sleep(1.1)  # wandb names offline folders by the second: a real resume comes later
    run(config, resume=True)
    assert json.loads((out / "wandb.json").read_text()) == first
    round0 = first["runs"]["round_0"]
    sessions = sorted(p.name for p in (out / "wandb").glob(f"offline-run-*-{round0}"))
    assert len(sessions) == 2  # two offline fragments of one run id: `wandb sync` joins them
    recs = records(out)[first["runs"]["round_0"]]
    assert len(of_type(recs, "run")) == 2 and len(recs) > 0
    assert len(list((out / "wandb").glob(f"offline-run-*-{first['runs']['teacher']}"))) == 1


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8", b"[1, 2]", b'{"runs": 3}', b""])
def test_a_damaged_wandb_json_is_replaced_and_the_run_goes_on(offline, damage):
    config = offline.with_overrides(["rounds=1"])
    run(config)
    out = config.out_dir
    (out / "wandb.json").write_bytes(damage)
    (out / "round_0" / "DONE").unlink()
    (out / "round_0" / "student.safetensors").unlink()
    with pytest.warns(RuntimeWarning, match="wandb.json") if damage[:1] in (b"\xff", b"[", b"") \
            else contextlib.nullcontext():
        summary = run(config, resume=True)
    assert len(summary["rounds"]) == 1
    ids = json.loads((out / "wandb.json").read_text())
    assert set(ids["runs"]) == {"round_0"}  # a new wandb run for the phase that ran again


def test_mode_resolution(tmp_path):
    assert resolve_mode("auto", {"HOME": str(tmp_path)}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40}) == "online"
    (tmp_path / ".netrc").write_text("machine api.example.org\n  login user\n  password abc\n")
    assert not logged_in({"HOME": str(tmp_path)})  # another server's entry
    assert logged_in({"HOME": str(tmp_path), "WANDB_BASE_URL": "https://api.example.org"})
    host = urlparse(wandb.Settings().base_url).hostname  # this wandb version's default server
    (tmp_path / ".netrc").write_text(f"machine {host}\n  login user\n  password abc\n")
    assert logged_in({"HOME": str(tmp_path)})
    assert resolve_mode("auto", {"HOME": str(tmp_path)}) == "online"
    assert resolve_mode("offline", {"WANDB_MODE": "online"}) == "online"  # WANDB_MODE wins
    assert resolve_mode("online", {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode("disabled", {"HOME": str(tmp_path)}) == "disabled"


def test_wandb_rows_mirror_the_jsonl_events():
    row = wandb_row("step", {"phase": "round 0 student", "step": 4, "epoch": 1, "lr": 0.1,
                             "labeled_ce": 2.0, "total": 3.0})
    assert row == {"train/step": 4, "train/epoch": 1, "train/lr": 0.1,
                   "train/labeled_ce": 2.0, "train/total": 3.0}
    row = wandb_row("pseudo_labels", {"round": 2, "kept": 5, "per_class": [3, 2],
                                      "accuracy": None})
    assert row == {"round": 2, "pseudo_labels/kept": 5, "pseudo_labels/per_class/0": 3,
                   "pseudo_labels/per_class/1": 2}
    assert wandb_row("resume", {"step": 3}) is None


def test_confidence_extremes_by_hand():
    predicted = np.array([0, 0, 0, 1, 0, 1])
    confidence = np.array([0.9, 0.5, 0.7, 0.8, 0.6, 0.4])
    rows = confidence_extremes(predicted, confidence, 3, 1)
    assert rows == [(0, 0, 0.9, "most"), (1, 0, 0.5, "least"), (3, 1, 0.8, "most"),
                    (5, 1, 0.4, "least")]
    # two per class: class 1 has only two images, each listed once
    rows = confidence_extremes(predicted, confidence, 3, 2)
    assert [r[0] for r in rows] == [0, 2, 4, 1, 3, 5]
