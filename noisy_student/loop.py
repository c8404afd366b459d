"""The Noisy Student loop: teacher -> pseudo-labels -> noised student -> evaluate -> next teacher.

Round 0's teacher learns from the labels alone (or is loaded). In round k the current teacher,
frozen and un-noised, labels the unlabeled images; a student of equal or larger size
(`config.model.ladder[k + 1]`) trains on labeled + pseudo-labeled images with input noise
(RandAugment), dropout and stochastic depth; it is evaluated and becomes the next teacher.
"""

from __future__ import annotations

import contextlib
import random
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .checkpoint import (TrainCheckpoints, arrays_sha256, load_json, load_weights,
                         save_json, save_npz, save_weights, weights_sha256)
from .config import Config
from .data import NoisedDataset, load_source, make_splits
from .evaluate import classification_metrics
from .inference import FrozenTeacher, predict_logits
from .losses import build_student_loss
from .ladder import build_model, check_ladder, starts_pretrained
from .noise_batch import build_student_noise
from .pseudo_label import (SOFT_DIR, PseudoLabels, coverage_warning, label_part,
                           merge_parts)
from .soft_labels import SoftLabelError, link_parts
from .teachers import ensemble_of_last, with_specialists
from .plan import format_plan, make_plan, noise_seconds_per_image, plan_record
from .presets import saved_config, settle_ladder
from .run_dir import Start, open_run, prepare_run_dir
from .sanity import coverage_problem, gate_message, teacher_problem
from . import distributed
from .signals import GracefulStop, Interrupted
from .summary import SUMMARY_COLUMNS, format_summary
from .tracking import Progress, Tracker
from .train import (TrainingError, TrainResult, resolve_device, rng_state, set_rng_state,
                    train_model)
from .wandb_logger import WandbLogger, resolve_mode



