"""Checkpoint files, their damage detection, RNG and data-position restore, signals, refusals."""

import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from noisy_student.checkpoint import (CheckpointError, TrainCheckpoints, load_checkpoint,
                                      load_weights, save_checkpoint, save_json)
from noisy_student.cli import resume_command
from noisy_student.config import ConfigError
from noisy_student.run_dir import RunStart, check_config_change
from noisy_student.signals import GracefulStop, Interrupted
from noisy_student.train import StreamSampler, rng_state, set_rng_state


class NotATensor:
    """An arbitrary object: a checkpoint holding one must not be unpickled."""


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"model": nn.Linear(3, 2).state_dict(), "run": {"step": 7, "history": [{"a": 1.5}]},
            "rng": rng_state(), "ema": None}


def test_checkpoint_round_trip_keeps_tensors_and_plain_values(tmp_path):
    path = tmp_path / "step-00000007.ckpt"
    state = _state()
    save_checkpoint(path, state, {"step": 7, "epoch": 1, "context": {"phase": "x"}})
    header, loaded = load_checkpoint(path)
    assert header["step"] == 7 and header["format"] == 1 and header["context"] == {"phase": "x"}
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["run"] == state["run"] and loaded["ema"] is None
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated checkpoint"), ("flip", "corrupt checkpoint"),
    ("magic", "not a noisy-student checkpoint"), ("header", "damaged checkpoint header"),
    ("missing", "cannot read checkpoint")])
def test_damaged_checkpoint_is_reported_by_name(tmp_path, damage, message):
    path = tmp_path / "step-00000003.ckpt"
    save_checkpoint(path, _state(), {"step": 3, "epoch": 0, "context": {}})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-50]
    elif damage == "flip":
        data[-20] ^= 0x01
    elif damage == "magic":
        data[0] ^= 0xFF
    elif damage == "header":
        data[data.index(b"{") + 1] = ord("!")
    path.write_bytes(bytes(data))
    if damage == "missing":
        path.unlink()
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    save_checkpoint(path, {"model": NotATensor()}, {})  # a valid frame around a pickled object
    with pytest.raises(CheckpointError, match="cannot load checkpoint state"):
        load_checkpoint(path)


def test_newest_valid_checkpoint_is_picked_and_the_skipped_one_named(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    ck = TrainCheckpoints(folder, {"phase": "teacher"}, keep=3, resume=True)
    for step in (3, 6, 9, 12):
        ck.save(step, step // 4, _state(step))
    assert [p.name for p in ck.paths()] == ["step-00000006.ckpt", "step-00000009.ckpt",
                                            "step-00000012.ckpt"]  # keep=3
    newest = folder / "step-00000012.ckpt"
    newest.write_bytes(newest.read_bytes()[:-10])
    path, state = ck.latest()
    assert path.name == "step-00000009.ckpt"
    assert torch.equal(state["model"]["weight"], _state(9)["model"]["weight"])
    printed = capsys.readouterr().out
    assert "skipping" in printed and "step-00000012.ckpt: truncated" in printed
    assert "continuing from" in printed and "step-00000009.ckpt" in printed
    for p in ck.paths():
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no valid checkpoint is left"):
        ck.latest()


def test_a_checkpoint_of_another_phase_is_refused(tmp_path):
    folder = tmp_path / "checkpoints"
    TrainCheckpoints(folder, {"phase": "round 0 student", "teacher_sha256": "aa"}).save(
        5, 1, _state())
    other = TrainCheckpoints(folder, {"phase": "round 0 student", "teacher_sha256": "bb"},
                             resume=True)
    with pytest.raises(CheckpointError, match="made for"):
        other.latest()


def test_weights_load_from_a_checkpoint_preferring_its_ema(tmp_path):
    model, ema_model = nn.Linear(3, 2), nn.Linear(3, 2)
    ema = {f"module.{k}": v for k, v in ema_model.state_dict().items()}
    ema["n_averaged"] = torch.tensor(4)
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, {"model": model.state_dict(), "ema": ema}, {})
    loaded = load_weights(nn.Linear(3, 2), path)
    assert torch.equal(loaded.weight, ema_model.weight)
    save_checkpoint(path, {"model": model.state_dict(), "ema": None}, {})
    assert torch.equal(load_weights(nn.Linear(3, 2), path).weight, model.weight)


def test_rng_state_restores_python_numpy_and_torch():
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(3)  # move on
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


@pytest.mark.parametrize("start", [0, 5, 7, 23])
def test_stream_resumed_at_an_offset_continues_the_same_order(start):
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]
    full = take(StreamSampler(7, seed=3), 40)
    assert take(StreamSampler(7, seed=3, start=start), 40 - start) == full[start:]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_becomes_a_stop_request(signum, code):
    before = signal.getsignal(signum)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signum)  # delivered to the handler, which only sets the flag
        assert stop.requested
        with pytest.raises(Interrupted) as e:
            stop.check("a phase")
    assert e.value.exit_code == code and e.value.checkpoint is None
    assert signal.getsignal(signum) is before  # handlers are put back


def test_resume_command_drops_the_start_flags(monkeypatch):
    argv = ["--out", "runs/x", "--overwrite", "--from-round", "1", "--teacher=t.ckpt",
            "--set", "loss.temperature=2", "--from-run", "runs/old"]
    monkeypatch.setattr("sys.argv", ["recipes/digits.py"])
    monkeypatch.delenv("NOISY_STUDENT_LAUNCHER", raising=False)
    command = resume_command(argv)
    assert command.endswith("recipes/digits.py --out runs/x --set loss.temperature=2 --resume")
    assert "--overwrite" not in command and "--teacher" not in command
    monkeypatch.setenv("NOISY_STUDENT_LAUNCHER", "noisy-student")  # launched by the console script
    assert resume_command(["--set", "a.b=[1, 2]"]) == \
        "noisy-student run recipes/digits.py --set 'a.b=[1, 2]' --resume"


def test_start_flags_that_exclude_each_other_are_refused():
    assert RunStart().problems(3) == []
    assert RunStart(resume=True, from_round=1).problems(3)
    assert RunStart(overwrite=True, resume=True).problems(3)
    assert "numbered 0..2" in RunStart(from_round=3).problems(3)[0]
    assert RunStart(teacher="t.ckpt").problems(3)
    assert RunStart(allow_config_change=("loss",)).problems(3)


def test_config_change_is_allowed_only_for_named_keys(tiny_config, tmp_path):
    path = tmp_path / "config.json"
    save_json(path, tiny_config.to_dict())
    changed = tiny_config.with_overrides(["loss.temperature=3", "checkpoint.every_steps=5"])
    with pytest.raises(ConfigError) as e:
        check_config_change(path, changed)
    assert "loss.temperature: saved 1.0, now 3.0" in str(e.value)
    with pytest.raises(ConfigError, match="checkpoint.every_steps: saved 0, now 5"):
        check_config_change(path, changed, ("loss.temperature",))
    lines = check_config_change(path, changed, ("loss.temperature", "checkpoint"))
    assert len(lines) == 2
    with pytest.raises(ConfigError, match="did you mean 'loss.temperature'"):
        check_config_change(path, changed, ("loss.temprature",))
