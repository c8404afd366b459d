"""Defaults that fit the data: lengths in steps, the automatic ladder, the plan, the sanity gate
after round 0's teacher, and the image_folder recipe's presets and flags."""

import argparse
import json
import runpy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from noisy_student.config import Config, ConfigError, LossConfig, TrainConfig
from noisy_student.loop import run
from noisy_student.models import count_params, create_model
from noisy_student.plan import format_plan, make_plan
from noisy_student.presets import AUTO_LADDERS, PRESETS, auto_ladder, settle_ladder
from noisy_student.sanity import coverage_problem, teacher_problem
from noisy_student.train import TrainData, TrainingError, phase_geometry, train_model

from conftest import make_tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_min_steps_raise_the_epochs_of_small_sets_only():
    cfg = TrainConfig(batch_size=64, unlabeled_ratio=3)
    # 200 labeled images: 4 steps an epoch; 30 epochs are 120 steps, raised to 600 epochs
    g = phase_geometry(cfg, 200, None, epochs=30, min_steps=2400)
    assert (g.steps_per_epoch, g.epochs, g.steps, g.batch_pseudo) == (4, 600, 2400, 0)
    # 200,000: 3,125 steps an epoch; 30 epochs already pass the minimum
    g = phase_geometry(cfg, 200_000, None, epochs=30, min_steps=2400)
    assert (g.steps_per_epoch, g.epochs, g.steps) == (3125, 30, 93750)
    # a student: epochs over 3,800 pseudo-labeled items at 192 a step (20 steps, the last short)
    g = phase_geometry(cfg, 200, 3800, epochs=8, min_steps=2401)
    assert (g.batch_labeled, g.batch_pseudo, g.steps_per_epoch, g.epochs) == (64, 192, 20, 121)
    assert phase_geometry(cfg, 200, 3800, epochs=8).epochs == 8  # no minimum: the epochs
    # a consistency teacher: epochs over its 200 labeled images, 192 unlabeled ones a step
    g = phase_geometry(cfg, 200, None, epochs=30, min_steps=0, n_unlabeled=3800)
    assert (g.steps_per_epoch, g.epochs, g.batch_labeled, g.batch_pseudo) == (4, 30, 64, 192)
    assert phase_geometry(cfg, 200, None, 30, n_unlabeled=100).batch_pseudo == 100
    # two ranks: batches rounded down to a multiple of the ranks
    assert phase_geometry(replace(cfg, batch_size=7), 100, None, 1, world=2).batch_labeled == 6


def test_training_runs_the_minimum_number_of_steps():
    from noisy_student.data import NoisedDataset
    from noisy_student.losses import build_student_loss

    images = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 1), dtype=np.uint8)
    data = NoisedDataset(images, np.arange(20) % 4, None, [0.5], [0.25], 0)
    cfg = TrainConfig(batch_size=8, device="cpu", lr=0.01)
    loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=False)
    result = train_model(create_model("cnn_tiny", num_classes=4, in_chans=1), loss, cfg,
                         torch.device("cpu"), TrainData(data, min_steps=10))
    # 3 steps an epoch (8 + 8 + 4): one epoch raised to 4, 12 steps
    assert result.steps == 12 and len(result.history) == 4
    assert result.history[-1]["step"] == 12


def test_auto_ladder_fits_image_size_device_and_labels():
    assert auto_ladder(28, "cpu", 200).ladder == ["cnn_medium(stem_stride=2)"] * 3
    assert auto_ladder(8, "cpu", None).ladder == ["cnn_small"] * 3
    assert auto_ladder(32, "cuda", 200).ladder == ["wrn_28_2", "wrn_28_2", "wrn_28_4"]
    assert auto_ladder(224, "cuda", 5_000).ladder[0] == "tv_resnet18"
    assert auto_ladder(224, "cuda", 50_000).ladder[0] == "tv_resnet50"
    assert "28x28 images on a CPU, 200 labeled images" == auto_ladder(28, "cpu", 200).reason
    # every row builds, for its largest images, with students no smaller than their teacher
    for size, device, _, ladder in AUTO_LADDERS:
        if size > 128 or device == "cuda" and size > 48:
            continue  # ImageNet-size models: too slow to build in the suite
        sizes = [count_params(create_model(m, num_classes=10, in_chans=1)) for m in ladder]
        assert sizes == sorted(sizes), ladder