def say(*args: Any, **kwargs: Any) -> None:
    """print, on rank 0 only (every rank runs the loop under torchrun)."""
    if distributed.is_main_process():
        print(*args, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Loop:
    """Runs every round of one configured experiment into its run directory."""

    def __init__(self, config: Config, start: Start | None = None) -> None:
        self.start = start = start or Start()
        # under torchrun every rank runs this; rank 0 alone writes (self.main)
        self.device = distributed.setup(resolve_device(config.train.device))
        self.main = distributed.is_main_process()
        config, ladder_note = settle_ladder(config, self.device.type, saved_config(config, start))
        self.config = config
        self.run_dir, source, changes = open_run(config, start)  # refuse early, before any work
        distributed.barrier()  # every rank has looked before rank 0 writes
        seed_everything(config.seed)
        self.splits = make_splits(load_source(config.data), config.data, config.seed)
        self.sizes = check_ladder(config, self.splits)
        self.previous = (prepare_run_dir(self.run_dir, source, config, start,
                                         self.splits.record, changes) if self.main else None)
        self.previous = distributed.broadcast(self.previous)
        cuda = self.device.type == "cuda"
        self.fast = {"amp": config.train.amp and cuda, "channels_last": config.train.channels_last}
        mode = resolve_mode(config.tracking.mode) if self.main else "disabled"
        self.tracker = Tracker(self.run_dir.root / "metrics.jsonl" if self.main else None,
                               None if mode == "disabled" else
                               WandbLogger(config.tracking, config.name, self.run_dir.root,
                                           config.to_dict(), mode))
        # per image in the DataLoader workers, or per batch on the device
        self.noise, self.batch_noise = build_student_noise(config.noise, self.splits.channels)
        if self.main:
            self.show_plan([ladder_note] if ladder_note else [])
        self.summary: dict[str, Any] = {"name": config.name, "teacher": None, "rounds": []}
        self.stop = GracefulStop()
        self.reports: dict[int, dict[str, Any]] = {}  # round -> how its teacher was made

    # ---- pieces --------------------------------------------------------------------------------
    def show_plan(self, notes: list[str]) -> None:
        """Print what will run and about how long it takes here; saved as plan.json. The
        timed steps leave every random state as they found it."""
        saved = rng_state()
        per_image = noise_seconds_per_image(self.splits, self.noise, self.batch_noise,
                                            self.device)
        plans = make_plan(self.config, self.splits, self.sizes, self.device, per_image)
        set_rng_state(saved)
        print(format_plan(plans, self.device, notes), flush=True)
        save_json(self.run_dir.root / "plan.json", {**plan_record(plans), "notes": notes})

    def save_weights(self, model: nn.Module, path: Path, meta: dict[str, str]) -> str:
        """Rank 0 writes the weights; every rank gets their identity (sha256)."""
        if self.main:
            return save_weights(model, path, meta)
        return weights_sha256(model.state_dict())

    def evaluate(self, model: nn.Module, only: str | None = None) -> dict[str, dict[str, Any]]:
        """The model's metrics on each scored set: "val" (when there is one) and "test"."""
        s, out = self.splits, {}
        for name, images in s.scored().items():
            if only is not None and name != only:
                continue
            with _memory_hint("train.eval_batch_size", self.config.train.eval_batch_size):
                logits = predict_logits(model, images.images, s.mean, s.std,
                                        self.config.train.eval_batch_size, self.device,
                                        **self.fast)
            out[name] = classification_metrics(logits, torch.from_numpy(images.labels),
                                               s.num_classes)
        return out

    def monitor(self, model: nn.Module) -> dict[str, float]:
        """What training logs after some epochs: validation top-1 and ECE (test without a
        validation set), under names that say which."""
        name = "val" if self.splits.validation is not None else "test"
        metrics = self.evaluate(model, only=name)[name]
        return {f"{name}_top1": metrics["top1"], f"{name}_ece": metrics["ece"]}

    def train(self, rung: int, pseudo: PseudoLabels | None, tag: str, folder: Path,
              context: dict[str, Any]) -> TrainResult:
        c = self.config
        model = build_model(c, rung, self.splits)
        loss = build_student_loss(c.loss.distillation, c.loss.temperature, c.loss.label_smoothing,
                                  c.loss.labeled_weight, c.loss.pseudo_weight, pseudo is not None,
                                  c.loss.distill_smoothing)
        s = self.splits
        labeled = NoisedDataset(s.labeled.images, s.labeled.labels, self.noise, s.mean, s.std,
                                c.seed)
        pseudo_ds = None
        if pseudo is not None:
            pseudo_ds = NoisedDataset(s.unlabeled.images, pseudo.training_targets(), self.noise,
                                      s.mean, s.std,
                                      c.seed + 7919 * rung, index=pseudo.indices)
        epochs, min_steps = ((c.train.epochs, c.train.min_steps) if pseudo is not None else
                             (c.train.teacher_epochs, c.train.teacher_min_steps))
        ck = c.checkpoint
        checkpoints = TrainCheckpoints(folder / "checkpoints", {"phase": tag, **context}, ck.keep,
                                       ck.every_steps, ck.every_minutes, self.start.resume)
        result = train_model(model, loss, labeled, pseudo_ds, c.train, epochs,
                             seed=c.seed * 1000 + rung, device=self.device, tracker=self.tracker,
                             tag=tag, num_workers=c.data.num_workers, evaluate=self.monitor,
                             checkpoints=checkpoints, stop=self.stop,
                             batch_noise=self.batch_noise,
                             pretrained=starts_pretrained(c, rung), min_steps=min_steps)
        if self.main:
            checkpoints.prune(1)  # the phase's final checkpoint stays
        return result

    def initial_teacher(self) -> tuple[nn.Module, dict[str, Any]]:
        """Round 0's teacher: trained on the labeled images only, or loaded from a checkpoint."""
        c, folder, start = self.config, self.run_dir.teacher, time.perf_counter()
        before = 0.0  # training time spent by the earlier processes of a resumed run
        self.tracker.start_phase("teacher", "teacher", "teacher", {
            "phase": "teacher", "teacher": {"model": c.model_for(0), "params": self.sizes[0]}})
        if c.model.teacher_checkpoint:
            model = load_weights(build_model(c, 0, self.splits), c.model.teacher_checkpoint)
            model.to(self.device)
        else:
            result = self.train(0, None, "teacher", folder, {"model": c.model_for(0)})
            model, before = result.model, result.seconds_before
        metrics = self.evaluate(model)
        sha = self.save_weights(model, folder / "model.safetensors", {"model": c.model_for(0)})
        info = {"model": c.model_for(0), "params": self.sizes[0], "sha256": sha,
                **_scores(metrics), "loaded_from": c.model.teacher_checkpoint,
                "seconds": round(time.perf_counter() - start + before, 2)}
        if self.main:
            save_json(folder / "metrics.json", {**info, **metrics})
            self.run_dir.mark_done(folder)
        distributed.barrier()
        self.tracker.log("teacher", **info)
        self.tracker.end_phase()
        return model, info

    def finished_teacher(self) -> tuple[nn.Module, dict[str, Any]]:
        """Round 0's teacher from a finished `teacher/` folder."""
        folder = self.run_dir.teacher
        self.run_dir.verify(folder)
        info = {k: v for k, v in load_json(folder / "metrics.json").items()
                if k not in ("test", "val")}
        model = load_weights(build_model(self.config, 0, self.splits), folder / "model.safetensors")
        say(f"round 0's teacher: finished, loaded from {folder}", flush=True)
        return model.to(self.device), info

    def finished_round(self, k: int) -> tuple[nn.Module, dict[str, Any], str]:
        """Round k's student, summary entry and weights hash from its finished folder."""
        folder = self.run_dir.round(k)
        self.run_dir.verify(folder)
        metrics = load_json(folder / "metrics.json")
        model = load_weights(build_model(self.config, k + 1, self.splits),
                             folder / "student.safetensors")
        say(f"round {k}: finished, its student is loaded from {folder}", flush=True)
        entry = {c: metrics.get(c) for c in SUMMARY_COLUMNS}
        return model.to(self.device), entry, metrics["student_sha256"]

    def composite_teacher(self, k: int, teacher: nn.Module, name: str, sha: str,
                          scores: dict[str, float]) -> tuple[nn.Module, str, str,
                                                             dict[str, float]]:
        """Round k's teacher as an ensemble of the last models, or with specialists, when the
        config asks for it (teachers.py); its test scores are measured anew."""
        c, made = self.config.pseudo_label, None
        if c.ensemble > 1:
            made = ensemble_of_last(self.config, self.run_dir, self.splits, self.device, k,
                                    teacher, name, sha)
        if c.specialists:
            *made, report = with_specialists(self.config, self.splits, self.noise,
                                             self.batch_noise, self.device, self.tracker, k,
                                             teacher, name, sha)
            report.update(generalist_top1=scores["top1"])
            self.reports[k] = report
        if made is not None and made[0] is not teacher:
            teacher, name, sha = made
            scores = _scores(self.evaluate(teacher))
            say(f"round {k}: the teacher is {name}: {_top1s(scores)}", flush=True)
        if k in self.reports:  # the specialists' report: groups, teacher top-1 with them
            self.reports[k]["combined_top1"] = scores["top1"]
            self.tracker.log("specialists", **self.reports[k])
        return teacher, name, sha, scores

    def given_teacher(self, k: int, path: str) -> tuple[nn.Module, str, str, dict[str, float]]:
        """Round k's teacher from a weights file (--teacher, or the copy of it in the round's
        folder on resume): model, name, sha256, test scores."""
        name = self.config.model_for(k)
        model = load_weights(build_model(self.config, k, self.splits), Path(path))
        model.to(self.device)
        scores = _scores(self.evaluate(model))
        say(f"round {k}: teacher {name} from {path} ({_top1s(scores)})", flush=True)
        return model, name, weights_sha256(model.state_dict()), scores

    def stored_pseudo_labels(self, k: int, teacher_sha: str, settings: str) -> PseudoLabels | None:
        """Round k's pseudo-labels from an earlier attempt, if the same teacher made them with
        the same settings: this folder's (resume), then the older run's (--from-round)."""
        candidates = [self.run_dir.round(k) / "pseudo_labels.npz"]
        if self.previous is not None:
            candidates.append(self.previous / f"round_{k}" / "pseudo_labels.npz")
        for path in candidates:
            if not path.is_file():
                continue
            try:
                labels = PseudoLabels.load(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, SoftLabelError) as e:
                say(f"round {k}: not reusing {path}: cannot read it ({e})", flush=True)
                continue
            meta = labels.meta
            if (meta.get("teacher_sha256"), meta.get("settings"), meta.get("temperature")) != (
                    teacher_sha, settings, self.config.loss.temperature):
                say(f"round {k}: not reusing {path}: made by another teacher or with other "
                      "settings", flush=True)
                continue
            say(f"round {k}: reusing the pseudo-labels in {path} (same teacher, same settings)",
                  flush=True)
            if self.main and path.parent != self.run_dir.round(k):  # the parts come along
                link_parts(meta.get("soft_parts", []), path.parent, self.run_dir.round(k))
            return labels
        return None

    def pseudo_label(self, teacher: nn.Module, k: int, teacher_name: str,
                     teacher_sha: str) -> PseudoLabels:
        c, s = self.config, self.splits
        settings = c.fingerprint("pseudo_label", "data", "seed")
        labels = self.stored_pseudo_labels(k, teacher_sha, settings)
        if labels is None:  # each rank labels its shard and writes its soft labels' part
            part = distributed.shard(len(s.unlabeled))
            world = distributed.world_size() if distributed.active() else 1
            folder = self.run_dir.round(k)
            progress = Progress(part.stop - part.start, f"round {k} pseudo-labels",
                                enabled=self.main)
            with _memory_hint("pseudo_label.batch_size", c.pseudo_label.batch_size):
                mine = label_part(
                    FrozenTeacher(teacher), s.unlabeled.images[part], s.mean, s.std,
                    c.pseudo_label, c.loss.temperature,
                    folder / SOFT_DIR / f"part-{distributed.rank():05d}-of-{world:05d}",
                    self.device, progress=progress,
                    check=lambda: self.stop.check(f"round {k} pseudo-labeling"), **self.fast)
            progress.close()
            labels = merge_parts(  # every rank gets every part, in rank order
                distributed.gather(mine), folder, c.pseudo_label, c.loss.temperature,
                {"round": k, "teacher": teacher_name, "teacher_sha256": teacher_sha,
                 "settings": settings}, remove_stale=self.main)
        warning = coverage_warning(labels, c.pseudo_label.threshold, s.labeled.classes)
        if warning and len(labels):
            say(f"round {k}: warning: {warning}", flush=True)
            self.tracker.log("warning", round=k, message=warning)
        if len(labels) == 0:
            top = float(np.quantile(labels.confidence_all, 0.5))
            raise TrainingError(
                f"round {k}: no pseudo-label reaches pseudo_label.threshold = "
                f"{c.pseudo_label.threshold}; per-class predictions "
                f"{np.bincount(labels.predicted, minlength=s.num_classes).tolist()}; half the "
                f"images have confidence >= {top:.3f}: try pseudo_label.threshold={top:.2f}")
        if self.main:
            save_npz(self.run_dir.round(k) / "pseudo_labels.npz", labels.arrays())
        return labels

    def gate(self, problem: str | None) -> None:
        """Stop after round 0's teacher when it cannot teach (sanity.py), unless forced."""
        if problem is None:
            return
        if self.config.train.sanity_gate and not self.start.force:
            raise TrainingError(gate_message(problem))
        say(f"warning: {problem}; going on (--force or train.sanity_gate = false)", flush=True)
        self.tracker.log("warning", message=problem, forced=True)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Every round, in order; finished folders are loaded, not recomputed."""
        code = 1
        try:
            with self.stop:
                summary = self._run()
            code = 0
            return summary
        except Interrupted as e:
            code = e.exit_code
            raise
        finally:
            self.tracker.close(code)
            distributed.teardown()

    def _run(self) -> dict[str, Any]:
        c, rd = self.config, self.run_dir
        done = rd.is_done(rd.teacher)
        teacher, info = self.finished_teacher() if done else self.initial_teacher()
        self.summary["teacher"] = info
        name, sha = info["model"], info["sha256"]
        scores = {s: info[s] for s in SCORES if info.get(s) is not None}
        if not rd.is_done(rd.round(0)):
            self.gate(teacher_problem(info.get("val_top1"), self.splits.num_classes))
        for k in range(c.rounds):
            if rd.is_done(rd.round(k)):
                teacher, entry, sha = self.finished_round(k)
                self.summary["rounds"].append(entry)
                name = entry["student"]
                scores = {s: entry[f"student_{s}"] for s in SCORES
                          if entry.get(f"student_{s}") is not None}
                continue
            given = self.start.teacher if k == self.start.from_round else None
            kept = rd.round(k) / "teacher.safetensors"  # a --teacher, kept for --resume
            if given or kept.is_file():
                teacher, name, sha, scores = self.given_teacher(k, given or str(kept))
                if given and self.main:
                    save_weights(teacher, kept, {"model": name, "from": given})
            teacher, name, sha, scores = self.composite_teacher(k, teacher, name, sha, scores)
            start, student = time.perf_counter(), c.model_for(k + 1)
            if self.main:
                rd.round(k).mkdir(parents=True, exist_ok=True)
            self.tracker.start_phase(f"round_{k}", f"round-{k}", "round", {
                "phase": "round", "round": k,
                "teacher": {"model": name, "params": self.sizes[k], "sha256": sha},
                "student": {"model": student, "params": self.sizes[k + 1]}})
            labels = self.pseudo_label(teacher, k, name, sha)
            del teacher  # frees its memory before the student is built
            stats = labels.stats(self.splits.unlabeled.labels)
            self.tracker.log("pseudo_labels", round=k, **stats)
            self.tracker.samples(k, self.splits.unlabeled.images, labels,
                                 self.splits.unlabeled.labels)
            accuracy = stats["accuracy"]
            say(f"round {k} pseudo-labels from {name}: kept {stats['kept_unique']} of "
                  f"{stats['unlabeled']} images ({100 * stats['kept_fraction']:.1f}%), "
                  f"{stats['kept']} items after balancing, mean confidence "
                  f"{stats['mean_confidence']:.3f}"
                  + ("" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"), flush=True)
            if k == 0:
                self.gate(coverage_problem(labels.predicted, labels.indices,
                                           c.pseudo_label.threshold, self.splits.labeled.classes))
            self.stop.check(f"round {k}, after pseudo-labeling")
            label_seconds = time.perf_counter() - start
            result = self.train(k + 1, labels, f"round {k} student", rd.round(k), {
                "model": student, "teacher_sha256": sha,
                "pseudo_labels_sha256": arrays_sha256(labels.arrays())})
            t = time.perf_counter()
            metrics = self.evaluate(result.model)
            final_eval = time.perf_counter() - t
            student_sha = self.save_weights(result.model, rd.round(k) / "student.safetensors",
                                            {"model": student, "round": str(k)})
            entry = {"round": k, "teacher": name, "student": student,
                     "student_params": self.sizes[k + 1],
                     **{f"teacher_{s}": v for s, v in scores.items()},
                     **{f"student_{s}": v for s, v in _scores(metrics).items()},
                     "pseudo_labels_kept": stats["kept"],
                     "pseudo_label_accuracy": stats["accuracy"],
                     # this process's, plus the training time of earlier ones when resumed
                     "seconds": round(time.perf_counter() - start + result.seconds_before, 2)}
            round_metrics = {
                **entry, "student_sha256": student_sha, "teacher_sha256": sha,
                "teacher_from": given or (str(kept) if kept.is_file() else None),
                "resumed_from": result.resumed_from,
                "pseudo_labels": stats, **metrics, "train": result.history,
                **({"specialists": self.reports.pop(k)} if k in self.reports else {}),
                "timing": {"pseudo_label": round(label_seconds, 2),
                           "train": round(result.seconds, 2),  # over processes, as "seconds"
                           "train_before_resume": round(result.seconds_before, 2),
                           "train_images_per_second": round(result.images_per_second, 1),
                           # parts of "train":
                           "train_data_wait": result.timing["data_wait"],
                           "train_evaluate": result.timing["evaluate"],
                           "train_checkpoint": result.timing["checkpoint"],
                           "final_evaluate": round(final_eval, 3)}}
            if self.main:
                save_json(rd.round(k) / "metrics.json", round_metrics)
                rd.mark_done(rd.round(k))
            self.summary["rounds"].append(entry)
            if self.main:
                save_json(rd.root / "summary.json", self.summary)
            distributed.barrier()
            self.tracker.log("round", **entry)
            self.tracker.artifact(k, [rd.round(k) / "student.safetensors",
                                      rd.round(k) / "pseudo_labels.npz", rd.round(k) / SOFT_DIR],
                                  {"student": student, "student_sha256": student_sha,
                                   "teacher_sha256": sha, "test_top1": metrics["test"]["top1"]})
            self.tracker.end_phase()
            teacher, name, sha, scores = result.model, student, student_sha, _scores(metrics)
        if self.main:
            save_json(rd.root / "summary.json", self.summary)
        say(format_summary(self.summary))
        return self.summary


@contextlib.contextmanager
def _memory_hint(key: str, value: int) -> Iterator[None]:
    """Out of GPU memory during inference: name the batch-size setting to lower."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise TrainingError(f"out of GPU memory in inference with {key} = {value}: lower it "
                            f"({e})") from e


