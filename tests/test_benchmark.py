"""tools/benchmark.py --quick on digits: every figure present and finite, ratios from times."""

import json
import math
import runpy
import shlex
import shutil
import statistics
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
        tag = inspect.signature(train_model).bind(*args, **kwargs).arguments["tag"]
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
    sup = [x["supervised"]["top1"] for x in seeds]
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
            "student equal to teacher"} <= set(ablations)
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
    assert "gap closed" in text and "Speed on cpu" in text and "Ablations: digits (seed 0)" in text
    assert (tmp / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_come_from_measured_times(quick, speed_training):
    _, data = quick
    cpu = data["speed"]["cpu"]
    step = cpu["train_step"]
    # the first timed run and the first two noised runs are the CPU's (then CUDA's, if any)
    framework = next(r for tag, r in speed_training if tag == "speed")
    noised = [r for tag, r in speed_training if tag == "noised"][:2]
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
    torch_backend = noise["torch_backend"]
    for figures, run in ((noise, noised[0]), (torch_backend, noised[1])):
        assert figures["data_wait_fraction"] == pytest.approx(
            run.timing["data_wait"] / run.seconds)
    assert noise["noised_train_images_per_second"] == pytest.approx(noised[0].images_per_second)
    assert torch_backend["images_per_second"] == pytest.approx(noised[1].images_per_second)
    assert torch_backend["noise_images_per_second"] > 0  # timed inside bench_speed alone


def test_ablations_reuse_the_quality_run_of_the_same_recipe(tmp_path):
    """`ablations` after `quality` takes a seed's loop (and its teacher) instead of training the
    recipe again, but only for the same config, while its run directory still holds that run;
    the seed earlier variants used comes first, then the lowest."""
    bench = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))
    config = bench["recipe_config"]("digits", True)
    seeds = {}
    for seed in (2, 0, 1):
        run_dir, made = tmp_path / f"ns{seed}", config.with_overrides([f"seed={seed}"])
        command = json.loads(json.dumps(made.to_dict()))
        del command["noise"]["backend"]  # stored before the key existed: its default applies
        seeds[seed] = {"seed": seed, "command": command,
                       "noisy_student": {"run_dir": str(run_dir), "final_top1": seed / 10}}
        (run_dir / "teacher").mkdir(parents=True)
        (run_dir / "config.json").write_text(made.with_overrides([f'out="{run_dir}"']).to_json())
    earlier = {"seeds": list(seeds.values())}

    def found(**kw):
        row = bench["quality_run"](earlier, config, **kw)
        return None if row is None else (row["seed"], row["final_top1"])

    assert found() is None  # no teacher on disk: train it again
    for seed in (2, 1):
        (tmp_path / f"ns{seed}" / "teacher" / "model.safetensors").write_bytes(b"weights")
    assert found() == (1, 0.1)
    assert found(prefer=2) == (2, 0.2)
    assert found(prefer=0) == (1, 0.1)  # seed 0's teacher is gone
    # seed 1's folder was overwritten by a run of another recipe: its teacher is not this one
    (tmp_path / "ns1" / "config.json").write_text(
        config.with_overrides(["seed=1", "train.epochs=3"]).to_json())
    assert found() == (2, 0.2)
    (tmp_path / "ns2" / "config.json").write_text(  # or by another seed of this recipe
        config.with_overrides(["seed=0", f'out="{tmp_path / "ns2"}"']).to_json())
    assert found() is None
    (tmp_path / "ns2" / "config.json").write_text(
        config.with_overrides(["seed=2", f'out="{tmp_path / "ns2"}"']).to_json())
    assert found() == (2, 0.2)
    changed = config.with_overrides(["train.epochs=3"])
    assert bench["quality_run"](earlier, changed) is None  # another recipe: not comparable
    assert bench["quality_run"]({}, config) is None


def _one_seed_quality(labels_only, final, supervised):
    def stat(x):
        return {"mean": x, "std": 0.0, "n": 1}
    gain = final - labels_only
    seed = {"seed": 0, "labeled": 1000, "unlabeled": 59000, "test": 10000, "model": "m",
            "labels_only": {"top1": labels_only, "steps": 10, "batch": 64},
            "supervised": {"top1": supervised, "steps": 20, "batch": 256},
            "noisy_student": {"teacher_top1": 0.8, "seconds": 60.0,
                              "rounds": [{"student_top1": final}]}}
    summary = {"labels_only": stat(labels_only), "teacher": stat(0.8),
               "supervised": stat(supervised), "gain": stat(gain),
               "gap_closed": stat(gain / (supervised - labels_only)),
               "rounds": [{"round": 0, "student_top1": stat(final),
                           "pseudo_label_accuracy": stat(0.9)}]}
    return {"seeds": [seed], "summary": summary}


