"""Crash, stop and restart a run; it must end exactly as a run that never stopped.

The digits recipe runs in subprocesses on a tiny slice (teacher: 4 steps x 3 epochs, then one
round of 5 steps x 2 epochs, a checkpoint every 3 steps), killed at chosen points by
tests/fault_run.py, then resumed with --resume.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from noisy_student.checkpoint import load_npz

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--rounds", "1", "--set", "data.labeled_per_class=5", "--set", "data.unlabeled_limit=200",
        "--set", "data.test_limit=100", "--set", 'model.ladder=["cnn_tiny"]',
        "--set", "train.teacher_epochs=3", "--set", "train.epochs=2", "--set",
        "train.batch_size=16", "--set", "pseudo_label.threshold=0", "--set",
        "checkpoint.every_steps=3", "--set", "train.sanity_gate=false"]  # a teacher near chance
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
# teacher steps 1..12 (epoch ends 4, 8, 12); the round 0 student: steps 13..22 (ends 17, 22)
FAULTS = {
    "teacher mid-epoch": "kill-at-step:7",
    "student mid-epoch": "kill-at-step:19",
    "between pseudo-labeling and training": "kill-before-train:round 0 student",
    "during a checkpoint write": "kill-in-ckpt-write:5",
}


def launch(out: Path, fault: str = "none", *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "tests" / "fault_run.py"), fault,
           str(ROOT / "recipes" / "digits.py"), "--out", str(out), *TINY, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def outcome(run: Path) -> dict:
    """Everything a run produced that must not depend on interruptions (times excluded)."""
    def metrics(path: Path) -> dict:
        data = json.loads(path.read_text())
        for key in ("seconds", "timing", "resumed_from"):
            data.pop(key, None)
        for epoch in data.get("train", []):
            epoch.pop("images_per_second")
        return data

    labels = load_npz(run / "round_0" / "pseudo_labels.npz")
    return {"teacher": metrics(run / "teacher" / "metrics.json"),
            "round_0": metrics(run / "round_0" / "metrics.json"),
            "pseudo_labels": {k: v.tolist() for k, v in labels.items()}}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run (read-only for the tests)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, stdout, stderr = finish(launch(out))
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    return outcome(reference_run)


def test_killed_runs_resume_to_identical_results(reference_run, reference, tmp_path):
    runs = {name: tmp_path / name.replace(" ", "_") for name in FAULTS}
    killed = {name: launch(runs[name], fault) for name, fault in FAULTS.items()}  # in parallel
    for name, proc in killed.items():
        code, _, err = finish(proc)
        assert code == -signal.SIGKILL, f"{name}: {err}"
        assert not (runs[name] / "round_0" / "DONE").exists()
    assert list((runs["during a checkpoint write"] / "teacher" / "checkpoints").glob(".*.tmp"))
    resumed = {name: launch(runs[name], "none", "--resume") for name in FAULTS}
    for name, proc in resumed.items():
        code, out, err = finish(proc)
        assert code == 0, f"{name}: {err}"
        result = outcome(runs[name])
        assert result == reference, name  # weights (sha256), test metrics, history, labels
    # each resumed where it stopped, not from the start
    r0 = json.loads((runs["student mid-epoch"] / "round_0" / "metrics.json").read_text())
    assert r0["resumed_from"].endswith("step-00000006.ckpt")  # step 18 of the process
    # its training time counts the killed process's part too (kept in the checkpoint)
    assert 0 < r0["timing"]["train_before_resume"] < r0["timing"]["train"] <= r0["seconds"]
    uninterrupted = json.loads((reference_run / "round_0" / "metrics.json").read_text())
    assert uninterrupted["timing"]["train_before_resume"] == 0
    log = (runs["during a checkpoint write"] / "metrics.jsonl").read_text()
    resumes = [json.loads(line) for line in log.splitlines() if '"resume"' in line]
    # the 5th write (step 9) was torn: resumed from step 8, the newest whole checkpoint
    assert [(r["phase"], r["step"]) for r in resumes] == [("teacher", 8)]
    # a finished phase keeps only its final checkpoint; the torn temporary file is gone
    assert [p.name for p in (runs["teacher mid-epoch"] / "teacher" / "checkpoints").iterdir()] \
        == ["step-00000012.ckpt"]


def test_sigterm_checkpoints_exits_143_and_the_printed_command_resumes(reference, tmp_path):
    out = tmp_path / "run"
    code, _, err = finish(launch(out, "term-at-step:19", "--overwrite"))
    assert code == 143, err
    assert "SIGTERM" in err and "checkpoint written:" in err
    saved = Path(err.split("checkpoint written: ")[1].split()[0])
    assert saved.parent == out / "round_0" / "checkpoints" and saved.is_file()
    assert saved.name == "step-00000007.ckpt"  # the step it was on: the 19th of the process
    command = err.strip().splitlines()[-1].strip()
    assert command.endswith("--resume") and "--overwrite" not in command
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert outcome(out) == reference


def test_from_round_branch_reuses_pseudo_labels_and_reproduces_the_round(reference_run,
                                                                         reference, tmp_path):
    first = reference_run
    branch = tmp_path / "branch"
    code, stdout, err = finish(launch(branch, "none", "--from-round", "0", "--from-run",
                                      str(first)))
    assert code == 0, err
    assert "reusing the pseudo-labels" in stdout
    assert outcome(branch) == reference
    assert np.array_equal(load_npz(branch / "round_0" / "pseudo_labels.npz")["indices"],
                          load_npz(first / "round_0" / "pseudo_labels.npz")["indices"])
    # the teacher folder is shared (hard links), the old run is untouched
    assert (branch / "teacher" / "model.safetensors").stat().st_ino == \
        (first / "teacher" / "model.safetensors").stat().st_ino
    assert (first / "round_0" / "DONE").is_file()
