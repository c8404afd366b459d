"""torchrun with 2 gloo processes on the CPU: one set of outputs, the same pseudo-labels."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from noisy_student.pseudo_label import PseudoLabels

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--rounds", "1", "--set", "data.labeled_per_class=5", "--set", "data.unlabeled_limit=200",
        "--set", "data.test_limit=100", "--set", 'model.ladder=["cnn_tiny"]',
        "--set", "train.teacher_epochs=3", "--set", "train.epochs=2", "--set",
        "train.batch_size=16", "--set", "pseudo_label.threshold=0", "--set",
        "checkpoint.every_steps=3", "--set", 'tracking.mode="disabled"',
        "--set", "train.sanity_gate=false",  # a teacher near chance
        # soft labels: each rank writes its part of them (the digits recipe's own are hard)
        "--set", 'pseudo_label.kind="soft"', "--set", 'loss.distillation="soft_ce"']
ENV = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
ENV.update(OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, fault: str = "none", nproc: int = 0, *extra: str,
           timeout: float = 300) -> subprocess.CompletedProcess:
    script = [str(ROOT / "tests" / "fault_run.py"), fault, str(ROOT / "recipes" / "digits.py"),
              "--out", str(out), *TINY, *extra]
    runner = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_port()}"] if nproc
              else [sys.executable])
    return subprocess.run([*runner, *script], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    done = launch(out)
    assert done.returncode == 0, done.stderr
    return out


def loaded(single: Path) -> list[str]:
    """Round 0's teacher of the single-process run, loaded: the same teacher for every run."""
    teacher = single / "teacher" / "model.safetensors"
    return ["--set", "train.teacher_epochs=0", "--set", f'model.teacher_checkpoint="{teacher}"']


@pytest.fixture(scope="module")
def ddp(single, tmp_path_factory) -> Path:
    """2 ranks, the single run's teacher; rank 1 crashes if it writes any run file but its
    part of the soft labels; wandb offline."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = launch(out, "forbid-writes-off-rank0", 2, *loaded(single),
                  "--set", 'tracking.mode="offline"')
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_ranks_write_one_run_with_the_same_pseudo_labels(single, ddp):
    out = ddp
    assert (out / "round_0" / "DONE").is_file()
    a = PseudoLabels.load(single / "round_0" / "pseudo_labels.npz")
    b = PseudoLabels.load(out / "round_0" / "pseudo_labels.npz")
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.predicted, b.predicted)
    np.testing.assert_allclose(a.targets, b.targets, atol=2e-3)  # float16 soft labels, last bits
    # each rank wrote its own part of the soft labels (its shard of the images, in order)
    parts = b.meta["soft_parts"]
    assert [p["stem"] for p in parts] == ["soft_labels/part-00000-of-00002",
                                          "soft_labels/part-00001-of-00002"]
    assert sum(p["rows"] for p in parts) == len(b.predicted) and parts[0]["rows"] > 0
    # only rank 0 talks to wandb: one offline run per phase (teacher, round 0)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2
    events = [json.loads(x)["event"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("round") == 1 and events.count("teacher") == 1  # written once
    ours = json.loads((out / "round_0" / "metrics.json").read_text())
    theirs = json.loads((single / "round_0" / "metrics.json").read_text())
    assert ours["train"][-1]["step"] == theirs["train"][-1]["step"]  # same global batches
    # BN statistics over half batches differ: accuracy matches within a tolerance, not exactly
    assert abs(ours["student_top1"] - theirs["student_top1"]) <= 0.10


def test_a_killed_rank_ends_the_job_with_an_error(tmp_path):
    start = time.perf_counter()
    done = launch(tmp_path / "run", "rank1:kill-at-step:5", 2, timeout=240)
    assert done.returncode != 0
    assert time.perf_counter() - start < 200
    assert "-9" in done.stderr or "SIGKILL" in done.stderr or "Signals.SIGKILL" in done.stderr


def test_sigterm_to_one_rank_stops_both_and_resume_under_torchrun_matches(single, ddp,
                                                                          tmp_path):
    out = tmp_path / "stopped"
    stopped = launch(out, "rank0:term-at-step:7", 2, *loaded(single))  # round 0, mid-epoch 2
    assert stopped.returncode != 0 and "SIGTERM" in stopped.stderr
    newest = sorted((out / "round_0" / "checkpoints").glob("step-*.ckpt"))[-1]
    assert newest.name == "step-00000007.ckpt"  # both ranks stopped after the same step
    resumed = launch(out, "none", 2, *loaded(single), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((ddp / "round_0" / "metrics.json").read_text())  # never stopped
    b = json.loads((out / "round_0" / "metrics.json").read_text())
    assert b["student_sha256"] == a["student_sha256"] and b["test"] == a["test"]


def test_agree_reduces_on_the_cpu_in_one_gloo_group_under_nccl(tmp_path, monkeypatch):
    """Under nccl the flags go through a gloo group made once, never a CUDA tensor (a wait for
    the GPU every step); here a one-process gloo run that says it is nccl's."""
    import torch.distributed as dist

    from noisy_student import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        made, reduced = [], []
        real_new_group, real_all_reduce = dist.new_group, dist.all_reduce
        monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
        monkeypatch.setattr(dist, "new_group", lambda **kw: made.append(kw) or
                            real_new_group(**kw))
        monkeypatch.setattr(dist, "all_reduce", lambda t, op, group: reduced.append(
            (t.device.type, group)) or real_all_reduce(t, op=op, group=group))
        assert distributed.agree([True, False]) == [True, False]
        assert distributed.agree([False, False]) == [False, False]
        assert made == [{"backend": "gloo"}]  # one group for the whole run
        assert [d for d, _ in reduced] == ["cpu", "cpu"]
        assert reduced[0][1] is reduced[1][1] is not dist.group.WORLD
    finally:
        distributed.teardown()
    assert not distributed.active() and not distributed._CPU_GROUPS
