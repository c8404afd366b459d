"""tools/benchmark.py --quick on digits: every figure present and finite, ratios from times."""

import hashlib
import json
import math
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _finite_numbers(node, where=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _finite_numbers(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _finite_numbers(v, f"{where}[{i}]")
    elif isinstance(node, float):
        yield where, node


def _student_top1(run: Path, splits) -> dict[str, float]:
    """Top-1 of a run's last student on each scored set ("test", "val"), from its saved weights
    and the images."""
    from noisy_student.checkpoint import load_weights
    from noisy_student.config import Config
    from noisy_student.ladder import build_model

    config = Config.load(run / "config.json")
    model = load_weights(build_model(config, config.rounds, splits),
                         run / f"round_{config.rounds - 1}" / "student.safetensors").eval()
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    top1 = {}
    for name, images in splits.scored().items():
        x = (torch.from_numpy(images.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.no_grad():
            predicted = model(x).argmax(1).numpy()
        top1[name] = float((predicted == images.labels).mean())
    return top1


@pytest.fixture(scope="module")
def speed_training():
    """(tag, TrainResult) of each `train_model` call the speed benchmark made in `quick`."""
    return []


@pytest.fixture(scope="module")
def quick(tmp_path_factory, speed_training):
    import inspect

    tmp = tmp_path_factory.mktemp("bench")
    main = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"]
    speed = main.__globals__["bench_speed"]
    train_model = speed.train_model

    def recorded(*args, **kwargs):
        result = train_model(*args, **kwargs)
        hooks = inspect.signature(train_model).bind(*args, **kwargs).arguments["hooks"]
        tag = hooks.tag
        speed_training.append((tag, result))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "train_model", recorded)
        assert main(["all", "--quick", "--dataset", "digits", "--results", str(tmp / "r.json"),
                     "--markdown", str(tmp / "B.md"), "--work", str(tmp / "work")]) == 0
    return tmp, json.loads((tmp / "r.json").read_text())


def test_every_figure_is_present_and_finite(quick):
    tmp, data = quick
    bad = [(k, v) for k, v in _finite_numbers(data) if not math.isfinite(v)]
    assert not bad
    s, seeds = data["quality"]["digits"]["summary"], data["quality"]["digits"]["seeds"]
    ns = [x["noisy_student"]["final_top1"] for x in seeds]
    lo = [x["labels_only"]["top1"] for x in seeds]
    sup = [max(x["supervised"]["top1"], x["supervised_longer"]["top1"]) for x in seeds]  # best
    per_seed = {"labels_only": lo, "noisy_student": ns, "supervised": sup,
                "noisy_student_val": [x["noisy_student"]["final_val_top1"] for x in seeds],
                "teacher": [x["noisy_student"]["teacher_top1"] for x in seeds],
                "gain": [n - b for n, b in zip(ns, lo)],
                "gap_closed": [(n - b) / (f - b) for n, b, f in zip(ns, lo, sup)]}
    for k, r in enumerate(s["rounds"]):
        for key in ("student_top1", "pseudo_label_accuracy"):
            per_seed[k, key] = [x["noisy_student"]["rounds"][k][key] for x in seeds]
    for key, values in per_seed.items():
        stat = s[key] if isinstance(key, str) else s["rounds"][key[0]][key[1]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        assert stat == {"mean": pytest.approx(statistics.fmean(values)),
                        "std": pytest.approx(spread), "n": len(seeds)}, key
    seed = seeds[0]
    assert seed["gain"] == pytest.approx(per_seed["gain"][0])
    assert seed["gap_closed"] == pytest.approx(per_seed["gap_closed"][0])
    # the baselines train for as many steps as the round's student: whole epochs of theirs
    steps = seed["noisy_student"]["rounds"][-1]["steps"]
    for key, images in (("labels_only", seed["labeled"]),
                        ("supervised", seed["labeled"] + seed["unlabeled"])):
        per_epoch = math.ceil(images / seed[key]["batch"])
        assert seed[key]["images"] == images
        assert seed[key]["steps"] == max(1, round(steps / per_epoch)) * per_epoch, key
    ablations = data["ablations"]["digits"]
    assert {"recipe", "no input noise", "no model noise", "soft pseudo-labels",
            "hard pseudo-labels", "no filtering or balancing",
            "student equal to teacher", "one more round", "three quarters of the epochs"
            } <= set(ablations)
    recipe_rounds = ablations["recipe"]["rounds"]
    more = ablations["one more round"]
    assert len(more["rounds"]) == len(recipe_rounds) + 1
    # the recipe's run continued: its rounds are the recipe's own (linked, not trained again)
    assert [r["student_top1"] for r in more["rounds"][:-1]] == [
        r["student_top1"] for r in recipe_rounds]
    for k in range(len(recipe_rounds)):
        theirs, ours = (json.loads((tmp / "work" / a["run_dir"] / "run" / f"round_{k}" /
                                    "metrics.json").read_text())["student_sha256"]
                        for a in (ablations["recipe"], more))
        assert ours == theirs
        linked = [tmp / "work" / a["run_dir"] / "run" / f"round_{k}" / "student.safetensors"
                  for a in (ablations["recipe"], more)]
        assert linked[0].stat().st_ino == linked[1].stat().st_ino  # one file, not retrained
    assert ablations["three quarters of the epochs"]["overrides"] == ["train.epochs=9"]  # of 12
    assert (ablations["three quarters of the epochs"]["rounds"][0]["steps"]
            < recipe_rounds[0]["steps"])
    assert ablations["recipe"]["run_dir"] == seed["noisy_student"]["run_dir"]  # not trained twice
    from noisy_student.data import load_source, make_splits

    config = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["recipe_config"]("digits", True)
    splits = make_splits(load_source(config.data), config.data, ablations["recipe"]["seed"])
    assert len(splits.test) == seed["test"]
    for name, a in ablations.items():  # each final student's top-1, from its saved weights
        top1 = _student_top1(tmp / "work" / a["run_dir"] / "run", splits)
        assert a["final_top1"] == pytest.approx(top1["test"]), name
        assert a["final_val_top1"] == pytest.approx(top1["val"]), name
    assert seed["noisy_student"]["final_top1"] == ablations["recipe"]["final_top1"]
    assert ablations["recipe"]["seed"] == 0
    split = data["speed"]["round_split"]  # of the quality seed's round 0
    t = seed["noisy_student"]["rounds"][0]["timing"]
    seconds = {"pseudo_label": t["pseudo_label"],
               "train": t["train"] - t["train_evaluate"] - t["train_checkpoint"],
               "evaluate": t["train_evaluate"] + t["final_evaluate"],
               "checkpoint": t["train_checkpoint"]}
    assert split["seconds"] == pytest.approx(seconds)
    assert split["share"] == pytest.approx({k: v / sum(seconds.values())
                                            for k, v in seconds.items()})
    assert split["data_wait_share_of_train"] == pytest.approx(t["train_data_wait"] / t["train"])
    text = (tmp / "B.md").read_text()
    assert "gap closed" in text and "Speed on cpu" in text
    assert "Ablations: digits (seed 0, read on validation)" in text
    assert (tmp / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_training_step_ratio_is_the_median_pair_of_several(monkeypatch):
    """`train_step(repeats=3)`: three (framework, bare loop) pairs, the figures of the pair
    with the median ratio, every pair's ratio listed."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import bench_speed

    per_step = iter([0.3, 0.1, 0.2])  # the framework's seconds per step, pair by pair
    real = bench_speed.train_model

    def timed(*args, **kwargs):
        result = real(*args, **kwargs)
        if args[5].tag == "speed":  # a timed framework run (not the warm-up)
            result.seconds = next(per_step) * result.steps
        return result

    monkeypatch.setattr(bench_speed, "train_model", timed)
    config = bench_speed._recipe("digits").with_overrides(["train.batch_size=4",
                                                           "train.unlabeled_ratio=1"])
    step = bench_speed.train_step(config, 2, torch.device("cpu"), (8, 8, 1), repeats=3)
    assert len(step["ratios"]) == 3 and step["ratios"] == sorted(step["ratios"])
    assert step["ratio"] == step["ratios"][1]
    assert step["framework_s_per_step"] == pytest.approx(0.2)  # the median pair's own time
    assert step["ratio"] == pytest.approx(0.2 / step["bare_s_per_step"])


def test_ratios_come_from_measured_times(quick, speed_training):
    _, data = quick
    cpu = data["speed"]["cpu"]
    step = cpu["train_step"]
    # the first timed run and the first three noised runs are the CPU's (then CUDA's, if any)
    framework = next(r for tag, r in speed_training if tag == "speed")
    noised = [r for tag, r in speed_training if tag == "noised"][:3]
    fashion = runpy.run_path(str(ROOT / "recipes" / "fashion_mnist.py"))["make_config"]().train
    assert step["batch"] == fashion.batch_size * (1 + fashion.unlabeled_ratio)
    assert step["steps"] == framework.steps
    assert step["framework_s_per_step"] == pytest.approx(framework.seconds / framework.steps)
    for kind in ("framework", "bare"):
        assert step[f"{kind}_images_per_second"] == pytest.approx(
            step["batch"] / step[f"{kind}_s_per_step"])
    assert step["ratio"] == pytest.approx(step["framework_s_per_step"] / step["bare_s_per_step"])
    assert step["framework_s_per_step"] != step["bare_s_per_step"]  # two measurements, not one
    inf = cpu["inference"]
    assert inf["ratio"] == pytest.approx(inf["bare_images_per_second"]
                                         / inf["framework_images_per_second"])
    noise = cpu["noise"]
    assert noise["supply_over_demand_per_worker"] == pytest.approx(
        noise["noise_images_per_second_per_worker"] / noise["train_consumes_images_per_second"])
    assert noise["train_consumes_images_per_second"] == pytest.approx(
        step["bare_images_per_second"])
    assert noise["data_wait_fraction"] == pytest.approx(
        noised[0].timing["data_wait"] / noised[0].seconds)
    assert noise["noised_train_images_per_second"] == pytest.approx(noised[0].images_per_second)
    # the torch backend: two noised runs, each followed by the same training on clean images
    tb, batch_noised = noise["torch_backend"], noised[1:3]
    clean = [r for tag, r in speed_training if tag == "clean"][:2]
    assert tb["data_wait_fraction"] == pytest.approx(
        statistics.fmean([r.timing["data_wait"] / r.seconds for r in batch_noised]))
    noised_ips, clean_ips = (statistics.fmean([r.images_per_second for r in runs])
                             for runs in (batch_noised, clean))
    assert tb["images_per_second"] == pytest.approx(noised_ips)
    assert tb["clean_images_per_second"] == pytest.approx(clean_ips)
    assert tb["noise_step_share"] == pytest.approx(1 - noised_ips / clean_ips)
    assert tb["noise_images_per_second"] > 0  # timed inside bench_speed alone
    # train.amp_cpu off and on, the last two timed runs, each against its own bare loop
    variants = data["speed"]["cpu_variants"]
    timed = [r for tag, r in speed_training if tag == "speed"][-2:]
    assert list(variants) == ["amp_cpu=False", "amp_cpu=True"]
    for v, run in zip(variants.values(), timed):
        assert v["framework_images_per_second"] == pytest.approx(
            v["batch"] * run.steps / run.seconds)
    off, on = (v["framework_images_per_second"] for v in variants.values())
    report = (quick[0] / "B.md").read_text()
    assert f"| amp_cpu=True | {on:.0f} | {on / off:.2f} |" in report


def _bench():
    """benchmark.py's module namespace (run_path returns a copy of it; main's globals are it)."""
    return runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"].__globals__


def _one_seed_quality(labels_only, final, supervised, longer=None):
    def stat(x):
        return {"mean": x, "std": 0.0, "n": 1}
    gain = final - labels_only
    made = {"commit": "abcdef0123", "dirty": False, "package_code": "tree1"}
    seed = {"seed": 100, "role": "report", "labeled": 1000, "validation": 1000,
            "unlabeled": 58000, "test": 10000, "model": "m",
            "labels_only": {"top1": labels_only, "steps": 10, "batch": 64},
            "supervised": {"top1": supervised, "steps": 20, "batch": 256, "epochs": 15},
            "supervised_longer": longer and {"top1": longer, "epochs": 30, "steps": 40,
                                             "batch": 256, "provenance": made},
            "noisy_student": {"teacher_top1": 0.8, "seconds": 60.0, "final_val_top1": 0.85,
                              "rounds": [{"student_top1": final}], "provenance": made}}
    summary = {"labels_only": stat(labels_only), "teacher": stat(0.8),
               "supervised": stat(supervised), "gain": stat(gain),
               "gap_closed": stat(gain / (supervised - labels_only)),
               "rounds": [{"round": 0, "student_top1": stat(final),
                           "pseudo_label_accuracy": stat(0.9)}]}
    return {"seeds": [seed], "summary": summary, "summary_seeds": [100]}


@pytest.mark.parametrize("final, seconds, verdict, stretch", [
    (0.90, 60.0, "met (83.3% closed, the longest seed 1.0 minutes)", "met (+5.00)"),
    (0.90, 46 * 60.0, "**missed** (83.3% closed, the longest seed 46.0 minutes)", "met (+5.00)"),
    (0.88, 60.0, "**missed** (50.0% closed, the longest seed 1.0 minutes)", "**missed** (+3.00)")])
def test_the_report_judges_the_quality_target(final, seconds, verdict, stretch):
    """Fashion-MNIST's target: 60% of the gap closed, every seed in at most 45 minutes; the
    stretch, +5 points over labels-only."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["quality_section"]
    q = _one_seed_quality(0.85, final, 0.91)  # gap 6 points
    q["seeds"][0]["noisy_student"]["seconds"] = seconds
    lines = section("fashion_mnist", q)
    assert [x for x in lines if x.startswith("Target")][0].endswith(f": {verdict}.")
    assert [x for x in lines if x.startswith("Stretch")][0].endswith(f": {stretch}.")
    assert "gap to full supervision is 6.00 points: 60% of it is a gain of 3.60 points" in (
        "".join(lines))
    assert not any(x.startswith("Target") for x in section("d", _one_seed_quality(0.9, 0.95, 1)))


def test_the_report_judges_the_digits_target_and_says_where_the_gain_stops():
    """Digits: a gain above two standard deviations over seeds. Where it stops: each round's
    pseudo-label accuracy against the round before, and the final student under its labels."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["quality_section"]
    q = _one_seed_quality(0.85, 0.88, 0.91)
    q["summary"]["gain"] = {"mean": 0.03, "std": 0.02, "n": 3}  # 3.00 against 2 x 2.00
    q["summary"]["rounds"] = [
        {"round": k, "student_top1": {"mean": st, "std": 0.0, "n": 3},
         "pseudo_label_accuracy": {"mean": pl, "std": 0.0, "n": 3}}
        for k, (st, pl) in enumerate([(0.86, 0.87), (0.88, 0.895)])]
    text = "\n".join(section("digits", q))
    assert ("Target: a gain above 2 standard deviations over seeds: **missed** (+3.00 against "
            "4.00).") in text
    assert ("Where it stops: each round's pseudo-labels are +2.50 points more accurate than the "
            "round before's; the final student's test top-1 is 1.50 points under") in text


def test_a_missed_share_of_the_gap_says_how_accurate_the_labels_would_have_to_be():
    """Labels-only 80%, supervised 90%: half the gap is 85%. The final student at 83% ends one
    point under its 84% labels, so one as far under them needs labels 86% accurate, 2 points
    more; a student past the target gets no such line."""
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))
    half = report["QualityTarget"](gap_closed=0.5)

    def summary(student):
        return {"labels_only": {"mean": 0.80}, "supervised": {"mean": 0.90}, "rounds": [
            {"student_top1": {"mean": 0.81}, "pseudo_label_accuracy": {"mean": 0.82}},
            {"student_top1": {"mean": student}, "pseudo_label_accuracy": {"mean": 0.84}}]}
    text = "\n".join(report["_where_it_stops"](summary(0.83), half))
    assert ("A student as far under its labels needs labels 86.00% accurate to reach 85.00% "
            "(50% of the gap): 2.00 points above the last round's.") in text
    assert "needs labels" not in "\n".join(report["_where_it_stops"](summary(0.86), half))
    assert "needs labels" not in "\n".join(report["_where_it_stops"](summary(0.83)))


def test_with_headroom_rows_the_labels_needed_are_read_off_the_measured_students():
    """Half the gap is 85%. Seed 0, round 1 (three points: the run's 84% labels -> 83%, 92% ->
    84%, perfect -> 86%) crosses 85% halfway from 92% to 100%: labels about 96% accurate. A
    round with fewer rows is not the one read; a student short of 85% on every row says so."""
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))
    half = report["QualityTarget"](gap_closed=0.5)
    summary = {"labels_only": {"mean": 0.80}, "supervised": {"mean": 0.90}, "rounds": [
        {"student_top1": {"mean": 0.81}, "pseudo_label_accuracy": {"mean": 0.82}},
        {"student_top1": {"mean": 0.83}, "pseudo_label_accuracy": {"mean": 0.84}}]}
    own = {"seed": 0, "round": 1, "run_labels": 0.84, "run_student_test": 0.83}
    rows = [{**own, "labels": 0.92, "student_test": 0.84},
            {**own, "labels": 1.0, "student_test": 0.86},
            {**own, "round": 0, "labels": 1.0, "student_test": 0.99}]
    text = "\n".join(report["_where_it_stops"](summary, half, rows))
    assert ("Measured (headroom table, seed 0, round 1): its student's test top-1 goes from "
            "83.00% on its own 84.00%-accurate labels to 86.00% on 100.00%-accurate ones: "
            "85.00% (50% of the gap) needs labels about 96.00% accurate.") in text
    assert "as far under its labels" not in text
    rows[1]["student_test"] = 0.845
    assert "short of 85.00% (50% of the gap) on all of them." in "\n".join(
        report["_where_it_stops"](summary, half, rows))


def test_rows_at_other_settings_say_what_those_settings_need_and_leave_the_run_s_reading():
    """Two rows trained round 1 again with `train.epochs=16`: 84% labels -> 84%, perfect ->
    88%; 85% is crossed a quarter of the way: labels about 84 + 16 / 4 = 88% accurate. The
    reading at the run's own settings is made from its rows alone (96%, as above)."""
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))
    half = report["QualityTarget"](gap_closed=0.5)
    summary = {"labels_only": {"mean": 0.80}, "supervised": {"mean": 0.90}, "rounds": [
        {"student_top1": {"mean": 0.81}, "pseudo_label_accuracy": {"mean": 0.82}},
        {"student_top1": {"mean": 0.83}, "pseudo_label_accuracy": {"mean": 0.84}}]}
    own = {"seed": 0, "round": 1, "run_labels": 0.84, "run_student_test": 0.83, "minutes": 5.0}
    longer = {**own, "overrides": ["train.epochs=16"], "minutes": 9.96}
    rows = [{**own, "labels": 0.92, "student_test": 0.84},
            {**own, "labels": 1.0, "student_test": 0.86},
            {**longer, "labels": 1.0, "student_test": 0.88},
            {**longer, "labels": 0.84, "student_test": 0.84}]
    text = "\n".join(report["_where_it_stops"](summary, half, rows))
    assert ("85.00% (50% of the gap) needs labels about 96.00% accurate. Those labels are 6.00 "
            "points more accurate than the same network trained on every label is on test "
            "(90.00%): a teacher of this network would not make them.") in text
    assert text.count("Those labels are") == 1  # 88% labels, with 16 epochs: under the ceiling
    assert ("With `train.epochs=16` (seed 0, round 1 trained again, 10.0 minutes): its "
            "student's test top-1 is 84.00% on 84.00%-accurate labels, 88.00% on "
            "100.00%-accurate labels; 85.00% (50% of the gap) needs labels about 88.00% "
            "accurate.") in text
    rows[2]["student_test"] = 0.845
    assert ("88.00% on 100.00%-accurate" not in "\n".join(
        report["_where_it_stops"](summary, half, rows)))
    assert "; short of 85.00% on all of them." in "\n".join(
        report["_where_it_stops"](summary, half, rows))
    table = "\n".join(report["headroom_section"]({"rows": {
        str(i): {**r, "dataset": "d", "fix": 1.0 if r["labels"] == 1.0 else 0.0,
                 "student_val": 0.8, "run_student_val": 0.8} for i, r in enumerate(rows)}}))
    assert "| hidden (perfect), `train.epochs=16` | 100.00 |" in table
    assert "| the teacher's, `train.epochs=16` | 84.00 |" in table
    assert table.index("| hidden (perfect) | 100.00 |") < table.index("`train.epochs=16`")


def test_a_longer_ablation_says_what_more_rounds_bought_and_how_many_the_labels_need():
    """The recipe's 2 rounds (labels 84%, 85%) continued to 5 (86%, 86.5%, 87%) in 9 more
    minutes: +1.00, +0.50, +0.50 a round. Half the gap (85%) needs 96% labels (the headroom
    rows above): over the last 3 rounds the pace is (87 - 85) / 3 = 0.667 points a round, so
    ceil(9 / 0.667) = 14 rounds further, 14 x 3 minutes = 0.7 hours. A variant that does not
    start from the recipe's rounds is not a continuation; flat labels say more rounds do not
    reach it."""
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))
    half = report["QualityTarget"](gap_closed=0.5)

    def rounds(*labels):
        return [{"student_top1": 0.8 + k / 100, "student_val_top1": 0.8 + k / 100,
                 "pseudo_label_accuracy": a} for k, a in enumerate(labels)]
    recipe = {"seed": 0, "seconds": 600.0, "rounds": rounds(0.84, 0.85)}
    five = {"seconds": 1140.0, "rounds": rounds(0.84, 0.85, 0.86, 0.865, 0.87)}
    other = {"seconds": 1500.0, "rounds": rounds(0.80, 0.85, 0.86, 0.87, 0.88, 0.89)}
    longest = report["longest_ablation"]({"recipe": recipe, "5 rounds": five, "x": other,
                                          "same": {**recipe}})
    assert longest["name"] == "5 rounds" and longest["recipe_rounds"] == 2
    assert report["longest_ablation"]({"recipe": recipe, "x": other}) is None
    summary = {"labels_only": {"mean": 0.80}, "supervised": {"mean": 0.90}, "rounds": [
        {"student_top1": {"mean": 0.81}, "pseudo_label_accuracy": {"mean": 0.82}},
        {"student_top1": {"mean": 0.83}, "pseudo_label_accuracy": {"mean": 0.84}}]}
    own = {"seed": 0, "round": 1, "run_labels": 0.84, "run_student_test": 0.83}
    rows = [{**own, "labels": 0.92, "student_test": 0.84},
            {**own, "labels": 1.0, "student_test": 0.86}]
    text = "\n".join(report["_where_it_stops"](summary, half, rows, longest))
    assert ('More rounds, measured (ablation "5 rounds", seed 0: the recipe\'s run continued for '
            "3 rounds more, 9.0 minutes, commit unrecorded (older code)): its pseudo-labels go from 85.00% after round 1 to "
            "87.00% after round 4 (+1.00, +0.50, +0.50 a round), its student on validation from "
            "81.00% to 84.00%. Were the pace of its last 3 rounds to hold (+0.67 points a "
            "round), labels 96.00% accurate would be 14 rounds further: about 0.7 more hours on "
            "this machine.") in text
    flat = {**longest, "rounds": rounds(0.84, 0.85, 0.86, 0.85, 0.85)}
    assert ("Its labels stopped improving over its last 3 rounds, and its student ends 1.00 "
            "points under them on validation: more rounds alone do not bring the 96.00% the "
            "target needs.") in "\n".join(report["_where_it_stops"](summary, half, rows, flat))
    assert "Were the pace" not in "\n".join(report["_where_it_stops"](summary, half, (), longest))


