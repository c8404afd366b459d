"""The experiment's summary: one entry per round (summary.json) and its printed table."""

from __future__ import annotations

from typing import Any

SUMMARY_COLUMNS = ("round", "teacher", "student", "student_params", "teacher_top1",
                   "teacher_top5", "teacher_ece", "student_top1", "student_top5", "student_ece",
                   "pseudo_labels_kept", "pseudo_label_accuracy", "seconds")


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (fractions shown as percentages)."""
    t = summary["teacher"]
    lines = [f"labels-only teacher {t['model']}: top-1 {100 * t['top1']:.2f}%  ({t['seconds']} s)"]
    header = ["round", "teacher", "student", "params", "teacher top1", "student top1", "top5",
              "ECE", "kept", "PL acc", "seconds"]
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    rows = [[str(r["round"]), r["teacher"], r["student"], f"{r['student_params']:,}",
             pct(r["teacher_top1"]), pct(r["student_top1"]), pct(r["student_top5"]),
             f"{r['student_ece']:.4f}", str(r["pseudo_labels_kept"]),
             pct(r["pseudo_label_accuracy"]), f"{r['seconds']:.1f}"] for r in summary["rounds"]]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([*lines, fmt.format(*header), *(fmt.format(*r) for r in rows)])