SCORES = ("top1", "top5", "ece", "val_top1", "val_ece")  # test's unprefixed, as in the summary


def _scores(evaluation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """A model's scores in the summary: test top-1, top-5 and ECE, validation top-1 and ECE."""
    scores = {s: evaluation["test"][s] for s in ("top1", "top5", "ece")}
    if "val" in evaluation:
        scores.update(val_top1=evaluation["val"]["top1"], val_ece=evaluation["val"]["ece"])
    return scores


def _top1s(scores: dict[str, float]) -> str:
    val = f"validation top-1 {100 * scores['val_top1']:.2f}%, " if "val_top1" in scores else ""
    return f"{val}test top-1 {100 * scores['top1']:.2f}%"


def run(config: Config, overwrite: bool = False, resume: bool = False,
        from_round: int | None = None, teacher: str | None = None, from_run: str | None = None,
        allow_config_change: tuple[str, ...] = (), force: bool = False) -> dict[str, Any]:
    """Run the whole loop for `config`; returns the summary (also in `<out>/summary.json`).

    `resume` continues the run in `config.out` from its newest valid checkpoint (finished rounds
    are loaded, the interrupted phase goes on at the step it stopped). `from_round=K` starts again
    at round K (see `run_dir.Start`). `allow_config_change` lists the keys that may differ from
    the saved config on resume. `force` goes on past the sanity gate after round 0's teacher.
    """
    start = Start(overwrite, resume, from_round, teacher, from_run, tuple(allow_config_change),
                  force)
    return Loop(config, start).run()