def test_an_ablation_table_says_where_the_chain_settles():
    """Three variants or more: their final students' range against the recipe's, their last
    labels' range and the recipe's, and the median of (labels - final student); a variant equal
    to the recipe is not counted. Fewer variants: no line."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["ablation_section"]

    def run(final, labels, **extra):
        return {"final_val_top1": final, "final_top1": final, "seconds": 60, **extra, "rounds": [
            {"student_val_top1": final, "student_top1": final,
             "pseudo_label_accuracy": labels}]}
    a = {"recipe": run(0.890, 0.897, seed=0), "a": run(0.882, 0.894), "b": run(0.894, 0.898),
         "c": run(0.887, 0.921), "same": run(0.890, 0.897, same_as_recipe=True)}
    text = "\n".join(section("fm", a, spread=0.0076))
    # labels - student: 0.7, 1.2, 0.4, 3.4 points: the median is (0.7 + 1.2) / 2 = 0.95
    assert ("Where the chain settles: the 3 variants move the final student -0.80 to +0.40 "
            "points from the recipe's (the quality seeds' standard deviation: 0.76); their "
            "last round's pseudo-labels are 89.40 to 92.10% accurate on the images kept (the "
            "recipe's 89.70%), and a final student's top-1 ends a median 0.95 points under "
            "the accuracy of its own labels.") in text
    del a["c"]
    assert "Where the chain settles" not in "\n".join(section("fm", a))


def test_the_report_marks_older_code_and_judges_the_ceiling():
    """A row made by other package code than today's is marked; the ceiling trained twice as
    long is converged when it moves less than 0.2 points."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["quality_section"]
    text = "\n".join(section("d", _one_seed_quality(0.85, 0.88, 0.91, longer=0.9115), "tree1"))
    assert "| 100 (report) |" in text and "| abcdef01 |" in text and "older code" not in text
    assert "Report seeds: never used for a choice." in text
    assert ("Ceiling, seed 100: fully supervised 91.00% after 15 epochs, 91.15% after 30 "
            "(+0.15 points), made at abcdef01.\n\nconverged.") in text
    text = "\n".join(section("d", _one_seed_quality(0.85, 0.88, 0.91, longer=0.913), "tree2"))
    assert "| abcdef01 (older code) |" in text
    assert ("91.30% after 30 (+0.30 points), made at abcdef01 (older code).\n\n"
            "**not converged**") in text
    assert "| 91.30 | 10 x 64 | 40 x 256 |" in text  # the gap is measured to the longer run
    assert "No convergence check of the ceiling yet." in "\n".join(
        section("d", _one_seed_quality(0.85, 0.88, 0.91)))


