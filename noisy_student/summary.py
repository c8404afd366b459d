"""The experiment's summary: one entry per round (summary.json) and its printed table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .teachers import Teacher
    from .train import TrainResult

# top1, top5, ece: on test (the report); val_*: on validation (every choice), None without one
SUMMARY_COLUMNS = ("round", "teacher", "student", "student_params", "teacher_val_top1",
                   "teacher_top1", "teacher_top5", "teacher_ece", "teacher_val_ece",
                   "student_val_top1", "student_top1", "student_top5", "student_val_ece",
                   "student_ece", "pseudo_labels_kept", "pseudo_label_accuracy", "seconds")


@dataclass
class RoundOutcome:
    """What round k produced, for its records."""

    k: int
    teacher: Teacher
    student: Teacher
    student_params: int
    pseudo_labels: dict[str, Any]  # PseudoLabels.stats
    evaluation: dict[str, dict[str, Any]]  # the student's metrics on "test" (and "val")
    training: TrainResult
    teacher_from: str | None  # the weights file round k's teacher came from (--teacher)
    seconds: float  # this process's, plus the training time of earlier ones when resumed
    label_seconds: float
    final_evaluate_seconds: float


def round_entry(o: RoundOutcome) -> dict[str, Any]:
    """The round's row of summary.json (SUMMARY_COLUMNS)."""
    return {"round": o.k, "teacher": o.teacher.name, "student": o.student.name,
            "student_params": o.student_params,
            **{f"teacher_{s}": v for s, v in o.teacher.scores.items()},
            **{f"student_{s}": v for s, v in o.student.scores.items()},
            "pseudo_labels_kept": o.pseudo_labels["kept"],
            "pseudo_label_accuracy": o.pseudo_labels["accuracy"],
            "seconds": round(o.seconds, 2)}


def round_metrics(o: RoundOutcome, extra: dict[str, Any]) -> dict[str, Any]:
    """The round's metrics.json: its summary row, identities, the student's full evaluation,
    the training history and where the time went."""
    r = o.training
    return {**round_entry(o), "student_sha256": o.student.sha256,
            "teacher_sha256": o.teacher.sha256, "teacher_from": o.teacher_from,
            "resumed_from": r.resumed_from, "pseudo_labels": o.pseudo_labels, **o.evaluation,
            "train": r.history, **extra,
            "timing": {"pseudo_label": round(o.label_seconds, 2),
                       "train": round(r.seconds, 2),  # over processes, as "seconds"
                       "train_before_resume": round(r.seconds_before, 2),
                       "train_images_per_second": round(r.images_per_second, 1),
                       # parts of "train":
                       "train_data_wait": r.timing["data_wait"],
                       "train_evaluate": r.timing["evaluate"],
                       "train_checkpoint": r.timing["checkpoint"],
                       "final_evaluate": round(o.final_evaluate_seconds, 3)}}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (fractions shown as percentages)."""
    t = summary["teacher"]
    val = f"validation {pct(t.get('val_top1'))}%, " if t.get("val_top1") is not None else ""
    kind = "consistency" if t.get("consistency") else "labels-only"  # round 0's teacher
    lines = [f"{kind} teacher {t['model']}: top-1 {val}test {pct(t['top1'])}%  "
             f"({t['seconds']} s)"]
    header = ["round", "teacher", "student", "params", "teacher val", "teacher test",
              "student val", "student test", "test top5", "val ECE", "test ECE", "PL items",
              "PL acc", "seconds"]
    rows = [[str(r["round"]), r["teacher"], r["student"], f"{r['student_params']:,}",
             pct(r.get("teacher_val_top1")), pct(r["teacher_top1"]),
             pct(r.get("student_val_top1")), pct(r["student_top1"]), pct(r["student_top5"]),
             pct(r.get("student_val_ece")), pct(r["student_ece"]), str(r["pseudo_labels_kept"]),
             pct(r["pseudo_label_accuracy"]), f"{r['seconds']:.1f}"] for r in summary["rounds"]]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([*lines, fmt.format(*header), *(fmt.format(*r) for r in rows),
                      "(top-1 and ECE in %; PL items: the pseudo-labeled items the student "
                      "trained on, after balancing; PL acc: their accuracy against the hidden "
                      "labels, when known; choices are made on validation, test is the report)"])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"
