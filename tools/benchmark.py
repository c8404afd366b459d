"""Benchmarks: what unlabeled images buy (quality) and what the framework costs (speed).

    python tools/benchmark.py quality [--dataset fashion_mnist|digits|both] [--seeds 0 1 2]
    python tools/benchmark.py ablations [--dataset ...] [--variants NAME ...]
    python tools/benchmark.py speed
    python tools/benchmark.py all            # quality + ablations + speed, then the report
    python tools/benchmark.py report         # BENCHMARKS.md and the plot from the results
    ... --quick                              # minutes: small data, few epochs (a smoke test)

Results are merged into `benchmarks/results.json` (with `--quick`: `runs/benchmarks/quick.json`),
then `BENCHMARKS.md` and `benchmarks/rounds.png` are regenerated from it. Run directories go to
`runs/benchmarks/` (not committed).

Quality, per data set and seed, from the data set's recipe (same seed, same splits):
  noisy_student   the recipe's loop: test top-1 of round 0's teacher and of each round's student,
                  pseudo-label accuracy per round
  labels_only     the final student architecture on the labeled images only, same noise, as
                  many optimizer steps as one Noisy Student round
  supervised      the same architecture on every training label (labeled + the hidden labels
                  of the unlabeled pool), same noise, each step as many images as a Noisy
                  Student step, for one round's steps or SUPERVISED_EPOCHS passes over the
                  data, whichever is more (a ceiling should be trained to convergence)
  gap_closed      (noisy_student - labels_only) / (supervised - labels_only)

A data set's seeds accumulate in the results across invocations (`--seeds 1` adds seed 1) as
long as the recipe's config, seed aside, is the same; a changed recipe starts the list afresh.
A seed goes on where it stopped (its run directory is resumed when it holds the same config),
and keeps its earlier baselines while they are the same experiment (`earlier_baseline`).
Ablation variants accumulate the same way (saved one by one, kept while the recipe and its
round 0 teacher are the same), so long ablations can be spread over several invocations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import runpy
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from noisy_student.checkpoint import file_sha256, load_json, save_json  # noqa: E402
from noisy_student.config import Config  # noqa: E402
from noisy_student.data import NoisedDataset, load_source, make_splits  # noqa: E402
from noisy_student.evaluate import classification_metrics  # noqa: E402
from noisy_student.inference import predict_logits  # noqa: E402
from noisy_student.ladder import build_model  # noqa: E402
from noisy_student.loop import run  # noqa: E402
from noisy_student.losses import build_student_loss  # noqa: E402
from noisy_student.noise_batch import build_student_noise  # noqa: E402
from noisy_student.run_dir import config_diff  # noqa: E402
from noisy_student.tracking import Tracker  # noqa: E402
from noisy_student.train import resolve_device, train_model  # noqa: E402

import bench_speed  # noqa: E402
import bench_report  # noqa: E402
from bench_reuse import (earlier_baseline, normalized, plan, quality_run,  # noqa: E402
                         same_recipe, same_run)

RESULTS = ROOT / "benchmarks" / "results.json"
QUICK_RESULTS = ROOT / "runs" / "benchmarks" / "quick.json"
WORK = ROOT / "runs" / "benchmarks"

# --quick: the same comparisons on a slice, in about a minute per data set
QUICK = {
    "digits": ["data.unlabeled_limit=300", "data.test_limit=300", "train.teacher_epochs=20",
               "train.epochs=12", "rounds=1", "pseudo_label.threshold=0.1"],
    "fashion_mnist": ["data.unlabeled_limit=3000", "data.test_limit=1000",
                      "train.teacher_epochs=5", "train.epochs=1", "rounds=2"],
}
SUPERVISED_EPOCHS = 15  # full mode; --quick uses one round's steps
EARLIER_RECIPES = 12  # seeds of replaced recipes kept in the results, newest first
ABLATIONS = {  # name -> overrides of the recipe's config (the paper: removing noise hurts)
    "no input noise": ["noise.enabled=false"],
    "no model noise": ["model.drop_rate=0", "model.drop_path_rate=0"],
    "soft pseudo-labels": ['pseudo_label.kind="soft"', 'loss.distillation="soft_ce"'],
    "hard pseudo-labels": ['pseudo_label.kind="hard"', 'loss.distillation="hard"'],
    "no filtering or balancing": ["pseudo_label.threshold=0", "pseudo_label.balance=false"],
    # one of these two, filled in from the recipe's ladder: the other choice than the recipe's
    "student equal to teacher": [],
    "students larger than teacher": [],
}
# a larger student for a recipe whose students equal its teacher: cnn_medium one block deeper
# per stage (1.5x the compute; the registry's cnn_large is about 6x, hours on 2 CPU cores)
LARGER_STUDENT = {"fashion_mnist": "cnn_medium(depth=3, stem_stride=2)", "digits": "cnn_small"}


def recipe_config(dataset: str, quick: bool, extra: list[str] = ()) -> Config:
    config: Config = runpy.run_path(str(ROOT / "recipes" / f"{dataset}.py"))["make_config"]()
    overrides = ['tracking.mode="disabled"', "checkpoint.every_minutes=0",
                 *(QUICK[dataset] if quick else []), *extra]
    return config.with_overrides(overrides)


def train_supervised(config: Config, images: np.ndarray, labels: np.ndarray, steps: int,
                     batch: int, splits: Any, tag: str) -> dict[str, Any]:
    """The final student architecture trained on (images, labels) alone, with the config's noise,
    for about `steps` steps of `batch`; its test metrics."""
    c = config
    model = build_model(c, c.rounds, splits)
    noise, batch_noise = build_student_noise(c.noise, splits.channels)  # as the loop's students
    data = NoisedDataset(images, labels, noise, splits.mean, splits.std, c.seed)
    batch, epochs = plan(len(data), steps, batch)
    loss = build_student_loss(c.loss.distillation, c.loss.temperature, c.loss.label_smoothing,
                              1.0, 0.0, with_pseudo=False)
    device = resolve_device(c.train.device)
    start = time.perf_counter()
    result = train_model(model, loss, data, None, dataclasses.replace(c.train, batch_size=batch),
                         epochs, seed=c.seed * 1000 + 99, device=device, tracker=Tracker(None),
                         tag=tag, num_workers=c.data.num_workers, eval_times=0,
                         batch_noise=batch_noise)
    logits = predict_logits(result.model, splits.test.images, splits.mean, splits.std,
                            c.train.eval_batch_size, device)
    metrics = classification_metrics(logits, torch.from_numpy(splits.test.labels),
                                     splits.num_classes)
    print(f"{tag}: {len(data)} images, {result.steps} steps of {batch}: test top-1 "
          f"{100 * metrics['top1']:.2f}%", flush=True)
    return {"top1": metrics["top1"], "top5": metrics["top5"], "ece": metrics["ece"],
            "steps": result.steps, "batch": batch, "images": len(data),
            "seconds": round(time.perf_counter() - start, 1)}


def noisy_student(config: Config, out: Path, resume: bool = True) -> dict[str, Any]:
    """The recipe's loop; per-round test top-1, pseudo-label accuracy, steps and timing. With
    `resume`, a run of the same config already in `out` is continued: finished rounds are
    loaded, so an interrupted benchmark goes on where it stopped. Seconds: the loop's own,
    teacher and rounds (those of a finished run as they were measured)."""
    config = config.with_overrides([f'out="{out}"'])
    saved = load_json(out / "config.json") if resume and (out / "config.json").is_file() else None
    same = saved is not None and same_run(saved, config.to_dict())
    changed = tuple(config_diff(saved, config.to_dict())) if same else ()
    summary = run(config, overwrite=not same, resume=same, allow_config_change=changed)
    rounds = []
    for r in summary["rounds"]:
        metrics = load_json(out / f"round_{r['round']}" / "metrics.json")
        rounds.append({"round": r["round"], "student": r["student"],
                       "student_top1": r["student_top1"],
                       "pseudo_label_accuracy": r["pseudo_label_accuracy"],
                       "pseudo_labels_kept": r["pseudo_labels_kept"],
                       "steps": metrics["train"][-1]["step"], "timing": metrics["timing"]})
    seconds = summary["teacher"]["seconds"] + sum(r["seconds"] for r in summary["rounds"])
    return {"teacher_top1": summary["teacher"]["top1"], "teacher": summary["teacher"]["model"],
            "final_top1": rounds[-1]["student_top1"], "rounds": rounds,
            "seconds": round(seconds, 1), "run_dir": str(out)}


def ns_dir(work: Path, dataset: str, seed: int, quick: bool) -> Path:
    return work / f"{'quick-' if quick else ''}{dataset}-seed{seed}" / "noisy_student"


def quality_one(work: Path, dataset: str, seed: int, quick: bool,
                old: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """One seed: the loop, then labels-only and fully supervised on the same splits (kept from
    `old`, this seed's earlier results, when they are the same experiment)."""
    config = recipe_config(dataset, quick, [f"seed={seed}"])
    ns = noisy_student(config, ns_dir(work, dataset, seed, quick))
    splits = make_splits(load_source(config.data), config.data, seed)
    b_lab = config.train.batch_size
    b_step = b_lab * (1 + config.train.unlabeled_ratio)
    steps = ns["rounds"][-1]["steps"]
    labels_only = earlier_baseline(old, "labels_only", config, len(splits.labeled), steps,
                                   b_lab) or train_supervised(
        config, splits.labeled.images, splits.labeled.labels, steps, b_lab, splits,
        "labels-only")
    if splits.unlabeled.labels is None:
        raise SystemExit(f"{dataset}: the unlabeled pool has no hidden labels to supervise with")
    everything = len(splits.labeled) + len(splits.unlabeled)
    if not quick:
        steps = max(steps, SUPERVISED_EPOCHS * math.ceil(everything / b_step))
    supervised = earlier_baseline(old, "supervised", config, everything, steps,
                                  b_step) or train_supervised(
        config, np.concatenate([splits.labeled.images, splits.unlabeled.images]),
        np.concatenate([splits.labeled.labels, splits.unlabeled.labels]),
        steps, b_step, splits, "supervised")
    gap = supervised["top1"] - labels_only["top1"]
    return {"seed": seed, "model": config.model_for(config.rounds),
            "labeled": len(splits.labeled), "unlabeled": len(splits.unlabeled),
            "test": len(splits.test), "noisy_student": ns, "labels_only": labels_only,
            "supervised": supervised,
            "gain": ns["final_top1"] - labels_only["top1"],
            "gap_closed": (ns["final_top1"] - labels_only["top1"]) / gap if gap > 0 else None,
            "command": config.to_dict()}


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every headline figure."""
    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}

    pick = {"labels_only": lambda s: s["labels_only"]["top1"],
            "teacher": lambda s: s["noisy_student"]["teacher_top1"],
            "noisy_student": lambda s: s["noisy_student"]["final_top1"],
            "supervised": lambda s: s["supervised"]["top1"], "gain": lambda s: s["gain"],
            "gap_closed": lambda s: s["gap_closed"]}
    out = {k: stat([f(s) for s in per_seed]) for k, f in pick.items()
           if all(f(s) is not None for s in per_seed)}
    rounds = len(per_seed[0]["noisy_student"]["rounds"])
    out["rounds"] = [{"round": k, **{key: stat([s["noisy_student"]["rounds"][k][key]
                                              for s in per_seed])
                                     for key in ("student_top1", "pseudo_label_accuracy")}}
                     for k in range(rounds)]
    return out


def quality(work: Path, datasets: list[str], seeds: list[int], quick: bool,
            earlier: dict[str, Any]) -> dict[str, Any]:
    """Per data set: the new seeds, plus `earlier` results' seeds made with the same recipe.
    Seeds of an earlier recipe move to `earlier_recipes` (the last EARLIER_RECIPES of them): a
    record of what it measured, and baselines that a later recipe may keep."""
    results = {}
    for dataset in datasets:
        before = earlier.get(dataset, {})
        history = before.get("seeds", []) + before.get("earlier_recipes", [])
        per_seed = [quality_one(work, dataset, seed, quick,
                                [s for s in history if s["seed"] == seed]) for seed in seeds]
        recipe = per_seed[0]["command"]
        kept = [s for s in before.get("seeds", [])
                if s["seed"] not in seeds and same_recipe(s["command"], recipe)]
        replaced = [s for s in before.get("seeds", []) if not same_recipe(s["command"], recipe)]
        per_seed = sorted(kept + per_seed, key=lambda s: s["seed"])
        results[dataset] = {"seeds": per_seed, "summary": summarize(per_seed),
                            "earlier_recipes": (replaced + before.get("earlier_recipes", []))
                            [:EARLIER_RECIPES]}
    return results


def ablations(work: Path, dataset: str, quick: bool, recipe: dict[str, Any] | None = None,
              seed: int = 0, only: list[str] | None = None,
              earlier: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The recipe against one change at a time. Every variant's students learn from the recipe
    run's round 0 teacher (loaded, not retrained), so only the student side differs.

    `recipe`: that run's results when the quality benchmark made it (same config and seed), so
    that `ablations` after `quality` trains only the variants. A variant in `earlier` (this data
    set's ablation results) made from the same recipe config, overrides and teacher weights is
    kept, not run again; `only` runs just the variants named. `save` gets the results after
    every variant, so that an interrupted run loses one variant at most and the next run goes
    on from there."""
    base = recipe_config(dataset, quick, [f"seed={seed}"])
    if recipe is None:
        folder = work / f"{'quick-' if quick else ''}ablate-{dataset}" / "recipe"
        recipe = noisy_student(base, folder)
    recipe = {**recipe, "seed": seed}
    teacher = Path(recipe["run_dir"]) / "teacher" / "model.safetensors"
    made_from = {"recipe": normalized(base.to_dict()), "teacher_sha256": file_sha256(teacher)}
    variants = dict(ABLATIONS)
    first, ladder = base.model.ladder[0], base.model.ladder
    if all(rung == first for rung in ladder):
        del variants["student equal to teacher"]
        larger = [first, LARGER_STUDENT[dataset]]  # the last rung repeats
        variants["students larger than teacher"] = [f"model.ladder={json.dumps(larger)}"]
    else:
        del variants["students larger than teacher"]
        variants["student equal to teacher"] = [f"model.ladder={json.dumps([first])}"]
    results = {"recipe": recipe}
    for name, overrides in variants.items():
        config = base.with_overrides(overrides)
        if config.to_dict() == base.to_dict():
            results[name] = {"same_as_recipe": True, **recipe}
            continue
        key = {**made_from, "overrides": overrides}
        old = (earlier or {}).get(name, {}).get("made_from")
        if old and {**old, "recipe": normalized(old["recipe"])} == key:
            results[name] = earlier[name]
            continue
        if only is not None and name not in only:
            continue
        print(f"ablation {name!r}: {' '.join(overrides)}", flush=True)
        config = config.with_overrides([f'model.teacher_checkpoint="{teacher}"',
                                        "train.teacher_epochs=0"])
        folder = work / f"{'quick-' if quick else ''}ablate-{dataset}" / name.replace(" ", "_")
        # the config names the teacher's file, not its weights: an interrupted variant is
        # continued only if it was made from the same (recorded beside its folder)
        marker = folder.with_name(folder.name + ".made_from.json")
        again = marker.is_file() and load_json(marker) == json.loads(json.dumps(key))
        save_json(marker, key)
        results[name] = {"overrides": overrides, "made_from": key,
                         **noisy_student(config, folder, resume=again)}
        if save is not None:
            save({dataset: results})
    return {dataset: results}


def machine() -> dict[str, Any]:
    import albumentations

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "albumentations": albumentations.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def merge(path: Path, section: str, value: dict[str, Any], command: str) -> dict[str, Any]:
    data = load_json(path) if path.is_file() else {}
    data.setdefault(section, {}).update(value)
    data.setdefault("runs", {})[section] = {"command": command, "machine": machine(),
                                            "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime())}
    save_json(path, data)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["quality", "ablations", "speed", "all", "report"])
    p.add_argument("--dataset", choices=["digits", "fashion_mnist", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (one with --quick)")
    p.add_argument("--quick", action="store_true", help="minutes: small slices, few epochs")
    p.add_argument("--variants", nargs="+", choices=sorted(ABLATIONS), metavar="NAME",
                   help="ablations: run only these (others are kept from earlier results "
                        "while the recipe and its teacher are the same)")
    p.add_argument("--results", type=Path, help="results JSON (default by --quick)")
    p.add_argument("--work", type=Path, default=WORK,
                   help="where the runs go (default: %(default)s)")
    p.add_argument("--markdown", type=Path,
                   help="report to write (default: BENCHMARKS.md; with --quick, next to the JSON)")
    args = p.parse_args(argv)
    path = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    command = shlex.join(["python", "tools/benchmark.py",
                          *(argv if argv is not None else sys.argv[1:])])
    datasets = ["digits", "fashion_mnist"] if args.dataset == "both" else [args.dataset]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    made: dict[str, Any] = {}
    if args.what in ("quality", "all"):
        earlier = load_json(path).get("quality", {}) if path.is_file() else {}
        made = quality(args.work, datasets, seeds, args.quick, earlier)
        merge(path, "quality", made, command)
    if args.what in ("ablations", "all"):
        done = load_json(path) if path.is_file() else {}
        for dataset in datasets:  # the recipe row: a quality run's loop, else trained anew
            earlier = done.get("ablations", {}).get(dataset, {})
            seed = earlier.get("recipe", {}).get("seed")
            recipe = quality_run(done.get("quality", {}).get(dataset, {}),
                                 recipe_config(dataset, args.quick), prefer=seed)
            seed = recipe["seed"] if recipe else seed or 0
            merge(path, "ablations", ablations(
                args.work, dataset, args.quick, recipe, seed=seed, only=args.variants,
                earlier=earlier,
                save=lambda part: merge(path, "ablations", part, command)), command)
    if args.what in ("speed", "all"):
        digits_run = ns_dir(args.work, "digits", 0, args.quick)
        merge(path, "speed", bench_speed.measure(
            recipe_config("digits", args.quick), args.work, args.quick,
            digits_run if "digits" in made else None), command)
    data = load_json(path) if path.is_file() else {}
    if args.quick:
        markdown, plot = args.markdown or path.with_suffix(".md"), path.with_suffix(".png")
    else:
        markdown, plot = args.markdown or ROOT / "BENCHMARKS.md", RESULTS.with_name("rounds.png")
    bench_report.write(data, markdown, plot)
    print(f"results: {path}\nreport: {markdown}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