def test_a_whole_section_made_by_older_package_code_is_marked(tmp_path):
    """Sections without rows of their own commit (speed, memory, GPU) say theirs under their
    heading and in the list of runs, marked when the package has changed since."""
    write = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["write"]
    provenance = {"commit": "abcdef0123", "dirty": False, "package_code": "tree1",
                  "date": "2026-12-01 00:00 UTC",
                  "machine": {"cpu": "cpu", "cores": 2, "torch_threads": 2, "gpu": None},
                  "versions": {"python": "3", "torch": "2", "albumentations": "2",
                               "numpy": "2"}}
    data = {"runs": {"memory": {"command": "python tools/memory_check.py",
                                "provenance": provenance}},
            "memory": {"size": 32, "classes": 10, "rows": [
                {"images": 1000, "lazy": True, "soft_label_mb": 1, "rss_now_mb": {},
                 "peak_rss_after_load_mb": 100.0, "peak_rss_mb": 120.0,
                 "total_seconds": 9.0}]}}
    for current, mark in (("tree1", ""), ("tree2", " (older code)")):
        md = tmp_path / f"{current}.md"
        write(data, md, tmp_path / "plot.png", current)
        text = md.read_text()
        assert (f"## Memory: unlabeled sets larger than memory\n\nMade at commit "
                f"abcdef01{mark}.\n\n32x32 RGB PNG files") in text
        run = "`python tools/memory_check.py` on 2026-12-01 00:00 UTC at commit abcdef01"
        assert f"{run}{mark};" in text
        assert "| 1,000 | lazy | 1 | 100 | 120 |" in text


