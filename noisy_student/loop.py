"""The Noisy Student loop: teacher -> pseudo-labels -> noised student -> evaluate -> next teacher.

Round 0's teacher learns from the labels alone (or is loaded). In round k the current teacher,
frozen and un-noised, labels the unlabeled images; a student of equal or larger size
(`config.model.ladder[k + 1]`) trains on labeled + pseudo-labeled images with input noise
(RandAugment), dropout and stochastic depth; it is evaluated and becomes the next teacher.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import (RunDir, RunDirError, load_json, load_weights, save_json, save_npz,
                         save_weights)
from .config import Config, ConfigError
from .data import NoisedDataset, Splits, load_source, make_splits
from .evaluate import classification_metrics
from .inference import FrozenTeacher, predict_logits
from .losses import build_student_loss
from .models import count_params, create_model
from .noise import build_noise
from .pseudo_label import PseudoLabels, make_pseudo_labels
from .tracking import JsonlTracker, Progress
from .train import TrainingError, resolve_device, train_model

SUMMARY_COLUMNS = ("round", "teacher", "student", "student_params", "teacher_top1",
                   "student_top1", "student_top5", "student_ece", "pseudo_labels_kept",
                   "pseudo_label_accuracy", "seconds")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: Config, rung: int, splits: Splits) -> nn.Module:
    """The model of ladder rung `rung`, seeded by (seed, rung), with the configured model noise."""
    torch.manual_seed(config.seed * 1000 + rung)
    return create_model(config.model_for(rung), num_classes=splits.num_classes,
                        in_chans=splits.channels, drop_rate=config.model.drop_rate,
                        drop_path_rate=config.model.drop_path_rate)


def check_ladder(config: Config, splits: Splits) -> list[int]:
    """Parameter count of each rung; refuse a student smaller than its teacher (unless allowed)."""
    sizes, problems = [], []
    for r in range(config.rounds + 1):
        try:
            sizes.append(count_params(build_model(config, r, splits)))
        except (ValueError, TypeError) as e:
            problems.append(f"model.ladder[{min(r, len(config.model.ladder) - 1)}] = "
                            f"{config.model_for(r)!r}: {e}")
    if problems:
        raise ConfigError(problems)
    if not config.model.allow_smaller_student:
        for r in range(1, len(sizes)):
            if sizes[r] < sizes[r - 1]:
                raise ConfigError([
                    f"model.ladder: round {r - 1}'s student {config.model_for(r)} ({sizes[r]:,} "
                    f"params) is smaller than its teacher {config.model_for(r - 1)} "
                    f"({sizes[r - 1]:,} params); Noisy Student needs an equal or larger student "
                    "(set model.allow_smaller_student = true to allow it)"])
    return sizes


class Loop:
    """Runs every round of one configured experiment into its run directory."""

    def __init__(self, config: Config, overwrite: bool = False, resume: bool = False) -> None:
        self.config, self.resume = config, resume
        self.run_dir = RunDir(config.out_dir)
        if resume:
            check_resumable(self.run_dir, config)
        else:
            self.run_dir.check_free(overwrite)  # refuse early; create only once all checks pass
        seed_everything(config.seed)
        self.splits = make_splits(load_source(config.data), config.data, config.seed)
        self.sizes = check_ladder(config, self.splits)
        if resume:
            saved = load_json(self.run_dir.root / "splits.json")
            if saved != json.loads(json.dumps(self.splits.record)):
                raise RunDirError(f"{self.run_dir.root / 'splits.json'}: the data splits made "
                                  "now differ from the saved ones (has the data changed?)")
        else:
            self.run_dir.create(overwrite)
            save_json(self.run_dir.root / "config.json", config.to_dict())
            save_json(self.run_dir.root / "splits.json", self.splits.record)
        self.device = resolve_device(config.train.device)
        cuda = self.device.type == "cuda"
        self.fast = {"amp": config.train.amp and cuda, "channels_last": config.train.channels_last}
        self.tracker = JsonlTracker(self.run_dir.root / "metrics.jsonl")
        n = config.noise
        self.noise = build_noise(n.enabled, n.num_ops, n.magnitude, n.flip, n.crop_padding,
                                 self.splits.channels)
        self.summary: dict[str, Any] = {"name": config.name, "teacher": None, "rounds": []}

    # ---- pieces --------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        s = self.splits
        logits = predict_logits(model, s.test.images, s.mean, s.std,
                                self.config.train.eval_batch_size, self.device, **self.fast)
        return classification_metrics(logits, torch.from_numpy(s.test.labels), s.num_classes)

    def labeled_dataset(self) -> NoisedDataset:
        s = self.splits
        return NoisedDataset(s.labeled.images, s.labeled.labels, self.noise, s.mean, s.std,
                             self.config.seed)

    def train(self, rung: int, pseudo: PseudoLabels | None, tag: str):
        c = self.config
        model = build_model(c, rung, self.splits)
        loss = build_student_loss(c.loss.distillation, c.loss.temperature, c.loss.label_smoothing,
                                  c.loss.labeled_weight, c.loss.pseudo_weight, pseudo is not None)
        pseudo_ds = None
        if pseudo is not None:
            s = self.splits
            pseudo_ds = NoisedDataset(s.unlabeled.images, pseudo.targets, self.noise, s.mean, s.std,
                                      c.seed + 7919 * rung, index=pseudo.indices)
        epochs = c.train.epochs if pseudo is not None else c.train.teacher_epochs
        return train_model(model, loss, self.labeled_dataset(), pseudo_ds, c.train, epochs,
                           seed=c.seed * 1000 + rung, device=self.device, tracker=self.tracker,
                           tag=tag, num_workers=c.data.num_workers, evaluate=self.evaluate)

    def initial_teacher(self) -> tuple[nn.Module, dict[str, Any]]:
        """Round 0's teacher: trained on the labeled images only, or loaded from a checkpoint."""
        c, folder, start = self.config, self.run_dir.teacher, time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        if c.model.teacher_checkpoint:
            model = load_weights(build_model(c, 0, self.splits), c.model.teacher_checkpoint)
            model.to(self.device)
        else:
            model = self.train(0, None, "teacher").model
        metrics = self.evaluate(model)
        sha = save_weights(model, folder / "model.safetensors", {"model": c.model_for(0)})
        info = {"model": c.model_for(0), "params": self.sizes[0], "sha256": sha,
                "top1": metrics["top1"], "top5": metrics["top5"], "ece": metrics["ece"],
                "loaded_from": c.model.teacher_checkpoint,
                "seconds": round(time.perf_counter() - start, 2)}
        save_json(folder / "metrics.json", {**info, "test": metrics})
        self.run_dir.mark_done(folder)
        self.tracker.log("teacher", **info)
        return model, info

    def finished_teacher(self) -> tuple[nn.Module, dict[str, Any]]:
        """Round 0's teacher from a finished `teacher/` folder (resume)."""
        folder = self.run_dir.teacher
        self.run_dir.verify(folder)
        info = {k: v for k, v in load_json(folder / "metrics.json").items() if k != "test"}
        model = load_weights(build_model(self.config, 0, self.splits), folder / "model.safetensors")
        print(f"resume: round 0's teacher from {folder}", flush=True)
        return model.to(self.device), info

    def finished_round(self, k: int) -> tuple[nn.Module, dict[str, Any], str]:
        """Round k's student, summary entry and weights hash from its finished folder (resume)."""
        folder = self.run_dir.round(k)
        self.run_dir.verify(folder)
        metrics = load_json(folder / "metrics.json")
        model = load_weights(build_model(self.config, k + 1, self.splits),
                             folder / "student.safetensors")
        print(f"resume: round {k} is complete, its student is loaded from {folder}", flush=True)
        return model.to(self.device), {c: metrics[c] for c in SUMMARY_COLUMNS}, metrics["student_sha256"]

    def pseudo_label(self, teacher: nn.Module, k: int, teacher_name: str,
                     teacher_sha: str) -> PseudoLabels:
        c, s = self.config, self.splits
        progress = Progress(len(s.unlabeled), f"round {k} pseudo-labels")
        labels = make_pseudo_labels(
            FrozenTeacher(teacher), s.unlabeled.images, s.mean, s.std, c.pseudo_label,
            c.loss.temperature, {"round": k, "teacher": teacher_name, "teacher_sha256": teacher_sha,
                                 "settings": c.fingerprint("pseudo_label", "data", "seed")},
            self.device, progress=progress, **self.fast)
        progress.close()
        if len(labels) == 0:
            top = float(np.quantile(labels.confidence_all, 0.5))
            raise TrainingError(
                f"round {k}: no pseudo-label reaches pseudo_label.threshold = "
                f"{c.pseudo_label.threshold}; per-class predictions "
                f"{np.bincount(labels.predicted, minlength=s.num_classes).tolist()}; half the "
                f"images have confidence >= {top:.3f}: try pseudo_label.threshold={top:.2f}")
        return labels

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        done = self.resume and self.run_dir.is_done(self.run_dir.teacher)
        teacher, info = self.finished_teacher() if done else self.initial_teacher()
        self.summary["teacher"] = info
        teacher_name, teacher_sha, teacher_top1 = info["model"], info["sha256"], info["top1"]
        for k in range(c.rounds):
            start, folder = time.perf_counter(), self.run_dir.round(k)
            if self.resume and self.run_dir.is_done(folder):
                teacher, entry, teacher_sha = self.finished_round(k)
                self.summary["rounds"].append(entry)
                teacher_name, teacher_top1 = entry["student"], entry["student_top1"]
                continue
            folder.mkdir(parents=True, exist_ok=True)
            labels = self.pseudo_label(teacher, k, teacher_name, teacher_sha)
            stats = labels.stats(self.splits.unlabeled.labels)
            save_npz(folder / "pseudo_labels.npz", labels.arrays())
            self.tracker.log("pseudo_labels", round=k, **stats)
            accuracy = stats["accuracy"]
            print(f"round {k} pseudo-labels from {teacher_name}: kept {stats['kept_unique']} of "
                  f"{stats['unlabeled']} images ({100 * stats['kept_fraction']:.1f}%), "
                  f"{stats['kept']} items after balancing, mean confidence "
                  f"{stats['mean_confidence']:.3f}"
                  + ("" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"), flush=True)
            label_seconds = time.perf_counter() - start
            del teacher
            result = self.train(k + 1, labels, f"round {k} student")
            metrics = self.evaluate(result.model)
            student_name = c.model_for(k + 1)
            sha = save_weights(result.model, folder / "student.safetensors",
                               {"model": student_name, "round": str(k)})
            entry = {"round": k, "teacher": teacher_name, "student": student_name,
                     "student_params": self.sizes[k + 1], "teacher_top1": teacher_top1,
                     "student_top1": metrics["top1"], "student_top5": metrics["top5"],
                     "student_ece": metrics["ece"], "pseudo_labels_kept": stats["kept"],
                     "pseudo_label_accuracy": stats["accuracy"],
                     "seconds": round(time.perf_counter() - start, 2)}
            save_json(folder / "metrics.json", {
                **entry, "student_sha256": sha, "teacher_sha256": teacher_sha,
                "pseudo_labels": stats, "test": metrics, "train": result.history,
                "timing": {"pseudo_label": round(label_seconds, 2),
                           "train": round(result.seconds, 2),
                           "train_images_per_second": round(result.images_per_second, 1)}})
            self.run_dir.mark_done(folder)
            self.summary["rounds"].append(entry)
            save_json(self.run_dir.root / "summary.json", self.summary)
            self.tracker.log("round", **entry)
            teacher, teacher_name, teacher_sha = result.model, student_name, sha
            teacher_top1 = metrics["top1"]
        self.tracker.close()
        print(format_summary(self.summary))
        return self.summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (fractions shown as percentages)."""
    t = summary["teacher"]
    lines = [f"labels-only teacher {t['model']}: top-1 {100 * t['top1']:.2f}%  ({t['seconds']} s)"]
    header = ["round", "teacher", "student", "params", "teacher top1", "student top1", "top5",
              "ECE", "kept", "PL acc", "seconds"]
    rows = [[str(r["round"]), r["teacher"], r["student"], f"{r['student_params']:,}",
             f"{100 * r['teacher_top1']:.2f}", f"{100 * r['student_top1']:.2f}",
             f"{100 * r['student_top5']:.2f}", f"{r['student_ece']:.4f}",
             str(r["pseudo_labels_kept"]),
             "-" if r["pseudo_label_accuracy"] is None else f"{100 * r['pseudo_label_accuracy']:.2f}",
             f"{r['seconds']:.1f}"] for r in summary["rounds"]]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([*lines, fmt.format(*header), *(fmt.format(*r) for r in rows)])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(run_dir: RunDir, config: Config) -> None:
    """Refuse to resume a directory without a run, or with a different config (shown as a diff)."""
    path = run_dir.root / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir.root}: nothing to resume (no config.json); start the run "
                          "without --resume")
    saved, now = _flatten(load_json(path)), _flatten(config.to_dict())
    diff = [f"{key}: saved {saved.get(key)!r}, now {now.get(key)!r}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if diff:
        raise ConfigError([f"--resume: the config differs from {path}:", *diff])


def run(config: Config, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run the whole loop for `config`; returns the summary (also in `<out>/summary.json`).

    With `resume`, finished folders (those with DONE) are loaded instead of recomputed and the
    first unfinished round starts over; the config must equal the saved one.
    """
    return Loop(config, overwrite, resume).run()