@pytest.mark.parametrize("final, verdict", [(0.90, "met"), (0.88, "**missed**")])
def test_the_report_judges_the_quality_target(final, verdict):
    """Fashion-MNIST's target: +5 points over labels-only and 60% of the gap closed."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["quality_section"]
    lines = section("fashion_mnist", _one_seed_quality(0.85, final, 0.91))  # +5 / +3 pts
    assert [line for line in lines if line.startswith("Target")][0].endswith(f": {verdict}.")
    assert "gap to full supervision is 6.00 points" in "".join(lines)
    assert "gain asked for is 83% of it and the share asked for is 3.60 points" in "".join(lines)
    assert not any(line.startswith("Target") for line in section("digits",
                                                                  _one_seed_quality(0.9, 0.95, 1)))


def test_the_report_says_whether_removing_noise_hurts():
    """Each noise ablation is judged against the recipe's final student, on the scale of the
    quality seeds' spread when there is one."""
    section = runpy.run_path(str(ROOT / "tools" / "bench_report.py"))["ablation_section"]

    def variant(final):
        return {"final_top1": final, "rounds": [{"student_top1": final,
                                                 "pseudo_label_accuracy": 0.9}]}
    a = {"recipe": {**variant(0.87), "seed": 2}, "no input noise": variant(0.855),
         "no model noise": variant(0.8725)}
    text = "\n".join(section("fashion_mnist", a, 0.0019))
    assert "Ablations: fashion_mnist (seed 2)" in text
    assert "| no input noise | 85.50 | 85.50 | -1.50 |" in text
    assert ("removing noise hurts: no input noise -1.50 pts (hurts); "
            "no model noise +0.25 pts (does not hurt). One seed each; the final student's "
            "standard deviation over the quality seeds is 0.19 points.") in text
    a["no model noise"] = variant(0.8665)  # 0.35 points lower: less than two sd (0.38)
    assert "no model noise -0.35 pts (lower, within two of the seeds' standard deviations: " \
        "unclear)" in "\n".join(section("fashion_mnist", a, 0.0019))
    assert "-0.35 pts (hurts)" in "\n".join(section("fashion_mnist", a))  # no spread to judge by
    assert "removing noise" not in "\n".join(section("d", {"recipe": variant(0.9)}))


def test_ablations_go_on_from_earlier_results(quick, tmp_path):
    """Variants made from the same recipe and teacher are kept; `--variants` runs just those
    named; each finished variant is saved at once."""
    tmp, data = quick
    results = tmp_path / "r.json"
    data = json.loads(json.dumps(data))  # the fixture's copy stays whole
    del data["ablations"]["digits"]["no input noise"]
    results.write_text(json.dumps(data))
    main = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"]
    bench = main.__globals__  # the module's namespace (run_path returns a copy of it)
    ran, cut = [], []

    def fake_run(config, folder, resume=True):
        ran.append(folder.name)
        if cut and folder.name in cut:
            raise KeyboardInterrupt
        return {"run_dir": str(folder), "final_top1": 0.5, "teacher_top1": 0.4,
                "rounds": [{"student_top1": 0.5, "pseudo_label_accuracy": 0.6}]}

    bench["noisy_student"] = fake_run
    args = ["ablations", "--quick", "--dataset", "digits", "--results", str(results),
            "--markdown", str(tmp_path / "B.md"), "--work", str(tmp / "work")]
    assert bench["main"](args + ["--variants", "no model noise"]) == 0
    assert ran == []  # kept from the earlier run; the missing variant was not asked for
    assert "no input noise" not in json.loads(results.read_text())["ablations"]["digits"]
    assert bench["main"](args + ["--variants", "no input noise"]) == 0
    assert ran == ["no_input_noise"]
    after = json.loads(results.read_text())["ablations"]["digits"]
    assert after["no input noise"]["final_top1"] == 0.5
    assert after["no model noise"] == data["ablations"]["digits"]["no model noise"]
    command = json.loads(results.read_text())["runs"]["ablations"]["command"]
    assert shlex.split(command)[-2:] == ["--variants", "no input noise"]  # quoted, as typed
    # a changed teacher invalidates every variant: the run starts over, and is cut off in its
    # second variant after the first was saved
    teacher = Path(after["recipe"]["run_dir"]) / "teacher" / "model.safetensors"
    saved, cut[:] = teacher.read_bytes(), ["no_model_noise"]
    try:
        teacher.write_bytes(saved + b"changed")
        with pytest.raises(KeyboardInterrupt):
            bench["main"](args)
    finally:
        teacher.write_bytes(saved)
    assert ran == ["no_input_noise", "no_input_noise", "no_model_noise"]
    after = json.loads(results.read_text())["ablations"]["digits"]
    assert set(after) == {"recipe", "no input noise"}
    old_sha = data["ablations"]["digits"]["no model noise"]["made_from"]["teacher_sha256"]
    assert after["no input noise"]["made_from"]["teacher_sha256"] != old_sha