def test_the_ceiling_is_judged_on_its_mean_move_and_a_shared_one_once():
    """Per-seed ceilings: the verdict is on the mean of their moves (+0.30 and -0.26: +0.02,
    converged, though each alone moves more than 0.2); one shared ceiling is reported once."""
    ceiling = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["_ceiling"]
    seeds = [{"seed": seed, "supervised": {"top1": 0.9, "epochs": 30},
              "supervised_longer": {"top1": 0.9 + move, "epochs": 60}}
             for seed, move in ((100, 0.003), (101, -0.0026))]
    text = "\n".join(ceiling(seeds))
    assert "seed 101: fully supervised 90.00% after 30 epochs, 89.74% after 60" in text
    assert "Mean move over 2 ceilings: +0.02 points: converged." in text
    shared = [{**x, "ceiling_seed": 100, "supervised_longer": seeds[0]["supervised_longer"]}
              for x in seeds]
    text = "\n".join(ceiling(shared))
    assert text.count("Ceiling, seed") == 1 and "seed 100's, serves every seed" in text
    assert text.endswith("**not converged** (moves 0.2 points or more): the gap is measured to "
                         "the better of the two, and the share closed is an upper bound.\n")


def test_the_report_says_whether_removing_noise_hurts_on_validation():
    """Each noise ablation is judged on validation against the recipe's final student, on the
    scale of the quality seeds' spread when there is one; per round, validation is shown too."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["ablation_section"]

    def variant(val, test=0.5):
        return {"final_val_top1": val, "final_top1": test, "seconds": 120.0,
                "rounds": [{"student_top1": test, "student_val_top1": val,
                            "pseudo_label_accuracy": 0.9}]}
    a = {"recipe": {**variant(0.87, 0.1), "seed": 2}, "no input noise": variant(0.855, 0.99),
         "no model noise": variant(0.8725)}
    text = "\n".join(section("fashion_mnist", a, 0.0019))
    assert "Ablations: fashion_mnist (seed 2, read on validation)" in text
    assert "| no input noise | 85.50 | -1.50 | 85.50 | 90.00 | 2.0 |" in text
    assert "students by round (validation)" in text
    assert ("removing noise hurts, on validation: no input noise -1.50 pts (hurts); "
            "no model noise +0.25 pts (does not hurt). One seed each; the final student's "
            "standard deviation over the quality seeds is 0.19 points.") in text
    a["no model noise"] = variant(0.8665)  # 0.35 points lower: less than two sd (0.38)
    assert "no model noise -0.35 pts (lower, within two of the seeds' standard deviations: " \
        "unclear)" in "\n".join(section("fashion_mnist", a, 0.0019))
    assert "-0.35 pts (hurts)" in "\n".join(section("fashion_mnist", a))  # no spread to judge by
    a["no model noise"]["provenance"] = {"machine": {"cores": 2, "torch_threads": 1}}
    assert "| 90.00 | 2.0 (1 of 2 cores) |" in "\n".join(section("fashion_mnist", a))
    assert "removing noise" not in "\n".join(section("d", {"recipe": variant(0.9)}))


def test_the_peers_table_puts_the_recipe_first_and_pairs_the_peers_with_its_seeds():
    report = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))

    def peer(method, seed, top1, minutes):
        return {"method": method, "framework": "usb", "framework_version": "0.3.2",
                "dataset": "d", "seed": seed, "test_top1": top1, "validation_top1": None,
                "minutes": {"total": minutes}}
    quality = _one_seed_quality(0.85, 0.88, 0.91)
    quality["summary"]["noisy_student"] = {"mean": 0.88, "std": 0.0, "n": 1}
    data = {"quality": {"d": quality},
            "peers": {"results": [peer("fixmatch", 100, 0.80, 1.0), peer("fixmatch", 101, 0.84,
                                                                         1.4),
                                  peer("pseudolabel", 100, 0.86, 1.5)]}}
    text = "\n".join(report["peers_section"](data))
    assert "| Noisy Student (this project) | noisy-student | 88.00 | - | 100 | 1.0 |  | 1.00 |" \
        in text
    # our recipe ran seed 100 only: no pairing for a peer that also ran 101
    assert "| fixmatch | usb 0.3.2 | 82.00 ± 2.83 | - | 100, 101 | 1.2 | - | - |" in text
    assert "| pseudolabel | usb 0.3.2 | 86.00 | - | 100 | 1.5 | -2.00 | 1.50 | - | - |" in text
    data["peers"]["results"][2].update(validation_top1=0.85, validation_top1_raw=0.86,
                                       test_top1_raw=0.87)  # validation prefers the trained
    assert "| pseudolabel | usb 0.3.2 | 86.00 | 85.00 | 100 | 1.5 | -2.00 | 1.50 | 87.00 | " \
        "-1.00 |" in "\n".join(report["peers_section"](data))
    assert "different machines" not in text  # the peers have no provenance: nothing said
    ours = quality["seeds"][0]["noisy_student"]["provenance"]
    ours.update(commit="a" * 40, machine={"cpu": "Intel"}, package_code="t1")

    def said(*made):
        for r, m in zip(data["peers"]["results"], made):
            r.update(m)
        return "\n".join(report["peers_section"](data))
    assert "different" not in said(ours, ours)
    text = said({"commit": "b" * 40, "machine": {"cpu": "AMD"}, "package_code": "t0"}, ours)
    assert ("made on AMD at commit bbbbbbbb and on Intel at commit aaaaaaaa, each" in text
            and "our rows on Intel at commit aaaaaaaa:" in text)
    third = {"commit": "d" * 40, "machine": {"cpu": "AMD"}, "package_code": "t0"}
    assert "made on AMD at commits bbbbbbbb, dddddddd and on Intel at commit aaaaaaaa" in said(
        {"commit": "b" * 40, "machine": {"cpu": "AMD"}, "package_code": "t0"}, ours, third)
    for key in third:  # the third row back to no provenance
        del data["peers"]["results"][2][key]
    assert "on different package code and machines, until" in text
    tools_only = {"commit": "c" * 40, "machine": {"cpu": "Intel"}, "package_code": "t1"}
    assert "different" not in said(tools_only, tools_only)  # a commit that changed the tools
    assert "on different package code, until" in said({**tools_only, "package_code": "t0"})
    assert "on different machines, until" in said(*[{**tools_only, "machine": {}}] * 2)
    assert "on an unrecorded machine at commit cccccccc" in said()


def test_a_loop_with_more_rounds_continues_the_longest_shorter_run_of_its_config(
        quick, monkeypatch):
    """A loop continues the finished run of its config with the most rounds fewer; never one
    that differs in anything else, one with as many rounds, or one made at other code."""
    tmp, data = quick
    bench = _bench()
    runs = data["ablations"]["digits"]
    recipe = runs["recipe"]
    rounds = len(recipe["rounds"])
    folder = {name: tmp / "work" / runs[name]["run_dir"] / "run"
              for name in ("recipe", "one more round")}

    def found(*overrides, seed=0):
        config = bench["recipe_config"]("digits", True, [f"seed={seed}", *overrides])
        return bench["shorter_run"](bench["loop_job"](tmp / "work", "digits", config), config)

    assert found(f"rounds={rounds + 1}") == folder["recipe"]
    assert found(f"rounds={rounds + 2}") == folder["one more round"]  # the longest shorter
    assert found(f"rounds={rounds}") is None  # as many rounds: nothing to continue
    assert found(f"rounds={rounds + 2}", "train.lr=0.01") is None  # another config
    assert found(f"rounds={rounds + 2}", seed=1) is None  # another seed's split
    monkeypatch.setitem(bench, "package_code", lambda: "another tree")
    assert found(f"rounds={rounds + 1}") is None  # other code trains other rounds


def test_a_job_is_named_by_its_config_and_the_package_code(monkeypatch, tmp_path):
    """The loop's job changes with any setting, never with `out`; a baseline's only with what it
    trains; both with the package code."""
    bench = _bench()
    config = bench["recipe_config"]("fashion_mnist", False, ["seed=100"])

    def folders(c):
        return (bench["loop_job"](tmp_path, "f", c).folder,
                bench["Job"].of(tmp_path, "f", "labels_only", c.seed,
                                settings=bench["baseline_settings"](c)).folder)

    loop, base = folders(config)
    assert loop.parent == tmp_path / "f" and loop.name.startswith("noisy_student-seed100-")
    assert folders(config.with_overrides(['out="elsewhere"'])) == (loop, base)
    for teacher_side in ("pseudo_label.threshold=0.5", "train.teacher_epochs=10",
                         "train.epochs=9", 'model.student_init="scratch"',
                         "loss.distill_smoothing=0.1", "loss.pseudo_weight=0.5",
                         "train.teacher_consistency=true", "train.min_steps=10"):
        other = folders(config.with_overrides([teacher_side]))
        assert other[0] != loop and other[1] == base, teacher_side
    for trained in ("noise.magnitude=5", "model.drop_rate=0.3", "seed=101", "train.lr=0.1",
                    "loss.label_smoothing=0", "train.amp_cpu=false",
                    "rounds=3"):  # the baseline's network is seeded by its rung
        other = folders(config.with_overrides([trained]))
        assert other[0] != loop and other[1] != base, trained
    monkeypatch.setattr(sys.modules["bench_runs"], "package_code", lambda: "another tree")
    assert set(folders(config)).isdisjoint({loop, base})


def test_package_code_names_an_uncommitted_change(monkeypatch):
    import bench_runs  # on sys.path once benchmark.py has run

    answers = {"rev-parse": "tree0", "diff": "", "ls-files": ""}
    monkeypatch.setattr(bench_runs, "_git", lambda *args: answers[args[0]])
    bench_runs.package_code.cache_clear()
    try:
        assert bench_runs.package_code() == "tree0"
        bench_runs.package_code.cache_clear()
        answers["diff"] = "-a\n+b\n"
        expected = hashlib.sha256(b"-a\n+b\n").hexdigest()[:12]
        assert bench_runs.package_code() == f"tree0+dirty-{expected}"
    finally:
        bench_runs.package_code.cache_clear()


def test_every_result_carries_its_commit_and_no_path_of_the_machine(quick):
    tmp, data = quick
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    seed = data["quality"]["digits"]["seeds"][0]
    assert seed["role"] == "tuning" and data["quality"]["digits"]["summary_seeds"] == [0]
    jobs = [seed["noisy_student"], seed["labels_only"], seed["supervised"],
            seed["supervised_longer"], *data["ablations"]["digits"].values()]
    for job in jobs:
        assert job["provenance"]["commit"] == head
        assert (tmp / "work" / job["run_dir"] / "result.json").is_file()
    assert seed["supervised_longer"]["epochs"] == 2 * seed["supervised"]["epochs"]
    text = json.dumps({k: v for k, v in data.items() if k != "runs"})  # runs: the command typed
    assert str(tmp) not in text and str(ROOT) not in text


def test_quality_again_reuses_every_finished_job(quick, tmp_path):
    """A second `quality` trains nothing: the loop and the baselines are finished jobs of the
    same config and code, reused from their folders (here copied elsewhere)."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    bench = _bench()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    bench["run"] = bench["train_supervised"] = no_training
    results = tmp_path / "r.json"
    assert bench["main"](["quality", "--quick", "--dataset", "digits", "--results",
                          str(results), "--markdown", str(tmp_path / "B.md"), "--work",
                          str(tmp_path / "work")]) == 0
    assert json.loads(results.read_text())["quality"] == data["quality"]


