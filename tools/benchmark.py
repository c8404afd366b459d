"""Benchmarks: what unlabeled images buy (quality) and what the framework costs (speed).

    python tools/benchmark.py quality [--dataset fashion_mnist|digits|both] [--seeds 100 101 102]
    python tools/benchmark.py ablations [--dataset ...] [--variants NAME ...]
    python tools/benchmark.py ablations --try "ema 0.999" train.ema_decay=0.999  # any change
    python tools/benchmark.py speed
    python tools/benchmark.py peers [--methods fixmatch flexmatch ...]  # USB, same split & budget
    python tools/benchmark.py all            # quality + ablations + speed, then the report
    python tools/benchmark.py report         # BENCHMARKS.md and the plot from the results
    ... --quick                              # minutes: small data, few epochs (a smoke test)

Results are merged into `benchmarks/results.json` (with `--quick`: `runs/benchmarks/quick.json`),
then `BENCHMARKS.md` and `benchmarks/rounds.png` are regenerated from it. Runs go to
`runs/benchmarks/` (not committed), one directory per job named by its fingerprint
(`tools/bench_runs.py`): a finished job is reused, an unfinished one resumed.

The rule: every choice made from a measured figure is made on validation; test is read only for
the report. Seeds 0, 1, 2 are tuning seeds (ablations, recipe choices, read on validation);
seeds 100, 101, 102 are report seeds, never used for a choice: the headline figures are theirs.

Quality, per data set and seed, from the data set's recipe (same seed, same splits):
  noisy_student   the recipe's loop: validation and test top-1 of round 0's teacher and of each
                  round's student, pseudo-label accuracy per round
  labels_only     the final student architecture on the labeled images only, same noise, as
                  many optimizer steps as one Noisy Student round
  supervised      the same architecture on every training label (labeled + the hidden labels
                  of the unlabeled pool), same noise, each step as many images as a Noisy
                  Student step, for one round's steps or SUPERVISED_EPOCHS[dataset] passes over
                  the data, whichever is more, and also twice as long (`supervised_longer`), to
                  show it has converged; one per seed, or one for every seed (SHARED_CEILING)
  gap_closed      (noisy_student - labels_only) / (ceiling - labels_only), the ceiling the
                  better of supervised and supervised_longer: while it has not converged, the
                  share closed is an upper bound

A data set's seeds accumulate in the results across invocations (`--seeds 101` adds seed 101)
while the recipe (its config, seed aside) is the same; a changed recipe starts the list afresh
(git keeps the old one). Every result carries the commit, versions and machine that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import runpy
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from noisy_student.checkpoint import TrainCheckpoints, load_json, save_json  # noqa: E402
from noisy_student.config import Config  # noqa: E402
from noisy_student.data import NoisedDataset, load_source, make_splits  # noqa: E402
from noisy_student.metrics import classification_metrics  # noqa: E402
from noisy_student.inference import predict_logits  # noqa: E402
from noisy_student.ladder import build_model  # noqa: E402
from noisy_student.loop import run  # noqa: E402
from noisy_student.losses import build_student_loss  # noqa: E402
from noisy_student.noise_batch import build_student_noise  # noqa: E402
from noisy_student.distributed import resolve_device  # noqa: E402
from noisy_student.train import TrainData, TrainHooks, train_model  # noqa: E402

import bench_speed  # noqa: E402
import bench_report  # noqa: E402
from bench_runs import (Job, code_state, fingerprint, identity, package_code,  # noqa: E402
                        provenance)

RESULTS = ROOT / "benchmarks" / "results.json"
QUICK_RESULTS = ROOT / "runs" / "benchmarks" / "quick.json"
WORK = ROOT / "runs" / "benchmarks"
PEER_RUNS = ROOT / "runs" / "peers"  # tools/peers.py's default output
PEERS = runpy.run_path(str(ROOT / "tools" / "peers.py"))
TUNING_SEEDS = (0, 1, 2)  # choices, read on validation
REPORT_SEEDS = (100, 101, 102)  # the report, never used for a choice

# --quick: the same comparisons on a slice, in about a minute per data set
QUICK = {
    "digits": ["data.unlabeled_limit=300", "data.test_limit=300", "train.teacher_epochs=20",
               "train.epochs=12", "rounds=1", "pseudo_label.threshold=0.1"],
    "fashion_mnist": ["data.unlabeled_limit=3000", "data.test_limit=1000",
                      "train.teacher_epochs=5", "train.epochs=1", "rounds=2"],
}
# full mode (--quick uses one round's steps), per data set. Digits, seeds 100-102: +0.37 points
# on average from 30 epochs to 60 (26f8989), and again from 60 to 120 (eab1d05); converged from
# 120 to 240 (+0.06, 60eef73); one of its 539 test images is 0.19 points. Fashion-MNIST: below.
SUPERVISED_EPOCHS = {"digits": 120, "fashion_mnist": 120}
# What the ceiling trains with instead of the students' noise, per data set. Fashion-MNIST,
# seed 100, with the students' noise (RandAugment 2/9, dropout 0.5, drop path 0.2), test top-1:
# 90.68% after 15 epochs, 92.24% after 30 (5158d44), 93.26% after 60, 94.03% after 120
# (fcdfcd5), 94.01% after 120 (5b591e4): each doubling adds about 0.7 of the one before, so the
# 0.2-point check would pass only after 1,000-2,000 epochs (11-22 hours on 2 CPU cores). Fully
# labeled, 59,000 images need less regularization: crop and flip without RandAugment, a lighter
# dropout and drop path (set before measuring, not chosen from a figure): 93.94% after 60
# epochs, 94.29% after 120 (951ab27; +0.35 points, not converged), so 120 and its 240-epoch check.
CEILING_OVERRIDES = {"fashion_mnist": ["noise.num_ops=0", "model.drop_rate=0.2",
                                       "model.drop_path_rate=0.1"]}
# Data sets whose ceiling (and its check) is trained once, on the first report seed's split, and
# used for every seed: Fashion-MNIST's takes hours, and its seeds' training pools differ only in
# their 1,000 validation images. Elsewhere every seed trains its own, and its check.
SHARED_CEILING = {"fashion_mnist"}
ABLATIONS = {  # name -> overrides of the recipe's config (the paper: removing noise hurts)
    "no input noise": ["noise.enabled=false"],
    "no model noise": ["model.drop_rate=0", "model.drop_path_rate=0"],
    "soft pseudo-labels": ['pseudo_label.kind="soft"', 'loss.distillation="soft_ce"'],
    "hard pseudo-labels": ['pseudo_label.kind="hard"', 'loss.distillation="hard"'],
    "no filtering or balancing": ["pseudo_label.threshold=0", "pseudo_label.balance=false"],
    # one of these two, filled in from the recipe's ladder: the other choice than the recipe's
    "student equal to teacher": [],
    "students larger than teacher": [],
    # filled in from the recipe's length: is another round worth it, are shorter rounds enough
    "one more round": [],
    "three quarters of the epochs": [],
}
# a larger student for a recipe whose students equal its teacher: cnn_medium one block deeper
# per stage (1.5x the compute; the registry's cnn_large is about 6x, hours on 2 CPU cores)
LARGER_STUDENT = {"fashion_mnist": "cnn_medium(depth=3, stem_stride=2)", "digits": "cnn_small"}


def role(seed: int) -> str:
    return "report" if seed in REPORT_SEEDS else "tuning"


def recipe_config(dataset: str, quick: bool, extra: list[str] = ()) -> Config:
    config: Config = runpy.run_path(str(ROOT / "recipes" / f"{dataset}.py"))["make_config"]()
    overrides = ['tracking.mode="disabled"', "checkpoint.every_minutes=0",
                 *(QUICK[dataset] if quick else []), *extra]
    return config.with_overrides(overrides)


def recipe_fingerprint(config: Config) -> str:
    """The recipe a seed was made with: its config without seed and out."""
    return fingerprint({**identity(config), "seed": None})


def plan(images: int, steps: int, batch: int) -> tuple[int, int]:
    """(batch, epochs) of a baseline of about `steps` steps of `batch` over `images`."""
    batch = min(batch, images)
    return batch, max(1, round(steps / math.ceil(images / batch)))


# settings only the loop reads (its teacher, pseudo-labels, students' lengths and losses): a
# baseline, one network trained on labels with the labeled loss, is the same whatever they are
LOOP_ONLY = {"model": ("ladder", "teacher_checkpoint", "student_init"),
             "loss": ("distillation", "temperature", "distill_smoothing", "labeled_weight",
                      "pseudo_weight"),
             "train": ("teacher_epochs", "epochs", "teacher_min_steps", "min_steps",
                       "unlabeled_ratio", "teacher_consistency", "consistency_threshold")}


def baseline_settings(config: Config) -> dict[str, Any]:
    """What a baseline depends on besides its images and steps: its network (the final
    student's, seeded by its rung) and the settings it trains with, none of LOOP_ONLY."""
    c = identity(config)
    kept = {part: {k: v for k, v in c[part].items() if k not in LOOP_ONLY.get(part, ())}
            for part in ("model", "noise", "data", "loss", "train")}
    return {**kept, "network": config.model_for(config.rounds), "rung": config.rounds,
            "seed": c["seed"]}


def scores(model: torch.nn.Module, splits: Any, config: Config,
           device: torch.device) -> dict[str, float]:
    """Test top-1, top-5 and ECE, and validation top-1 and ECE when there is a validation set."""
    out: dict[str, float] = {}
    for name, images in splits.scored().items():
        logits = predict_logits(model, images.images, splits.mean, splits.std,
                                config.train.eval_batch_size, device)
        m = classification_metrics(logits, torch.from_numpy(images.labels), splits.num_classes)
        prefix = "" if name == "test" else f"{name}_"
        out.update({f"{prefix}top1": m["top1"], f"{prefix}ece": m["ece"]})
        if name == "test":
            out["top5"] = m["top5"]
    return out


def train_supervised(config: Config, images: np.ndarray, labels: np.ndarray, epochs: int,
                     batch: int, splits: Any, job: Job) -> dict[str, Any]:
    """The final student architecture trained on (images, labels) alone, with the config's
    noise, for `epochs` passes of `batch`; its scores. Checkpointed in the job's folder, so an
    interrupted baseline goes on where it stopped."""
    c = config
    model = build_model(c, c.rounds, splits)
    noise, batch_noise = build_student_noise(c.noise, splits.channels)  # as the loop's students
    data = NoisedDataset(images, labels, noise, splits.mean, splits.std, c.seed)
    loss = build_student_loss(dataclasses.replace(c.loss, labeled_weight=1.0, pseudo_weight=0.0),
                              with_pseudo=False)
    device = resolve_device(c.train.device)
    checkpoints = TrainCheckpoints(job.folder / "checkpoints", {"phase": job.kind}, keep=1,
                                   every_minutes=10.0, resume=True)
    start = time.perf_counter()
    result = train_model(model, loss, dataclasses.replace(c.train, batch_size=batch), device,
                         TrainData(data, epochs=epochs, seed=c.seed * 1000 + 99,
                                   num_workers=c.data.num_workers, batch_noise=batch_noise),
                         TrainHooks(job.kind, eval_times=0, checkpoints=checkpoints))
    figures = scores(result.model, splits, c, device)
    print(f"{job.kind}: {len(data)} images, {result.steps} steps of {batch}: test top-1 "
          f"{100 * figures['top1']:.2f}%", flush=True)
    for path in checkpoints.paths():  # finished: result.json holds what is kept
        path.unlink()
    return {**figures, "steps": result.steps, "batch": batch, "epochs": epochs,
            "images": len(data),
            "seconds": round(time.perf_counter() - start + result.seconds_before, 1)}


def baseline(work: Path, dataset: str, kind: str, config: Config, images: np.ndarray,
             labels: np.ndarray, steps: int, batch: int, splits: Any) -> dict[str, Any]:
    """A baseline of about `steps` steps of `batch`: its earlier result when the same job has
    finished (same settings, images, batch, epochs and package code), else trained now."""
    batch, epochs = plan(len(images), steps, batch)
    job = Job.of(work, dataset, kind, config.seed, settings=baseline_settings(config),
                 images=len(images), batch=batch, epochs=epochs)
    return job.reused() or job.finish(train_supervised(config, images, labels, epochs, batch,
                                                       splits, job))


def noisy_student(config: Config, job: Job) -> dict[str, Any]:
    """The recipe's loop in `job.folder / "run"`, its earlier result when finished; per-round
    validation and test top-1, pseudo-label accuracy, steps and timing. An interrupted loop
    goes on where it stopped (finished rounds are loaded); a new one continues the longest
    finished run of the same config with fewer rounds (`shorter_run`), whose rounds are linked
    in, not trained again. Seconds: the loop's own, teacher and rounds (as they were measured,
    over every process of a resumed or continued run)."""
    done = job.reused()
    if done is not None:
        return done
    out = job.folder / "run"
    config = config.with_overrides([f'out="{out}"'])
    again = (out / "config.json").is_file()
    continues = None if again else shorter_run(job, config)
    if continues is not None:
        print(f"{job.kind} seed {job.seed}: continues {continues.parent.name}", flush=True)
        finished = len(load_json(continues / "summary.json")["rounds"])
        summary = run(config, from_round=finished, from_run=str(continues))
    else:
        summary = run(config, resume=again, allow_config_change=("out",) if again else ())
    rounds = []
    for r in summary["rounds"]:
        metrics = load_json(out / f"round_{r['round']}" / "metrics.json")
        rounds.append({"round": r["round"], "student": r["student"],
                       "student_top1": r["student_top1"],
                       "student_val_top1": r.get("student_val_top1"),
                       "pseudo_label_accuracy": r["pseudo_label_accuracy"],
                       "pseudo_labels_kept": r["pseudo_labels_kept"],
                       "steps": metrics["train"][-1]["step"], "timing": metrics["timing"]})
    t = summary["teacher"]
    seconds = t["seconds"] + sum(r["seconds"] for r in summary["rounds"])
    return job.finish({
        "teacher": t["model"], "teacher_top1": t["top1"], "teacher_val_top1": t.get("val_top1"),
        "final_top1": rounds[-1]["student_top1"],
        "final_val_top1": rounds[-1]["student_val_top1"], "rounds": rounds,
        "seconds": round(seconds, 1)})


def shorter_run(job: Job, config: Config) -> Path | None:
    """The run folder a loop of `config` continues: of the finished jobs of its dataset and seed
    (the recipe's, an ablation's) at this package code, the one whose config is `config` with
    the most rounds fewer; None when there is none. Round k learns only from rounds < k, so
    that run's rounds are the first rounds of `config`'s own."""
    best: tuple[int, Path | None] = (0, None)
    for result in (job.work / job.dataset).glob(f"*-seed{job.seed}-*/result.json"):
        folder = result.parent / "run"
        if (load_json(result).get("provenance", {}).get("package_code") != package_code()
                or not (folder / "config.json").is_file()):
            continue
        other = Config.load(folder / "config.json")
        if (best[0] < other.rounds < config.rounds
                and other.replace(rounds=config.rounds, out=config.out) == config):
            best = (other.rounds, folder)
    return best[1]


def loop_job(work: Path, dataset: str, config: Config, kind: str = "noisy_student") -> Job:
    return Job.of(work, dataset, kind, config.seed, config=identity(config))


def quality_one(work: Path, dataset: str, seed: int, quick: bool,
                reuse_ceiling: list[dict[str, Any]] | None = None,
                changes: list[str] = ()) -> dict[str, Any]:
    """One seed: the loop, then labels-only on the same splits and the fully supervised ceiling
    (its own or the shared one, see SHARED_CEILING); with `reuse_ceiling` (earlier results'
    seeds) the ceiling and its check are theirs, as made (their commit and epochs say so).
    `changes`: overrides of the recipe (`--set`), for the loop and both baselines."""
    config = recipe_config(dataset, quick, [f"seed={seed}", *changes])
    ns = noisy_student(config, loop_job(work, dataset, config))
    source = load_source(config.data)
    splits = make_splits(source, config.data, seed)
    steps = ns["rounds"][-1]["steps"]
    labels_only = baseline(work, dataset, "labels_only", config, splits.labeled.images,
                           splits.labeled.labels, steps, config.train.batch_size, splits)
    ceiling_seed = REPORT_SEEDS[0] if dataset in SHARED_CEILING and not quick else seed
    if reuse_ceiling is not None:
        supervised, longer, ceiling_model = earlier_ceiling(reuse_ceiling, dataset, ceiling_seed)
    else:
        ceiling_model = config.model_for(config.rounds)
        supervised, longer = ceiling(
            work, dataset, config.replace(seed=ceiling_seed), steps, quick,
            splits if ceiling_seed == seed else make_splits(source, config.data, ceiling_seed))
    gap = bench_report.best_ceiling({"supervised": supervised, "supervised_longer": longer})[
        "top1"] - labels_only["top1"]
    return {"seed": seed, "role": role(seed), "model": config.model_for(config.rounds),
            "recipe": recipe_fingerprint(config), **splits.record["counts"],
            "noisy_student": ns, "labels_only": labels_only, "supervised": supervised,
            "supervised_longer": longer, "ceiling_seed": ceiling_seed,
            "ceiling_model": ceiling_model,
            "gain": ns["final_top1"] - labels_only["top1"],
            "gap_closed": (ns["final_top1"] - labels_only["top1"]) / gap if gap > 0 else None,
            "config": identity(config)}


def ceiling(work: Path, dataset: str, config: Config, steps: int, quick: bool,
            splits: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fully supervised ceiling on `splits`, `config.seed`'s (every training label: labeled
    and the unlabeled pool's hidden ones), for `steps` steps or SUPERVISED_EPOCHS[dataset]
    epochs, whichever is more, and the same trained twice as long: the convergence check.
    Trained with the recipe's settings but CEILING_OVERRIDES[dataset], which each result names."""
    if splits.unlabeled.labels is None:
        raise SystemExit(f"{dataset}: the unlabeled pool has no hidden labels to supervise with")
    b_step = config.train.batch_size * (1 + config.train.unlabeled_ratio)
    images = np.concatenate([splits.labeled.images, splits.unlabeled.images])
    labels = np.concatenate([splits.labeled.labels, splits.unlabeled.labels])
    if not quick:
        steps = max(steps, SUPERVISED_EPOCHS[dataset] * math.ceil(len(images) / b_step))
    overrides = CEILING_OVERRIDES.get(dataset, [])
    config = config.with_overrides(overrides)
    return tuple({**baseline(work, dataset, "supervised", config, images, labels, n, b_step,
                             splits), "overrides": overrides} for n in (steps, 2 * steps))


def earlier_ceiling(seeds: list[dict[str, Any]], dataset: str, ceiling_seed: int
                    ) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The ceiling of seed `ceiling_seed`, its check and its network from earlier results'
    seeds."""
    for s in seeds:
        if s["seed"] == ceiling_seed and s.get("supervised"):
            return (s["supervised"], s.get("supervised_longer"),
                    s.get("ceiling_model", s["model"]))
    raise SystemExit(f"--reuse-ceiling: the results hold no {dataset} ceiling of seed "
                     f"{ceiling_seed}; run quality without it to train one")


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every headline figure."""
    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}

    pick = {"labels_only": lambda s: s["labels_only"]["top1"],
            "teacher": lambda s: s["noisy_student"]["teacher_top1"],
            "noisy_student": lambda s: s["noisy_student"]["final_top1"],
            "noisy_student_val": lambda s: s["noisy_student"].get("final_val_top1"),
            "supervised": lambda s: bench_report.best_ceiling(s)["top1"],
            "gain": lambda s: s["gain"],
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
            earlier: dict[str, Any], ceilings: dict[str, Any] | None = None,
            changes: list[str] = ()) -> dict[str, Any]:
    """Per data set: the new seeds, plus `earlier` results' seeds of the same recipe. The
    summary is over the report seeds (over all seeds when none is a report seed).
    `ceilings`: a quality section whose ceilings are taken, not trained at this code (hours).
    `changes`: overrides of the recipe (a recipe of its own, filed apart as a variant)."""
    results = {}
    for dataset in datasets:
        reused = ceilings.get(dataset, {}).get("seeds", []) if ceilings is not None else None
        per_seed = [quality_one(work, dataset, seed, quick, reused, changes)
                    for seed in seeds]
        recipe = per_seed[0]["recipe"]
        kept = [s for s in earlier.get(dataset, {}).get("seeds", [])
                if s["seed"] not in seeds and s.get("recipe") == recipe]
        per_seed = sorted(kept + per_seed, key=lambda s: s["seed"])
        report = [s for s in per_seed if s["role"] == "report"] or per_seed
        results[dataset] = {"recipe": recipe, "seeds": per_seed, "summary": summarize(report),
                            "summary_seeds": [s["seed"] for s in report],
                            **({"changes": list(changes)} if changes else {})}
    return results


def variants_of(base: Config, dataset: str) -> dict[str, list[str]]:
    """The ablation variants' overrides; the student-size one is the other choice than the
    recipe's (students equal to the teacher, or larger), the length ones are relative to the
    recipe's rounds and epochs."""
    variants = dict(ABLATIONS)
    variants["one more round"] = [f"rounds={base.rounds + 1}"]
    shorter = max(1, base.train.epochs * 3 // 4)
    variants["three quarters of the epochs"] = [f"train.epochs={shorter}"]
    first, ladder = base.model.ladder[0], base.model.ladder
    if all(rung == first for rung in ladder):
        del variants["student equal to teacher"]
        larger = [first, LARGER_STUDENT[dataset]]  # the last rung repeats
        variants["students larger than teacher"] = [f"model.ladder={json.dumps(larger)}"]
    else:
        del variants["students larger than teacher"]
        variants["student equal to teacher"] = [f"model.ladder={json.dumps([first])}"]
    return variants


def ablations(work: Path, dataset: str, quick: bool, seed: int = TUNING_SEEDS[0],
              only: list[str] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None,
              tries: dict[str, list[str]] | None = None,
              earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe against one change at a time, on a tuning seed, read on validation. A
    variant's students learn from the recipe run's round 0 teacher (loaded, not retrained), so
    only the student side differs, unless the variant changes the teacher's own settings
    (`teacher_side`): then it trains its own; a variant with more rounds continues the
    recipe's run. The
    recipe's loop is the quality benchmark's job of the same seed (reused when finished); each
    variant is a job of its own (reused when finished). `only` runs just the variants named; the
    others are listed when finished earlier. `tries`: more variants, name -> overrides (`--try`;
    earlier ones come back from the results file and are listed when finished). `save` gets the
    results after every variant."""
    base = recipe_config(dataset, quick, [f"seed={seed}"])
    recipe_job = loop_job(work, dataset, base)
    recipe = noisy_student(base, recipe_job)
    teacher = recipe_job.folder / "run" / "teacher" / "model.safetensors"
    results: dict[str, Any] = {"recipe": {**recipe, "seed": seed}}
    for name, overrides in {**variants_of(base, dataset), **(tries or {})}.items():
        config = base.with_overrides(overrides)
        if config.to_dict() == base.to_dict():
            results[name] = {"same_as_recipe": True, **results["recipe"]}
            continue
        longer = config.rounds > base.rounds and config.replace(rounds=base.rounds) == base
        own_teacher = teacher_side(config) != teacher_side(base)
        if not longer and not own_teacher:  # others retrain the students of the recipe's run
            config = config.with_overrides([f'model.teacher_checkpoint="{teacher}"',
                                            "train.teacher_epochs=0"])
        job = loop_job(work, dataset, config, kind=f"ablation {name}")
        if (only is not None and name not in only) and job.result() is None:
            continue
        print(f"ablation {name!r}: {' '.join(overrides)}", flush=True)
        results[name] = {"overrides": overrides, **noisy_student(config, job)}
        if save is not None:  # the earlier variants too, should this process be stopped
            save({ablation_key(dataset, seed): {**carried(earlier or {}, results), **results}})
    return {ablation_key(dataset, seed): {**carried(earlier or {}, results, say=True),
                                          **results}}


def teacher_side(config: Config) -> tuple[Any, ...]:
    """The settings that make round 0's teacher and nothing else: a variant that changes one of
    them trains its own teacher (the whole loop); every other variant loads the recipe's."""
    t = config.train
    return (config.model.ladder[0], t.teacher_epochs, t.teacher_min_steps,
            t.teacher_consistency, t.consistency_threshold)


def carried(earlier: dict[str, Any], results: dict[str, Any],
            say: bool = False) -> dict[str, Any]:
    """The earlier results' variants that were not listed now (their runs are gone), kept when
    they were measured against the same recipe accuracies as now (a recipe run made again at
    other code or on another day, the same training); with `say`, said either way."""
    gone = {k: v for k, v in earlier.items() if k not in results}
    if not gone:
        return {}
    same = accuracies(earlier.get("recipe", {})) == accuracies(results["recipe"])
    if say:
        why = ("kept from the results file (same recipe figures, runs not here)" if same else
               "dropped from the results file (measured against other recipe figures)")
        print(f"{why}: {', '.join(sorted(gone))}")
    return gone if same else {}


def accuracies(run: dict[str, Any]) -> list[Any]:
    """A loop result's figures of quality, per round and final (not its timing, which differs
    between two runs of the same training)."""
    return [run.get("final_top1"), run.get("final_val_top1"),
            bench_report.round_figures(run.get("rounds", []))]


def ablation_key(dataset: str, seed: int) -> str:
    """Where a seed's ablations go in the results: the first tuning seed's under the data set's
    name, another's under "<data set>, seed <N>"."""
    return dataset if seed == TUNING_SEEDS[0] else f"{dataset}, seed {seed}"


def earlier_tries(results: dict[str, Any]) -> dict[str, list[str]]:
    """The `--try` variants of earlier results (name -> overrides): those not in ABLATIONS."""
    return {name: r["overrides"] for name, r in results.items()
            if name != "recipe" and name not in ABLATIONS and "overrides" in r}


def peers(datasets: list[str], methods: list[str], seeds: list[int],
          quality_results: dict[str, Any], earlier: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Each peer method on each seed, given our recipe's measured minutes on that seed as its
    wall-clock budget (`tools/peers.py`, in its own venv; a finished run is reused); then every
    result under runs/peers/ is collected, and the `earlier` results of the runs not there
    (another checkout's) are kept."""
    for dataset in datasets:
        ours = {s["seed"]: s for s in quality_results.get(dataset, {}).get("seeds", [])}
        for seed in seeds:
            if seed not in ours:
                raise SystemExit(f"peers: no quality result for {dataset} seed {seed}, whose "
                                 f"minutes are the budget: run `tools/benchmark.py quality "
                                 f"--dataset {dataset} --seeds {seed}` first")
            minutes = f"{ours[seed]['noisy_student']['seconds'] / 60:.2f}"
            for method in methods:
                subprocess.run([sys.executable, str(ROOT / "tools" / "peers.py"), "run",
                                "--dataset", dataset, "--method", method, "--seed", str(seed),
                                "--minutes", minutes], check=True)
    found = PEERS["read_results"](sorted(map(str, PEER_RUNS.glob("*/result.json"))))
    key = lambda r: (r["dataset"], r["framework"], r["method"], r["seed"])  # noqa: E731
    here = set(map(key, found))
    return {"results": [r for r in earlier if key(r) not in here] + found}


def merge(path: Path, section: str, value: dict[str, Any], command: str) -> dict[str, Any]:
    data = load_json(path) if path.is_file() else {}
    data.setdefault(section, {}).update(value)
    data.setdefault("runs", {})[section] = {"command": command, **provenance()}
    save_json(path, data)
    return data


def merge_and_report(path: Path, section: str, value: dict[str, Any], command: str) -> None:
    """`merge`, then regenerate the report: BENCHMARKS.md for the project's results file, else a
    .md beside `path` (the other tools' `--results`)."""
    data = merge(path, section, value, command)
    official = path.resolve() == RESULTS.resolve()
    bench_report.write(data, ROOT / "BENCHMARKS.md" if official else path.with_suffix(".md"),
                       path.with_name("rounds.png"), package_code())


def run_quality(args: argparse.Namespace, path: Path, datasets: list[str],
                command: str) -> None:
    """The quality seeds, filed under `quality` or, with --name, apart under `variants`."""
    seeds = args.seeds or ([TUNING_SEEDS[0]] if args.quick else list(REPORT_SEEDS))
    data = load_json(path) if path.is_file() else {}
    ceilings = data.get("quality", {}) if args.reuse_ceiling else None
    if args.name:  # a variant: its own earlier seeds, the recipe's ceilings
        earlier = data.get("variants", {}).get(args.name, {})
        merge(path, "variants", {args.name: {**earlier, **quality(
            args.work, datasets, seeds, args.quick, earlier, ceilings, args.changes)}},
            command)
    else:
        merge(path, "quality", quality(args.work, datasets, seeds, args.quick,
                                       data.get("quality", {}), ceilings), command)


def run_ablations(args: argparse.Namespace, path: Path, datasets: list[str],
                  command: str) -> None:
    """Each ablation seed read on its own, its variants saved as each one finishes."""
    seeds = args.seeds or [TUNING_SEEDS[0]]
    if set(seeds) & set(REPORT_SEEDS):
        raise SystemExit(f"ablations make choices: they run on tuning seeds, not on the "
                         f"report seeds {', '.join(map(str, REPORT_SEEDS))}")
    tries = {t[0]: t[1:] for t in args.tries}
    only = None if args.variants is None and not tries else [*(args.variants or []), *tries]
    earlier = load_json(path).get("ablations", {}) if path.is_file() else {}
    for dataset in datasets:
        for seed in seeds:
            known = {**earlier_tries(earlier.get(ablation_key(dataset, seed), {})), **tries}
            merge(path, "ablations", ablations(
                args.work, dataset, args.quick, seed, only=only, tries=known,
                save=lambda part: merge(path, "ablations", part, command),
                earlier=earlier.get(ablation_key(dataset, seed))), command)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["quality", "ablations", "speed", "peers", "all", "report"])
    p.add_argument("--dataset", choices=["digits", "fashion_mnist", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+",
                   help=f"quality: default the report seeds {' '.join(map(str, REPORT_SEEDS))} "
                        f"(one with --quick); ablations: tuning seeds (default "
                        f"{TUNING_SEEDS[0]}), each read on its own and, variant against recipe, "
                        f"over the seeds")
    p.add_argument("--methods", nargs="+", choices=PEERS["METHODS"],
                   default=list(PEERS["METHODS"]),
                   help="peers: the methods to run (USB's; lamda-fixmatch: LAMDA-SSL's FixMatch)")
    p.add_argument("--quick", action="store_true", help="minutes: small slices, few epochs")
    p.add_argument("--variants", nargs="+", choices=sorted(ABLATIONS), metavar="NAME",
                   help="ablations: run only these (the others are listed when they have "
                        "finished earlier with the same recipe, teacher and code)")
    p.add_argument("--try", dest="tries", nargs="+", action="append", default=[],
                   metavar="NAME KEY=VALUE",
                   help="ablations: one more variant, a name and its overrides (repeatable); "
                        "it stays in the results and is listed as the named ones")
    p.add_argument("--reuse-ceiling", action="store_true",
                   help="quality: the fully supervised ceiling and its check as the results "
                        "hold them (made by the commit they name), not trained at this code: "
                        "on Fashion-MNIST they take hours")
    p.add_argument("--set", dest="changes", nargs="+", default=[], metavar="KEY=VALUE",
                   help="quality: overrides of the recipe (a larger network, say): a recipe "
                        "of its own, filed apart under --name")
    p.add_argument("--name", help="quality: file the seeds apart as a variant of this name "
                                  "(the recipe with --set, or as it is on other seeds), shown "
                                  "beside the recipe; the headline rows stay the recipe's")
    p.add_argument("--results", type=Path, help="results JSON (default by --quick)")
    p.add_argument("--work", type=Path, default=WORK,
                   help="where the runs go (default: %(default)s)")
    p.add_argument("--markdown", type=Path,
                   help="report to write (default: BENCHMARKS.md; with --quick, next to the JSON)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.changes or args.name) and args.what != "quality":
        p.error("--set and --name are for quality")
    if args.changes and not args.name:
        p.error("--set makes a recipe of its own: give it a --name to file it apart (the "
                "headline rows stay the recipe's)")
    code_state()  # the commit this run starts from, whatever is committed while it runs
    path = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    command = shlex.join(["python", "tools/benchmark.py",
                          *(argv if argv is not None else sys.argv[1:])])
    datasets = ["digits", "fashion_mnist"] if args.dataset == "both" else [args.dataset]
    if args.what in ("quality", "all"):
        run_quality(args, path, datasets, command)
    if args.what in ("ablations", "all"):
        run_ablations(args, path, datasets, command)
    if args.what in ("speed", "all"):
        digits = recipe_config("digits", args.quick, [f"seed={TUNING_SEEDS[0]}"])
        digits_job = loop_job(args.work, "digits", digits)
        merge(path, "speed", bench_speed.measure(
            digits, args.work, args.quick,
            digits_job.folder / "run" if digits_job.result() is not None else None), command)
    if args.what == "peers":
        data = load_json(path) if path.is_file() else {}
        merge(path, "peers", peers(datasets, args.methods, args.seeds or list(REPORT_SEEDS),
                                   data.get("quality", {}),
                                   data.get("peers", {}).get("results", [])), command)
    data = load_json(path) if path.is_file() else {}
    if args.quick:
        markdown, plot = args.markdown or path.with_suffix(".md"), path.with_suffix(".png")
    else:
        markdown = args.markdown or ROOT / "BENCHMARKS.md"
        official = path.resolve() == RESULTS.resolve()
        plot = RESULTS.with_name("rounds.png") if official else path.with_suffix(".png")
    bench_report.write(data, markdown, plot, package_code())
    print(f"results: {path}\nreport: {markdown}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