def test_auto_ladder_is_settled_once_and_kept_on_resume(tmp_path):
    auto = make_tiny_config(tmp_path / "run").with_overrides(['model.ladder=["auto"]'])
    settled, note = settle_ladder(auto, "cpu")
    assert settled.model.ladder == ["cnn_small"] * 3 and note.startswith("model.ladder auto")
    named = make_tiny_config(tmp_path / "run")
    assert settle_ladder(named, "cpu") == (named, "")  # a named ladder wins
    saved = named  # resuming: the choice made when the run started stands
    assert settle_ladder(auto, "cuda", saved)[0].model.ladder == named.model.ladder
    with pytest.raises(ConfigError, match="'auto' stands alone"):
        auto.with_overrides(['model.ladder=["auto", "cnn_small"]'])


def test_plan_counts_the_steps_training_will_take(tmp_path):
    from noisy_student.data import load_source, make_splits

    config = make_tiny_config(tmp_path / "run").with_overrides(["train.min_steps=7"])
    splits = make_splits(load_source(config.data), config.data, config.seed)
    plans = make_plan(config, splits, [1, 2, 3], torch.device("cpu"), noise_seconds=0.0)
    # teacher: 50 labeled images at 16 a step, 4 steps x 3 epochs; students: 200 unlabeled at
    # 48 a step, 5 steps an epoch, 1 epoch raised to 2 for 7 steps
    assert [(p.phase, p.steps, p.labeled_per_step, p.pseudo_per_step) for p in plans] == [
        ("teacher", 12, 16, 0), ("round 0 student", 10, 16, 48), ("round 1 student", 10, 16, 48)]
    assert [p.model for p in plans] == ["cnn_tiny", "cnn_tiny", "cnn_small"]
    assert all(p.minutes >= 0 for p in plans)
    text = format_plan(plans, torch.device("cpu"), ["a note"])
    assert "a note" in text and "16+48" in text and "minutes in all" in text


def test_sanity_rules_by_hand():
    assert teacher_problem(0.19, 10) is not None and "19.0%" in teacher_problem(0.19, 10)
    assert teacher_problem(0.20, 10) is None and teacher_problem(None, 10) is None
    classes = [str(k) for k in range(4)]
    predicted = np.array([0] * 50 + [1] * 45 + [2] * 4 + [3])
    # kept: 100 images; a class counts from max(1, 0.1 * 100 / 4) = 2.5 of them: 0, 1, 2 count
    assert coverage_problem(predicted, np.arange(100), 0.3, classes) is None
    # without class 2's images: 96 kept, a class counts from 2.4: 0 and 1, half: enough
    kept = np.flatnonzero(predicted != 2)
    assert coverage_problem(predicted, kept, 0.3, classes) is None
    problem = coverage_problem(predicted, np.flatnonzero(predicted == 0), 0.3, classes)
    assert "cover 1 of 4 classes" in problem and "[50, 0, 0, 0]" in problem


def test_a_teacher_near_chance_stops_the_run_and_force_goes_on(tmp_path, capsys):
    config = make_tiny_config(tmp_path / "run").with_overrides(
        ["train.sanity_gate=true", "train.lr=1e-9", "rounds=1"])
    with pytest.raises(TrainingError, match="near chance.*--resume --force"):
        run(config)
    out = config.out_dir
    assert (out / "teacher" / "DONE").is_file() and not (out / "round_0").exists()
    plan = json.loads((out / "plan.json").read_text())
    assert [p["steps"] for p in plan["phases"]] == [12, 5]
    assert "plan: 1 round on cpu" in capsys.readouterr().out
    summary = run(config, resume=True, force=True)  # the teacher is loaded, not trained again
    assert len(summary["rounds"]) == 1
    assert "going on" in capsys.readouterr().out


def test_image_folder_recipe_presets_and_flags():
    recipe = runpy.run_path(str(ROOT / "recipes" / "image_folder.py"))
    parser = argparse.ArgumentParser()
    recipe["add_arguments"](parser)

    def configured(*argv: str) -> Config:
        args = parser.parse_args(["--labeled", "L", "--unlabeled", "U", "--test", "T", *argv])
        return recipe["configure"](recipe["make_config"](), args)

    plain = configured("--image-size", "28")
    assert plain.model.ladder == ["auto"] and plain.noise.flip is False
    assert (plain.data.image_size, plain.noise.crop_padding) == (28, 2)  # 28 // 14
    assert configured("--image-size", "224").noise.crop_padding == 16
    assert configured("--mirror-symmetric").noise.flip is True
    cifar = configured("--preset", "cifar-gpu", "--image-size", "40")
    assert cifar.model.ladder == PRESETS["cifar-gpu"].overrides["model.ladder"]
    assert (cifar.data.image_size, cifar.noise.crop_padding) == (40, 4)  # the flag wins