def test_quality_can_take_the_ceiling_the_results_hold_instead_of_training_one(quick, tmp_path):
    """--reuse-ceiling: the loop and labels-only come from their jobs, the ceiling and its check
    from the results as they were made (nothing supervised is trained, though its jobs are
    gone); results without a ceiling of that seed stop with the cause."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    for job in (tmp_path / "work" / "digits").glob("supervised-*"):
        shutil.rmtree(job)
    results = tmp_path / "r.json"
    shutil.copy(tmp / "r.json", results)
    bench = _bench()

    def no_training(*args, **kwargs):
        raise AssertionError("the ceiling was trained")

    bench["train_supervised"] = no_training
    args = ["quality", "--quick", "--dataset", "digits", "--reuse-ceiling", "--results",
            str(results), "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work")]
    assert bench["main"](args) == 0
    (seed,) = json.loads(results.read_text())["quality"]["digits"]["seeds"]
    (before,) = data["quality"]["digits"]["seeds"]
    assert seed["supervised"] == before["supervised"]
    assert seed["supervised_longer"] == before["supervised_longer"]
    assert seed["supervised"]["provenance"]["commit"] == before["supervised"]["provenance"][
        "commit"]
    results.write_text("{}")
    with pytest.raises(SystemExit, match="hold no digits ceiling of seed 0"):
        bench["main"](args)


def test_the_ceiling_trains_with_its_own_settings_and_the_report_names_them(quick, tmp_path):
    """CEILING_OVERRIDES change the ceiling and its check, not labels-only (reused as it was);
    each ceiling result names them, and so does the report's convergence line."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    bench = _bench()
    bench["CEILING_OVERRIDES"] = {"digits": ["model.drop_rate=0.3", "noise.num_ops=0"]}
    trained = []

    def record(config, images, labels, epochs, batch, splits, job):
        trained.append((job.kind, config.model.drop_rate, config.noise.num_ops, epochs))
        return {"top1": 0.5 + epochs / 1000, "top5": 1.0, "ece": 0.1, "steps": epochs,
                "batch": batch, "epochs": epochs, "images": len(images), "seconds": 1.0}

    bench["train_supervised"] = record
    results, md = tmp_path / "r.json", tmp_path / "B.md"
    assert bench["main"](["quality", "--quick", "--dataset", "digits", "--results", str(results),
                          "--markdown", str(md), "--work", str(tmp_path / "work")]) == 0
    (seed,) = json.loads(results.read_text())["quality"]["digits"]["seeds"]
    (before,) = data["quality"]["digits"]["seeds"]
    epochs = before["supervised"]["epochs"]
    assert trained == [("supervised", 0.3, 0, epochs), ("supervised", 0.3, 0, 2 * epochs)]
    assert seed["labels_only"] == before["labels_only"]
    assert seed["supervised"]["overrides"] == ["model.drop_rate=0.3", "noise.num_ops=0"]
    assert seed["supervised_longer"]["top1"] == 0.5 + 2 * epochs / 1000
    assert (f"Ceiling, seed 0, trained with `model.drop_rate=0.3`, `noise.num_ops=0`: fully "
            f"supervised {50 + epochs / 10:.2f}% after {epochs} epochs") in md.read_text()


