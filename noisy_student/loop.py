"""The Noisy Student loop: teacher -> pseudo-labels -> noised student -> evaluate -> next teacher.

Round 0's teacher learns from the labels alone (or is loaded). In round k the current teacher,
frozen and un-noised, labels the unlabeled images; a student of equal or larger size
(`config.model.ladder[k + 1]`) trains on labeled + pseudo-labeled images with input noise
(RandAugment), dropout and stochastic depth; it is evaluated and becomes the next teacher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .checkpoint import (RunDirError, TrainCheckpoints, arrays_sha256, load_json, load_weights,
                         save_json, save_npz, save_weights, weights_sha256)
from .config import Config
from .data import NoisedDataset, TwoViews, load_source, make_splits
from .metrics import classification_metrics
from .inference import FrozenTeacher, predict_logits
from .losses import build_student_loss
from .ladder import build_model, check_ladder, starts_pretrained
from .noise_batch import build_student_noise
from .pseudo_label import (SOFT_DIR, PseudoLabels, coverage_warning, label_part,
                           merge_parts, stored_labels)
from .soft_labels import link_parts
from .teachers import Teacher, ensemble_of_last, view_averaged, with_specialists
from .plan import format_plan, make_plan, noise_seconds_per_image, plan_record
from .presets import saved_config, settle_ladder
from .run_dir import RunStart, open_run, prepare_run_dir
from .sanity import coverage_problem, gate_message, teacher_problem
from . import distributed
from .signals import GracefulStop, Interrupted
from .summary import (SUMMARY_COLUMNS, RoundOutcome, format_summary, round_entry,
                      round_metrics)
from .tracking import Progress, Tracker
from .train import (TrainData, TrainHooks, TrainingError, TrainResult, rng_state, set_rng_state,
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

    def __init__(self, config: Config, start: RunStart | None = None) -> None:
        self.start = start = start or RunStart()
        # under torchrun every rank runs this; rank 0 alone writes (self.main)
        self.device = distributed.setup(distributed.resolve_device(config.train.device))
        self.main = distributed.is_main_process()
        config, ladder_note = settle_ladder(config, self.device.type, saved_config(config, start))
        self.config = config
        self.run_dir, source, changes = open_run(config, start)  # refuse early, before any work
        distributed.barrier()  # every rank has looked before rank 0 writes
        seed_everything(config.seed)
        self.splits = make_splits(load_source(config.data), config.data, config.seed)
        self.sizes = check_ladder(config, self.splits)
        # --from-round: the folder whose rounds >= K can lend their pseudo-labels (None: none)
        self.older_run = (prepare_run_dir(self.run_dir, source, config, start,
                                         self.splits.record, changes) if self.main else None)
        self.older_run = distributed.broadcast(self.older_run)
        self.inference_speed = {"amp": config.train.bf16(self.device.type),
                                "channels_last": config.train.channels_last}
        if self.main and config.train.amp_cpu and not _cpu_has_amx():
            print("note: train.amp_cpu on a CPU without AMX bf16 units: bf16 autocast may be "
                  "slower here than float32 (the run's plan times it)", flush=True)
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
        self.specialist_reports: dict[int, dict[str, Any]] = {}  # round -> its specialists

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
                                        **self.inference_speed)
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
        """Train ladder rung `rung`: round 0's teacher on the labels (and, with
        train.teacher_consistency, the unlabeled images' view pairs), or a student on labels and
        `pseudo`; its checkpoints in `folder`/checkpoints, the final one kept."""
        c = self.config
        model = build_model(c, rung, self.splits)
        if pseudo is not None and c.model.student_init == "teacher":
            load_weights(model, self.weights_before(rung - 1), grow=True)
        consistency = pseudo is None and c.train.teacher_consistency
        loss = build_student_loss(c.loss, with_pseudo=pseudo is not None,
                                  consistency=c.train.consistency_threshold if consistency
                                  else None)
        epochs, min_steps = ((c.train.epochs, c.train.min_steps) if pseudo is not None else
                             (c.train.teacher_epochs, c.train.teacher_min_steps))
        ck = c.checkpoint
        checkpoints = TrainCheckpoints(folder / "checkpoints", {"phase": tag, **context}, ck.keep,
                                       ck.every_steps, ck.every_minutes, self.start.resume)
        data = self.train_data(rung, pseudo, consistency, epochs, min_steps)
        hooks = TrainHooks(tag, self.tracker, self.monitor, checkpoints=checkpoints,
                           stop=self.stop)
        result = train_model(model, loss, c.train, self.device, data, hooks,
                             pretrained=starts_pretrained(c, rung))
        if self.main:
            checkpoints.prune(1)  # the phase's final checkpoint stays
        return result

    def train_data(self, rung: int, pseudo: PseudoLabels | None, consistency: bool,
                   epochs: int, min_steps: int) -> TrainData:
        """Rung `rung`'s training sets, noised: the labeled images, the pseudo-labeled items
        or, for a consistency teacher, the unlabeled images' (weak, strong) view pairs."""
        c, s = self.config, self.splits
        labeled = NoisedDataset(s.labeled.images, s.labeled.labels, self.noise, s.mean, s.std,
                                c.seed)
        pseudo_ds = None if pseudo is None else NoisedDataset(
            s.unlabeled.images, pseudo.training_targets(), self.noise, s.mean, s.std,
            c.seed + 7919 * rung, index=pseudo.indices)
        views, weak_batch = None, None
        if consistency:  # weak: crop and flip only
            weak, weak_batch = build_student_noise(
                dataclasses.replace(c.noise, num_ops=0), s.channels)
            views = TwoViews(s.unlabeled.images, weak, self.noise, s.mean, s.std, c.seed + 7919)
        return TrainData(labeled, pseudo_ds, epochs, min_steps, seed=c.seed * 1000 + rung,
                         num_workers=c.data.num_workers, batch_noise=self.batch_noise,
                         views=views, weak_batch_noise=weak_batch,
                         mixup=c.noise.mixup if c.noise.enabled else 0.0)

    def weights_before(self, k: int) -> Path:
        """The weights round k's student starts from when warm-started: the teacher the round
        was given (--from-round K --teacher), else round k-1's student, else round 0's teacher."""
        rd = self.run_dir
        given = rd.round(k) / "teacher.safetensors"
        return given if given.is_file() else (
            rd.round(k - 1) / "student.safetensors" if k else rd.teacher / "model.safetensors")

    # ---- round 0's teacher ---------------------------------------------------------------------
    def initial_teacher(self) -> Teacher:
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
        scores = _scores(metrics)
        sha = self.save_weights(model, folder / "model.safetensors", {"model": c.model_for(0)})
        info = {"model": c.model_for(0), "params": self.sizes[0], "sha256": sha,
                **scores, "loaded_from": c.model.teacher_checkpoint,
                "consistency": c.train.teacher_consistency and not c.model.teacher_checkpoint,
                "seconds": round(time.perf_counter() - start + before, 2)}
        if self.main:
            save_json(folder / "metrics.json", {**info, **metrics})
            self.run_dir.mark_done(folder)
        distributed.barrier()
        self.tracker.log("teacher", **info)
        self.tracker.end_phase()
        self.summary["teacher"] = info
        return Teacher(model, info["model"], sha, scores)

    def finished_teacher(self) -> Teacher:
        """Round 0's teacher from a finished `teacher/` folder."""
        folder = self.run_dir.teacher
        self.run_dir.verify(folder)
        info = {k: v for k, v in load_json(folder / "metrics.json", dict).items()
                if k not in ("test", "val")}
        _require(folder / "metrics.json", info, ("model", "sha256", "top1"))
        model = load_weights(build_model(self.config, 0, self.splits), folder / "model.safetensors")
        say(f"round 0's teacher: finished, loaded from {folder}", flush=True)
        self.summary["teacher"] = info
        return Teacher(model.to(self.device), info["model"], info["sha256"],
                       {s: info[s] for s in SCORES if info.get(s) is not None})

    def gate(self, problem: str | None) -> None:
        """Stop after round 0's teacher when it cannot teach (sanity.py), unless forced."""
        if problem is None:
            return
        if self.config.train.sanity_gate and not self.start.force:
            raise TrainingError(gate_message(problem))
        say(f"warning: {problem}; going on (--force or train.sanity_gate = false)", flush=True)
        self.tracker.log("warning", message=problem, forced=True)

    # ---- a round's teacher ---------------------------------------------------------------------
    def round_teacher(self, k: int, teacher: Teacher) -> tuple[Teacher, str | None]:
        """Round k's teacher: the last student, or a weights file (--teacher, or the copy of
        it kept in the round's folder for --resume), made composite when the config asks; and
        the file it came from."""
        given = self.start.teacher if k == self.start.from_round else None
        kept = self.run_dir.round(k) / "teacher.safetensors"
        source = given or (str(kept) if kept.is_file() else None)
        if source is not None:
            name = self.config.model_for(k)
            model = load_weights(build_model(self.config, k, self.splits), Path(source))
            model.to(self.device)
            teacher = Teacher(model, name, weights_sha256(model.state_dict()),
                              _scores(self.evaluate(model)))
            say(f"round {k}: teacher {name} from {source} ({_top1s(teacher.scores)})",
                flush=True)
            if given and self.main:
                save_weights(model, kept, {"model": name, "from": given})
        return self.composite_teacher(k, teacher), source

    def composite_teacher(self, k: int, teacher: Teacher) -> Teacher:
        """Round k's teacher as an ensemble of the last models, or with specialists, either one
        averaged over fixed views, when the config asks for it (teachers.py); its scores are
        measured anew."""
        c, made = self.config.pseudo_label, None
        if c.ensemble > 1:
            made = ensemble_of_last(self.config, self.run_dir, self.splits, self.device, k,
                                    teacher.model, teacher.name, teacher.sha256)
        if c.specialists:
            *made, report = with_specialists(self.config, self.splits, self.noise,
                                             self.batch_noise, self.device, self.tracker, k,
                                             teacher.model, teacher.name, teacher.sha256)
            self.specialist_reports[k] = {**report, "generalist_top1": teacher.scores["top1"]}
        if c.flip_average or c.shift_average:
            made = view_averaged(*(made or (teacher.model, teacher.name, teacher.sha256)),
                                 c.flip_average, c.shift_average)
        if made is not None and made[0] is not teacher.model:
            model, name, sha = made
            teacher = Teacher(model, name, sha, _scores(self.evaluate(model)))
            say(f"round {k}: the teacher is {name}: {_top1s(teacher.scores)}", flush=True)
        if k in self.specialist_reports:  # groups, and the teacher's top-1 with them
            self.specialist_reports[k]["combined_top1"] = teacher.scores["top1"]
            self.tracker.log("specialists", **self.specialist_reports[k])
        return teacher

    # ---- label and filter ----------------------------------------------------------------------
    def pseudo_label(self, teacher: Teacher, k: int) -> PseudoLabels:
        """Round k's pseudo-labels: an earlier attempt's when the same teacher made them with
        the same settings (this folder's on resume, the older run's with --from-round), else
        made now, each rank labeling its shard."""
        c, s, folder = self.config, self.splits, self.run_dir.round(k)
        settings = c.fingerprint("pseudo_label", "data", "seed")
        older = [] if self.older_run is None else [self.older_run / f"round_{k}"]
        candidates = [f / "pseudo_labels.npz" for f in [folder, *older]]
        stored = stored_labels(candidates, (teacher.sha256, settings, c.loss.temperature),
                               lambda text: say(f"round {k}: {text}", flush=True))
        if stored is not None:
            labels, path = stored
            if self.main and path.parent != folder:  # the soft labels' parts come along
                link_parts(labels.meta.get("soft_parts", []), path.parent, folder)
        else:
            labels = self.label_now(teacher, k, settings)
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
            save_npz(folder / "pseudo_labels.npz", labels.arrays())
        return labels

    def label_now(self, teacher: Teacher, k: int, settings: str) -> PseudoLabels:
        """The teacher labels this rank's shard (writing its soft labels' part); every rank
        gets every part, merged in rank order, filtered and balanced."""
        c, s, folder = self.config, self.splits, self.run_dir.round(k)
        part = distributed.shard(len(s.unlabeled))
        world = distributed.world_size() if distributed.active() else 1
        progress = Progress(part.stop - part.start, f"round {k} pseudo-labels",
                            enabled=self.main)
        with _memory_hint("pseudo_label.batch_size", c.pseudo_label.batch_size):
            mine = label_part(
                FrozenTeacher(teacher.model), s.unlabeled.images[part], s.mean, s.std,
                c.pseudo_label, c.loss.temperature,
                folder / SOFT_DIR / f"part-{distributed.rank():05d}-of-{world:05d}",
                self.device, progress=progress,
                check=lambda: self.stop.check(f"round {k} pseudo-labeling"), **self.inference_speed)
        progress.close()
        return merge_parts(distributed.gather(mine), folder, c.pseudo_label, c.loss.temperature,
                           {"round": k, "teacher": teacher.name,
                            "teacher_sha256": teacher.sha256, "settings": settings},
                           remove_stale=self.main)

    def report_labels(self, k: int, teacher: Teacher, labels: PseudoLabels) -> dict[str, Any]:
        """Log round k's pseudo-labels (counts, samples, accuracy against the hidden labels);
        round 0's pass the sanity gate. Returns their statistics."""
        u = self.splits.unlabeled
        stats = labels.stats(u.labels)
        self.tracker.log("pseudo_labels", round=k, **stats)
        self.tracker.samples(k, u.images, labels, u.labels)
        accuracy = stats["accuracy"]
        say(f"round {k} pseudo-labels from {teacher.name}: kept {stats['kept_unique']} of "
            f"{stats['unlabeled']} images ({100 * stats['kept_fraction']:.1f}%), "
            f"{stats['kept']} items after balancing (the table's PL items), mean confidence "
            f"{stats['mean_confidence']:.3f}"
            + ("" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"), flush=True)
        if k == 0:
            self.gate(coverage_problem(labels.predicted, labels.indices,
                                       self.config.pseudo_label.threshold,
                                       self.splits.labeled.classes))
        return stats

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
        rd = self.run_dir
        teacher = self.finished_teacher() if rd.is_done(rd.teacher) else self.initial_teacher()
        if not rd.is_done(rd.round(0)):
            self.gate(teacher_problem(teacher.scores.get("val_top1"), self.splits.num_classes))
        for k in range(self.config.rounds):
            teacher = (self.finished_round(k) if rd.is_done(rd.round(k))
                       else self.run_round(k, teacher))
        if self.main:
            save_json(rd.root / "summary.json", self.summary)
        say(format_summary(self.summary))
        return self.summary

    def run_round(self, k: int, teacher: Teacher) -> Teacher:
        """Round k: label, filter, train, evaluate. The student is the next round's teacher."""
        rd = self.run_dir
        teacher, source = self.round_teacher(k, teacher)
        start, student = time.perf_counter(), self.config.model_for(k + 1)
        if self.main:
            rd.round(k).mkdir(parents=True, exist_ok=True)
        self.tracker.start_phase(f"round_{k}", f"round-{k}", "round", {
            "phase": "round", "round": k,
            "teacher": {"model": teacher.name, "params": self.sizes[k], "sha256": teacher.sha256},
            "student": {"model": student, "params": self.sizes[k + 1]}})
        labels = self.pseudo_label(teacher, k)
        teacher.release()
        stats = self.report_labels(k, teacher, labels)
        self.stop.check(f"round {k}, after pseudo-labeling")
        label_seconds = time.perf_counter() - start
        result = self.train(k + 1, labels, f"round {k} student", rd.round(k), {
            "model": student, "teacher_sha256": teacher.sha256,
            "pseudo_labels_sha256": arrays_sha256(labels.arrays())})
        t = time.perf_counter()
        evaluation = self.evaluate(result.model)
        final_eval = time.perf_counter() - t
        sha = self.save_weights(result.model, rd.round(k) / "student.safetensors",
                                {"model": student, "round": str(k)})
        outcome = RoundOutcome(k, teacher, Teacher(result.model, student, sha,
                                                   _scores(evaluation)),
                               self.sizes[k + 1], stats, evaluation, result, source,
                               time.perf_counter() - start + result.seconds_before,
                               label_seconds, final_eval)
        self.close_round(outcome)
        return outcome.student

    def close_round(self, o: RoundOutcome) -> None:
        """Round k's records: metrics.json and DONE, its summary row, wandb's round and
        artifact."""
        k, rd, entry = o.k, self.run_dir, round_entry(o)
        extra = {"specialists": self.specialist_reports.pop(k)} if k in self.specialist_reports else {}
        if self.main:
            save_json(rd.round(k) / "metrics.json", round_metrics(o, extra))
            rd.mark_done(rd.round(k))
        self.summary["rounds"].append(entry)
        if self.main:
            save_json(rd.root / "summary.json", self.summary)
        distributed.barrier()
        self.tracker.log("round", **entry)
        self.tracker.artifact(k, [rd.round(k) / "student.safetensors",
                                  rd.round(k) / "pseudo_labels.npz", rd.round(k) / SOFT_DIR],
                              {"student": o.student.name, "student_sha256": o.student.sha256,
                               "teacher_sha256": o.teacher.sha256,
                               "test_top1": o.evaluation["test"]["top1"]})
        self.tracker.end_phase()

    def finished_round(self, k: int) -> Teacher:
        """Round k's student, from its finished folder, as the next teacher."""
        folder = self.run_dir.round(k)
        self.run_dir.verify(folder)
        metrics = load_json(folder / "metrics.json", dict)
        _require(folder / "metrics.json", metrics, ("student", "student_sha256", "student_top1"))
        model = load_weights(build_model(self.config, k + 1, self.splits),
                             folder / "student.safetensors")
        say(f"round {k}: finished, its student is loaded from {folder}", flush=True)
        entry = {c: metrics.get(c) for c in SUMMARY_COLUMNS}
        self.summary["rounds"].append(entry)
        return Teacher(model.to(self.device), entry["student"], metrics["student_sha256"],
                       {s: entry[f"student_{s}"] for s in SCORES
                        if entry.get(f"student_{s}") is not None})


def _cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), where amp_cpu pays."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


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


def _require(path: Path, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise RunDirError(f"{path}: damaged, without {', '.join(missing)}")


def _top1s(scores: dict[str, float]) -> str:
    val = f"validation top-1 {100 * scores['val_top1']:.2f}%, " if "val_top1" in scores else ""
    return f"{val}test top-1 {100 * scores['top1']:.2f}%"


def run(config: Config, overwrite: bool = False, resume: bool = False,
        from_round: int | None = None, teacher: str | None = None, from_run: str | None = None,
        allow_config_change: tuple[str, ...] = (), force: bool = False) -> dict[str, Any]:
    """Run the whole loop for `config`; returns the summary (also in `<out>/summary.json`).

    `resume` continues the run in `config.out` from its newest valid checkpoint (finished rounds
    are loaded, the interrupted phase goes on at the step it stopped). `from_round=K` starts again
    at round K (see `run_dir.RunStart`). `allow_config_change` lists the keys that may differ from
    the saved config on resume. `force` goes on past the sanity gate after round 0's teacher.
    """
    start = RunStart(overwrite, resume, from_round, teacher, from_run, tuple(allow_config_change),
                  force)
    return Loop(config, start).run()
