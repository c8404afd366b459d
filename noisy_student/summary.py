"""The experiment's summary: one entry per round (summary.json) and its printed table."""

from __future__ import annotations

from typing import Any

# top1, top5, ece: on test (the report); val_*: on validation (every choice), None without one
SUMMARY_COLUMNS = ("round", "teacher", "student", "student_params", "teacher_val_top1",
                   "teacher_top1", "teacher_top5", "teacher_ece", "teacher_val_ece",
                   "student_val_top1", "student_top1", "student_top5", "student_val_ece",
                   "student_ece", "pseudo_labels_kept", "pseudo_label_accuracy", "seconds")


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (fractions shown as percentages)."""
    t = summary["teacher"]
    val = f"validation {pct(t.get('val_top1'))}%, " if t.get("val_top1") is not None else ""
    lines = [f"labels-only teacher {t['model']}: top-1 {val}test {pct(t['top1'])}%  "
             f"({t['seconds']} s)"]
    header = ["round", "teacher", "student", "params", "teacher val", "teacher test",
              "student val", "student test", "test top5", "val ECE", "test ECE", "kept",
              "PL acc", "seconds"]
    rows = [[str(r["round"]), r["teacher"], r["student"], f"{r['student_params']:,}",
             pct(r.get("teacher_val_top1")), pct(r["teacher_top1"]),
             pct(r.get("student_val_top1")), pct(r["student_top1"]), pct(r["student_top5"]),
             pct(r.get("student_val_ece")), pct(r["student_ece"]), str(r["pseudo_labels_kept"]),
             pct(r["pseudo_label_accuracy"]), f"{r['seconds']:.1f}"] for r in summary["rounds"]]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([*lines, fmt.format(*header), *(fmt.format(*r) for r in rows),
                      "(top-1 and ECE in %; choices are made on validation, test is the report)"])


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"