def test_ablations_list_finished_variants_and_run_only_those_named(quick, tmp_path):
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    variant = data["ablations"]["digits"]["no input noise"]
    (tmp_path / "work" / variant["run_dir"] / "result.json").unlink()  # as if cut off
    bench = _bench()
    ran = []

    def fake_run(config, **kwargs):
        ran.append(config.noise.enabled)
        raise KeyboardInterrupt

    bench["run"] = fake_run
    results = tmp_path / "r.json"
    args = ["ablations", "--quick", "--dataset", "digits", "--results", str(results),
            "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work")]
    assert bench["main"](args + ["--variants", "no model noise"]) == 0
    assert ran == []  # every other variant had finished; the unfinished one was not asked for
    after = json.loads(results.read_text())["ablations"]["digits"]
    assert "no input noise" not in after
    assert after["no model noise"] == data["ablations"]["digits"]["no model noise"]
    with pytest.raises(KeyboardInterrupt):
        bench["main"](args + ["--variants", "no input noise"])
    assert ran == [False]  # the variant without input noise, resumed in its own folder
    command = json.loads(results.read_text())["runs"]["ablations"]["command"]
    assert shlex.split(command)[-2:] == ["--variants", "no model noise"]  # quoted, as typed


def test_the_student_size_ablation_is_the_other_choice_than_the_recipe():
    """A recipe with larger students is ablated with students equal to the teacher, and one
    with equal students with larger ones."""
    bench = _bench()
    variants = bench["variants_of"](bench["recipe_config"]("digits", True), "digits")
    assert variants["student equal to teacher"] == ['model.ladder=["cnn_tiny"]']
    assert "students larger than teacher" not in variants
    equal = bench["recipe_config"]("digits", True, ['model.ladder=["cnn_tiny", "cnn_tiny"]'])
    variants = bench["variants_of"](equal, "digits")
    assert variants["students larger than teacher"] == ['model.ladder=["cnn_tiny", "cnn_small"]']
    assert "student equal to teacher" not in variants