def test_quality_again_resumes_the_loop_and_keeps_the_baselines(quick, tmp_path):
    """A second `quality` continues the finished loop (nothing is trained again), even from a
    run directory moved elsewhere, and keeps the baselines, which are the same experiment."""
    tmp, data = quick
    results = tmp_path / "r.json"
    results.write_text(json.dumps(data))
    old = data["quality"]["digits"]["seeds"][0]
    moved = tmp_path / "work" / Path(old["noisy_student"]["run_dir"]).parent.name
    shutil.copytree(Path(old["noisy_student"]["run_dir"]).parent, moved)
    before = {f: f.stat().st_mtime_ns for f in (moved / "noisy_student").rglob("*.safetensors")}
    main = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"]
    assert main(["quality", "--quick", "--dataset", "digits", "--results", str(results),
                 "--markdown", str(tmp_path / "B.md"), "--work", str(tmp_path / "work")]) == 0
    assert before and {f: f.stat().st_mtime_ns for f in before} == before
    new = json.loads(results.read_text())["quality"]["digits"]["seeds"][0]
    assert new["noisy_student"] == {**old["noisy_student"],
                                    "run_dir": str(moved / "noisy_student")}
    for key in ("labels_only", "supervised"):
        assert new[key] == {**old[key], "kept": True}


def test_a_baseline_is_kept_only_for_the_same_experiment():
    """Labels-only and supervised do not use the teacher's side of the recipe: a change there
    keeps them; a change in what they train (noise, architecture, steps, seed) does not."""
    bench = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))
    keep = bench["earlier_baseline"]
    config = bench["recipe_config"]("fashion_mnist", False, ["seed=1"])
    command = json.loads(json.dumps(config.to_dict()))
    del command["noise"]["backend"]  # stored before the key existed: its default applies
    old = {"command": command,
           "labels_only": {"top1": 0.85, "images": 1000, "batch": 64, "steps": 2464}}
    other = {"command": config.with_overrides(["noise.magnitude=5"]).to_dict(),
             "labels_only": {"top1": 0.84, "images": 1000, "batch": 64, "steps": 2464}}
    assert keep([other, old], "labels_only", config, 1000, 2464, 64) == {
        **old["labels_only"], "kept": True}  # the first of the same experiment
    assert keep([old], "labels_only", config, 1000, 2460, 64)  # the same 154 epochs
    ladder = json.dumps(["cnn_medium(stem_stride=2)"] * 3)
    for teacher_side in (f"model.ladder={ladder}", "train.teacher_epochs=150",
                         "pseudo_label.threshold=0.5", "train.epochs=9"):
        assert keep([old], "labels_only", config.with_overrides([teacher_side]), 1000, 2464, 64)
    for trained in ("noise.magnitude=5", "model.drop_rate=0.3", "seed=2", "train.lr=0.1",
                    'model.ladder=["cnn_small", "cnn_medium(stem_stride=2)", "cnn_small"]'):
        assert keep([old], "labels_only", config.with_overrides([trained]), 1000, 2464, 64) is None
    assert keep([old], "labels_only", config, 1000, 2480, 64) is None  # 155 epochs
    assert keep([old], "labels_only", config, 1000, 2464, 32) is None
    assert keep([], "labels_only", config, 1000, 2464, 64) is None


