"""tools/gpu_check.py at toy sizes on the CPU: every part's code path runs, its figures follow from
what it timed, a part that fails or runs out of time is recorded and the others still run, and
merge puts the figures into the results and the report."""

import dataclasses
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_check.py"
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}


def _check(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp / "gpu.json"
    done = subprocess.run([sys.executable, str(TOOL), "--out", str(out), "--work",
                           str(tmp / "work"), *args], capture_output=True, text=True, env=ENV,
                          timeout=300)
    return done, json.loads(out.read_text()) if out.is_file() else {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    done, report = _check(tmp, "--device", "cpu", "--tiny")
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp, report


def test_tiny_runs_every_part_and_each_figure_follows_from_its_timings(tiny):
    tmp, report = tiny
    parts = report["parts"]
    assert list(parts) == ["train_step", "noise", "pseudo_label", "compile", "torchrun",
                           "end_to_end"]
    assert {p["status"] for p in parts.values()} == {"ok"}
    sizes = runpy.run_path(str(TOOL))["TINY"]
    for row, s in zip(parts["train_step"]["settings"], sizes["train_step"]):
        assert row["model"] == s.model and row["shape"] == list(s.shape)
        assert row["batch"] == s.batch * (1 + s.ratio)
        assert row["ratio"] == pytest.approx(row["framework_s_per_step"] / row["bare_s_per_step"])
        assert row["framework_images_per_second"] == pytest.approx(
            row["batch"] / row["framework_s_per_step"])
        assert row["peak_gpu_mib"] is None  # no GPU: no figure rather than a zero
    noise = parts["noise"]
    assert noise["supply_over_demand_per_worker"] == pytest.approx(
        noise["noise_images_per_second_per_worker"] / noise["train_consumes_images_per_second"])
    tb = noise["torch_backend"]
    assert 0 <= tb["data_wait_fraction"] < 1
    assert tb["noise_step_share"] == pytest.approx(
        1 - tb["images_per_second"] / tb["clean_images_per_second"])
    pl = parts["pseudo_label"]
    assert pl["speed_ratio"] == pytest.approx(
        pl["framework_images_per_second"] / pl["bare_images_per_second"])
    assert pl["speed_ratio"] == pytest.approx(1 / pl["ratio"])
    c = parts["compile"]
    assert c["compile_seconds"] == pytest.approx(c["compiled"]["epoch_seconds"][0]
                                                 - c["compiled"]["epoch_seconds"][1])
    assert c["speedup"] == pytest.approx(c["eager"]["epoch_seconds"][1]
                                         / c["compiled"]["epoch_seconds"][1])
    assert c["eager"]["steps"] == c["compiled"]["steps"] == 2 * c["steps_per_epoch"]


@pytest.mark.parametrize("part", ["torchrun", "end_to_end"])
def test_runs_report_each_phase_as_its_metrics_file_says(tiny, part):
    tmp, report = tiny
    p = report["parts"][part]
    run = tmp / "work" / part
    teacher = json.loads((run / "teacher" / "metrics.json").read_text())
    student = json.loads((run / "round_0" / "metrics.json").read_text())
    assert p["phases"] == [
        {"phase": "teacher", "seconds": teacher["seconds"], "val_top1": teacher["val_top1"],
         "test_top1": teacher["top1"]},
        {"phase": "round 0", "seconds": student["seconds"],
         "val_top1": student["student_val_top1"], "test_top1": student["student_top1"]}]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["device"] == "cpu"
    if part == "end_to_end":
        assert config["noise"]["backend"] == "torch" and p["finished"]
        assert p["minutes"] == pytest.approx((teacher["seconds"] + student["seconds"]) / 60)
    else:
        assert p["backend"] == "gloo" and p["processes"] == 1


def test_a_part_out_of_time_is_recorded_and_the_next_still_runs(tmp_path):
    done, report = _check(tmp_path, "--device", "cpu", "--tiny", "--parts", "end_to_end",
                          "pseudo_label", "--limit", "end_to_end=2")
    assert done.returncode == 1
    cut = report["parts"]["end_to_end"]
    assert cut["status"] == "timed out" and cut["limit_s"] == 2
    assert cut["seconds"] < 30  # its process group was ended, not waited for
    assert isinstance(cut["phases"], list)  # whatever it finished before the limit
    assert report["parts"]["pseudo_label"]["status"] == "ok"
    assert "not: end_to_end" in done.stdout


def test_a_run_is_finished_only_when_every_round_has_its_metrics(tmp_path):
    """summary.json is rewritten after every round, so it cannot tell a cut run from a whole
    one (the H200's first check called a run cut in its last round finished)."""
    figures = runpy.run_path(str(TOOL))["end_to_end_figures"]
    (tmp_path / "config.json").write_text(json.dumps({"rounds": 2}))
    (tmp_path / "summary.json").write_text("{}")
    for phase, m in (("teacher", {"seconds": 60.0, "top1": 0.5}),
                     ("round_0", {"seconds": 30.0, "student_top1": 0.6})):
        (tmp_path / phase).mkdir()
        (tmp_path / phase / "metrics.json").write_text(json.dumps(m))
    cut = figures(tmp_path, "digits")
    assert not cut["finished"] and cut["minutes"] == pytest.approx(1.5)
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "metrics.json").write_text(json.dumps({"seconds": 30.0,
                                                                   "student_top1": 0.7}))
    whole = figures(tmp_path, "digits")
    assert whole["finished"] and [p["test_top1"] for p in whole["phases"]] == [0.5, 0.6, 0.7]
    assert whole["rounds"] == 2


def test_the_full_end_to_end_run_is_the_recipe_cut_to_four_rounds(tmp_path):
    """The GPU part runs the Fashion-MNIST recipe as it is but for its rounds (4, to fit the
    part's limit), on the device's batch noise, and its report title says how many rounds."""
    tool = runpy.run_path(str(TOOL))
    recipe = runpy.run_path(str(ROOT / "recipes" / "fashion_mnist.py"))["make_config"]()
    config = tool["_end_to_end_config"](False, "cpu", tmp_path)
    assert config.rounds == 4 < recipe.rounds and config.noise.backend == "torch"
    assert config.model == recipe.model and config.pseudo_label == recipe.pseudo_label
    assert dataclasses.replace(config.train, device=recipe.train.device) == recipe.train
    title = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["_gpu_phases"](
        "end_to_end", {"recipe": "fashion_mnist", "rounds": 4, "noise_backend": "torch",
                       "minutes": 3.0, "finished": True, "phases": []})[0]
    assert title.startswith("### End to end: the fashion_mnist recipe, 4 rounds, noise backend")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failing_part_is_recorded_with_its_error(tmp_path):
    done, report = _check(tmp_path, "--parts", "pseudo_label")  # --device cuda, no CUDA here
    assert done.returncode == 1
    failed = report["parts"]["pseudo_label"]
    assert failed["status"] == "failed" and failed["exit"] != 0
    assert "CUDA" in failed["log_tail"] or "cuda" in failed["log_tail"]


def test_no_part_starts_once_the_budget_is_spent(tmp_path):
    done, report = _check(tmp_path, "--device", "cpu", "--tiny", "--budget", "0")
    assert done.returncode == 1
    assert {p["status"] for p in report["parts"].values()} == {"not run"}


def test_merge_puts_the_figures_in_the_results_and_the_report(tiny, tmp_path):
    tmp, report = tiny
    results, markdown = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    results.write_text(json.dumps({"speed": {}, "runs": {}}))
    done = subprocess.run([sys.executable, str(TOOL), "merge", str(tmp / "gpu.json"),
                           "--results", str(results), "--markdown", str(markdown)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(results.read_text())
    assert data["gpu"] == report and "speed" in data  # the other sections are kept
    made = data["runs"]["gpu"]["provenance"]
    assert made["machine"] == report["machine"] and len(made["commit"]) == 40
    text = markdown.read_text()
    row = report["parts"]["train_step"]["settings"][0]
    assert (f"| `{row['model']}` | 32x32x3 | {row['batch']} | "
            f"{row['framework_images_per_second']:.0f} | {row['bare_images_per_second']:.0f} | "
            f"{row['ratio']:.3f} |") in text
    assert "## GPU: the CUDA path" in text and "--tiny (toy sizes" in text
    c = report["parts"]["compile"]
    assert f"| {c['compile_seconds']:.1f} | {c['eager']['epoch_seconds'][1]:.2f} |" in text
    assert not math.isnan(c["speedup"])


def test_help_says_how_to_prepare_the_gpu_machine():
    done = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert "gpu_check.py prepare" in done.stdout
    assert "--target /tmp/site .gpu_check/wheels/*.whl" in " ".join(done.stdout.split())


def test_the_report_says_where_the_host_waited_for_the_gpu():
    gpu_train_step = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["_gpu_train_step"]
    row = {"model": "wrn_28_2", "shape": [32, 32, 3], "batch": 512, "ratio": 1.05,
           "framework_images_per_second": 35000.0, "bare_images_per_second": 36750.0,
           "target": 1.1, "peak_gpu_mib": 1000.0,
           "host_waits": {"per_step": 0.25, "where": {"train.py:531": 20, "train.py:527": 5}}}
    text = "\n".join(gpu_train_step("train_step", {"settings": [row]}))
    assert "| 1.050 | <= 1.1 | met |" in text
    assert ("The host waited for the GPU 0.2 times a step (`wrn_28_2`, CUDA's sync debug "
            "mode), 20 at `train.py:531`, 5 at `train.py:527`.") in text
    del row["host_waits"]
    assert "waited" not in "\n".join(gpu_train_step("train_step", {"settings": [row]}))