def test_a_new_recipe_starts_the_seeds_afresh_and_reuses_the_baselines(quick, tmp_path):
    """A change on the teacher's side is a new recipe: its seeds replace the old recipe's in
    the results (git keeps those), and the baselines, the same jobs, are reused untrained."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    results = tmp_path / "r.json"
    results.write_text(json.dumps(data))
    bench = _bench()
    old = data["quality"]["digits"]["seeds"][0]
    bench["noisy_student"] = lambda config, job: {**old["noisy_student"], "final_top1": 0.99}

    def no_training(*args, **kwargs):
        raise AssertionError("a baseline was trained again")

    bench["train_supervised"] = no_training
    recipe_config = bench["recipe_config"]
    bench["recipe_config"] = lambda dataset, quick, extra=(): recipe_config(
        dataset, quick, [*extra, "pseudo_label.threshold=0.2"])
    assert bench["main"](["quality", "--quick", "--dataset", "digits", "--results",
                          str(results), "--markdown", str(tmp_path / "B.md"), "--work",
                          str(tmp_path / "work")]) == 0
    q = json.loads(results.read_text())["quality"]["digits"]
    assert [s["seed"] for s in q["seeds"]] == [0] and q["recipe"] != old["recipe"]
    new = q["seeds"][0]
    assert new["config"]["pseudo_label"]["threshold"] == 0.2
    for key in ("labels_only", "supervised", "supervised_longer"):
        assert new[key] == old[key]
    assert new["gain"] == pytest.approx(0.99 - old["labels_only"]["top1"])


def test_peers_get_the_recipe_minutes_of_their_seed_and_are_collected(monkeypatch, tmp_path):
    bench = _bench()
    calls = []
    monkeypatch.setattr(bench["subprocess"], "run", lambda args, check: calls.append(args))
    monkeypatch.setitem(bench, "PEER_RUNS", tmp_path)
    result = {"method": "fixmatch", "framework": "usb", "framework_version": "0.3.2",
              "dataset": "digits", "seed": 100, "test_top1": 0.9, "minutes": {"total": 1.5}}
    (tmp_path / "digits-fixmatch-seed100").mkdir()
    (tmp_path / "digits-fixmatch-seed100" / "result.json").write_text(json.dumps(result))
    quality = {"digits": {"seeds": [{"seed": 100, "noisy_student": {"seconds": 93.0}}]}}
    out = bench["peers"](["digits"], ["fixmatch", "flexmatch"], [100], quality)
    assert [c[c.index("--method") + 1] for c in calls] == ["fixmatch", "flexmatch"]
    assert {c[c.index("--minutes") + 1] for c in calls} == {"1.55"}  # 93 s of the recipe
    assert out == {"results": [result]}
    other = {**result, "seed": 101}  # made in another checkout: kept; its rerun replaces it
    stale = {**result, "test_top1": 0.5}
    assert bench["peers"](["digits"], [], [100], quality, [stale, other]) == {
        "results": [other, result]}
    lamda = {**result, "framework": "LAMDA-SSL"}  # the same method of another framework
    assert bench["peers"](["digits"], [], [100], quality, [lamda]) == {
        "results": [lamda, result]}
    with pytest.raises(SystemExit, match="no quality result for digits seed 101"):
        bench["peers"](["digits"], ["fixmatch"], [101], quality)


def test_a_tried_variant_is_run_kept_in_the_results_and_listed_later(quick, tmp_path):
    """`--try NAME KEY=VALUE` runs one more variant against the recipe; a later invocation
    without it lists it (finished, from the results file) without training it again."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    results = tmp_path / "r.json"
    shutil.copy(tmp / "r.json", results)
    bench = _bench()
    args = ["ablations", "--quick", "--dataset", "digits", "--results", str(results),
            "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work")]
    assert bench["main"](args + ["--try", "no smoothing", "loss.label_smoothing=0"]) == 0
    tried = json.loads(results.read_text())["ablations"]["digits"]["no smoothing"]
    assert tried["overrides"] == ["loss.label_smoothing=0"]
    config = json.loads((tmp_path / "work" / tried["run_dir"] / "run" / "config.json").read_text())
    assert config["loss"]["label_smoothing"] == 0
    assert config["model"]["teacher_checkpoint"]  # the recipe's teacher, loaded
    ran = []
    bench["run"] = lambda config, **kwargs: ran.append(config) or {}
    assert bench["main"](args + ["--variants", "no model noise"]) == 0
    assert ran == []
    after = json.loads(results.read_text())["ablations"]["digits"]
    assert after["no smoothing"] == tried
    assert "| no smoothing |" in (tmp_path / "B.md").read_text()


def test_a_variant_of_the_teacher_trains_its_own(quick, tmp_path):
    """A variant that changes round 0's teacher's own settings trains its teacher (the whole
    loop); one that changes the students loads the recipe's."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    bench = _bench()
    ran, made = [], {k: v for k, v in data["ablations"]["digits"]["recipe"].items()
                     if k != "seed"}
    bench["noisy_student"] = lambda config, job, continues=None: ran.append(config) or made
    args = ["ablations", "--quick", "--dataset", "digits", "--results", str(tmp_path / "r.json"),
            "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work")]
    bench["main"](args + ["--try", "longer teacher", "train.teacher_epochs=40",
                          "--try", "consistency", "train.teacher_consistency=true",
                          "--try", "warm", 'model.student_init="teacher"'])
    longer = [c for c in ran if c.train.teacher_epochs == 40]
    own = [c for c in ran if c.train.teacher_consistency]
    warm = [c for c in ran if c.model.student_init == "teacher"]
    assert len(longer) == len(own) == len(warm) == 1
    assert longer[0].model.teacher_checkpoint is None and own[0].model.teacher_checkpoint is None
    assert warm[0].model.teacher_checkpoint and warm[0].train.teacher_epochs == 0


def test_variants_are_read_against_the_recipe_over_the_tuning_seeds():
    """A variant on several tuning seeds: its paired differences with the recipe of each seed on
    validation, their mean and sample sd; a variant on one seed only is not summarised."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["tuning_section"]

    def run(seed, recipe, **variants):
        return {"recipe": {"seed": seed, "final_val_top1": recipe},
                **{k.replace("_", " "): {"final_val_top1": v, "same_as_recipe": k == "same"}
                   for k, v in variants.items()}}
    text = "\n".join(section({
        "fm": run(0, 0.870, one_more=0.880, soft=0.874),
        "fm, seed 1": run(1, 0.860, one_more=0.865),
        "fm, seed 2": run(2, 0.850, one_more=0.849, same=0.850),
        "fm, seed 3": run(3, 0.850, flat=0.850),
        "fm, seed 4": run(4, 0.860, flat=0.860),
        "digits": run(0, 0.9, soft=0.95)}))
    diffs = [1.0, 0.5, -0.1]
    assert "### Over the tuning seeds: fm" in text
    assert (f"| one more | 0: +1.00, 1: +0.50, 2: -0.10 | {statistics.fmean(diffs):+.2f} ± "
            f"{statistics.stdev(diffs):.2f} | mixed |") in text
    assert "| soft |" not in text and "digits" not in text
    assert "| flat | 3: +0.00, 4: +0.00 | +0.00 ± 0.00 | no difference |" in text
    assert "| same |" not in text  # a variant equal to the recipe is not a measurement