def test_configs_compare_as_today_reads_them_and_an_unreadable_one_is_never_the_same():
    bench = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))
    config = bench["recipe_config"]("digits", False, ["seed=1"]).to_dict()
    moved, reseeded = {**config, "out": "elsewhere"}, {**config, "seed": 2}
    unreadable = {**config, "no_such_key": 1}
    assert bench["same_run"](config, moved) and not bench["same_run"](config, reseeded)
    assert bench["same_recipe"](config, reseeded) and not bench["same_recipe"](config, moved)
    for a, b in ((config, unreadable), (unreadable, config), (unreadable, unreadable)):
        assert not bench["same_run"](a, b) and not bench["same_recipe"](a, b)


def test_the_student_size_ablation_is_the_other_choice_than_the_recipe(tmp_path):
    """A recipe with larger students is ablated with students equal to the teacher, and one
    with equal students with larger ones."""
    main = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"]
    bench = main.__globals__
    teacher = tmp_path / "recipe" / "teacher" / "model.safetensors"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"weights")
    recipe = {"run_dir": str(tmp_path / "recipe"), "final_top1": 0.5}
    ladders = {}

    def fake_run(config, folder, resume=True):
        ladders[folder.name] = [config.model_for(k) for k in range(config.rounds + 1)]
        return {"run_dir": str(folder), "final_top1": 0.5}

    bench["noisy_student"] = fake_run
    size = ["student equal to teacher", "students larger than teacher"]
    out = bench["ablations"](tmp_path, "digits", True, recipe, only=size)["digits"]
    assert {k for k, v in out.items() if "overrides" in v} == {"student equal to teacher"}
    assert ladders == {"student_equal_to_teacher": ["cnn_tiny", "cnn_tiny"]}
    recipe_config = bench["recipe_config"]
    bench["recipe_config"] = lambda dataset, quick, extra=(): recipe_config(
        dataset, quick, [*extra, 'model.ladder=["cnn_tiny", "cnn_tiny"]'])
    ladders.clear()
    out = bench["ablations"](tmp_path, "digits", True, recipe, only=size)["digits"]
    assert {k for k, v in out.items() if "overrides" in v} == {"students larger than teacher"}
    assert ladders == {"students_larger_than_teacher": ["cnn_tiny", "cnn_small"]}
    assert out["students larger than teacher"]["overrides"] == [
        'model.ladder=["cnn_tiny", "cnn_small"]']


def test_a_new_recipe_moves_the_old_seeds_aside_and_keeps_their_baselines(quick, tmp_path):
    """A change on the teacher's side starts the seeds afresh; the old ones are kept under
    earlier_recipes, and their baselines serve the new recipe without training."""
    tmp, data = quick
    results = tmp_path / "r.json"
    results.write_text(json.dumps(data))
    main = runpy.run_path(str(ROOT / "tools" / "benchmark.py"))["main"]
    bench = main.__globals__
    old = data["quality"]["digits"]["seeds"][0]
    bench["noisy_student"] = lambda config, out, resume=True: {**old["noisy_student"],
                                                               "final_top1": 0.99}

    def no_training(*args, **kwargs):
        raise AssertionError("a baseline was trained again")

    bench["train_supervised"] = no_training
    recipe_config = bench["recipe_config"]
    bench["recipe_config"] = lambda dataset, quick, extra=(): recipe_config(
        dataset, quick, [*extra, "pseudo_label.threshold=0.2"])
    assert main(["quality", "--quick", "--dataset", "digits", "--results", str(results),
                 "--markdown", str(tmp_path / "B.md"), "--work", str(tmp / "work")]) == 0
    q = json.loads(results.read_text())["quality"]["digits"]
    assert q["earlier_recipes"] == [old]
    new = q["seeds"][0]
    assert new["command"]["pseudo_label"]["threshold"] == 0.2
    for key in ("labels_only", "supervised"):
        assert new[key] == {**old[key], "kept": True}
    assert new["gain"] == pytest.approx(0.99 - old["labels_only"]["top1"])
    report = (tmp_path / "B.md").read_text()
    assert report.count(" (kept)") == 2 and "(kept): a baseline an earlier run made" in report