def test_ablations_refuse_report_seeds_and_file_other_tuning_seeds_apart(tmp_path):
    bench = _bench()
    with pytest.raises(SystemExit, match="tuning seeds, not on the report seeds"):
        bench["main"](["ablations", "--quick", "--dataset", "digits", "--seeds", "1", "100",
                       "--results", str(tmp_path / "r.json"), "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()  # refused before any work
    assert bench["ablation_key"]("fashion_mnist", 0) == "fashion_mnist"
    assert bench["ablation_key"]("fashion_mnist", 2) == "fashion_mnist, seed 2"


def test_set_makes_a_recipe_of_its_own_refused_unless_filed_apart_under_a_name(
        tmp_path, capsys):
    """`--set` changes the recipe: refused (exit 2, before any work) without a --name to file
    it apart, and, like --name, for anything but quality."""
    bench = _bench()
    rest = ["--quick", "--dataset", "digits", "--work", str(tmp_path / "w"), "--results",
            str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    for argv, said in ((["quality", "--set", "train.epochs=1"], "give it a --name"),
                       (["ablations", "--set", "train.epochs=1", "--name", "x"], "for quality"),
                       (["ablations", "--name", "x"], "for quality")):
        with pytest.raises(SystemExit) as stop:
            bench["main"]([*argv, *rest])
        assert stop.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.json").exists()


def test_a_named_variant_is_filed_apart_and_its_changes_reach_the_loop(quick, tmp_path):
    """`--name` alone: the recipe on its seeds, its jobs reused and the ceiling taken from the
    headline results, filed under `variants` (the headline rows untouched) and shown in the
    report. With `--set`, the loop runs the recipe with the changes and that seed."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    results, md = tmp_path / "r.json", tmp_path / "B.md"
    shutil.copy(tmp / "r.json", results)
    bench = _bench()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    bench["run"] = bench["train_supervised"] = no_training
    args = ["quality", "--quick", "--dataset", "digits", "--reuse-ceiling", "--results",
            str(results), "--markdown", str(md), "--work", str(tmp_path / "work")]
    assert bench["main"]([*args, "--name", "again"]) == 0
    after = json.loads(results.read_text())
    assert after["quality"] == data["quality"]
    (seed,) = after["variants"]["again"]["digits"]["seeds"]
    (before,) = data["quality"]["digits"]["seeds"]
    assert {k: v for k, v in seed.items() if k != "ceiling_model"} == {
        k: v for k, v in before.items() if k != "ceiling_model"}
    assert seed["ceiling_model"] == before["model"]
    text = md.read_text()
    assert "## The recipe changed: what other settings buy" in text
    assert f"| again | (none) | 0 (tuning) | `{before['model']}` |" in text

    class Stop(Exception):
        pass

    seen = []

    def record(config, job):
        seen.append(config)
        raise Stop

    bench["noisy_student"] = record
    with pytest.raises(Stop):
        bench["main"]([*args, "--name", "longer", "--set", "train.epochs=3", "--seeds", "2"])
    assert [(c.train.epochs, c.seed) for c in seen] == [(3, 2)]
    assert json.loads(results.read_text()) == after  # nothing filed from a run that stopped


def test_the_report_shows_variants_beside_the_recipe_on_the_same_seeds():
    """The recipe's row first; a note when a variant's gap is measured to another network's
    ceiling; each changed variant against the recipe on the same seeds, computed by hand."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["variants_section"]

    def variant(final, val, seconds, changes=()):
        q = _one_seed_quality(0.85, final, 0.91)
        q["seeds"][0]["noisy_student"]["seconds"] = seconds
        q["summary"].update(noisy_student={"mean": final, "std": 0.0, "n": 1},
                            noisy_student_val={"mean": val, "std": 0.0, "n": 1})
        if changes:
            q["changes"] = list(changes)
            q["seeds"][0].update(model="big", ceiling_model="m")
        return q

    big = variant(0.88, 0.85, 150.0, ['model.ladder=["big"]'])
    lines = section({"big one": {"fm": big}, "recipe": {"fm": variant(0.87, 0.84, 60.0)}})
    text = "\n".join(lines)
    assert text.index("| recipe | (none) |") < text.index("| big one |")
    assert ("| big one | `model.ladder=[\"big\"]` | 100 (report) | `big` | 85.00 | 80.00 | "
            "85.00 | 88.00 | 91.00 | 3.00 pts | 50.00 % (to `m`'s ceiling) | 2.5 |") in text
    assert "\"big one\" measures its gap to the ceiling of `m`, not of its own network `big`" in text
    # validation 85 - 84, test 88 - 87, share 3/6 - 2/6 = 16.67 points, minutes 150 / 60
    assert ("\"big one\" against the recipe on the same seeds (100): final student on "
            "validation +1.00 points, on test +1.00 points, share of the gap +16.67 points, in "
            "2.50 times the minutes.") in lines
    big["seeds"][0]["ceiling_model"] = "big"
    alone = "\n".join(section({"big one": {"fm": big}}))
    assert "measures its gap" not in alone and "against the recipe" not in alone


def test_variants_whose_runs_are_gone_are_kept_while_the_recipe_figures_are_the_same(
        quick, tmp_path, capsys):
    """A machine without the earlier runs (runs/ is not committed) keeps the earlier variants
    from the results file when the recipe's figures are the same, and drops them otherwise."""
    tmp, data = quick
    shutil.copytree(tmp / "work", tmp_path / "work")
    results = tmp_path / "r.json"
    shutil.copy(tmp / "r.json", results)
    gone = data["ablations"]["digits"]["no input noise"]
    shutil.rmtree(tmp_path / "work" / gone["run_dir"])
    bench = _bench()
    args = ["ablations", "--quick", "--dataset", "digits", "--results", str(results),
            "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work"),
            "--variants", "no model noise"]
    assert bench["main"](args) == 0
    assert json.loads(results.read_text())["ablations"]["digits"]["no input noise"] == gone
    assert "kept from the results file" in capsys.readouterr().out
    edited = json.loads(results.read_text())
    edited["ablations"]["digits"]["recipe"]["rounds"][0]["timing"]["train"] += 5.0  # same run,
    results.write_text(json.dumps(edited))  # timed again
    assert bench["main"](args) == 0
    assert json.loads(results.read_text())["ablations"]["digits"]["no input noise"] == gone
    assert "kept from the results file" in capsys.readouterr().out
    edited = json.loads(results.read_text())
    edited["ablations"]["digits"]["recipe"]["final_val_top1"] += 0.01  # another recipe run
    results.write_text(json.dumps(edited))
    assert bench["main"](args) == 0
    assert "no input noise" not in json.loads(results.read_text())["ablations"]["digits"]
    assert "dropped from the results file" in capsys.readouterr().out
