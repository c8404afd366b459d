"""Plot finished runs round by round: student test top-1, pseudo-label accuracy, kept fraction.

    python tools/plot_rounds.py runs/digits [runs/digits_hard ...] [--out rounds.png]

One figure, three panels versus round, one line per run (legend: the run's name): test top-1
of round 0's labels-only teacher (at "teacher") and of each round's student; the accuracy of
each round's pseudo-labels against the hidden labels (kept images; sources with hidden labels
only); the fraction of unlabeled images kept. Values come from each finished round's
`round_K/metrics.json` (`summary.json` where a round's file lacks them) and the teacher's
`teacher/metrics.json`. Default output: `<run>/rounds.png` for one run, `./rounds.png` for
several. The numbers are printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisy_student.artifacts import ArtifactError, FinishedRun, open_run
from noisy_student.errors import NoisyStudentError

DPI = 100
FIGSIZE = (15.0, 4.0)  # inches: 1500 x 400 pixels at DPI
TEACHER_X = -1  # where round 0's teacher sits on the round axis
PANELS = [("top1", "test top-1 (teacher, then each round's student)"),
          ("pl_accuracy", "pseudo-label accuracy (kept images)"),
          ("kept_fraction", "unlabeled images kept")]


@dataclass
class Curves:
    """One run's values per round (x = round; `TEACHER_X` for round 0's teacher)."""
    name: str
    root: Path
    top1: dict[int, float] = field(default_factory=dict)
    pl_accuracy: dict[int, float] = field(default_factory=dict)
    kept_fraction: dict[int, float] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: cannot be read ({e})") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: damaged, expected a JSON object")
    return data


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def load_curves(run: FinishedRun, name: str) -> Curves:
    curves = Curves(name, run.root)
    summary = _read(run.root / "summary.json")
    teacher = _read(run.root / "teacher" / "metrics.json") or summary.get("teacher", {})
    if _number(teacher.get("top1")) is not None:
        curves.top1[TEACHER_X] = float(teacher["top1"])
    by_round = {int(r["round"]): r for r in summary.get("rounds", []) if "round" in r}
    for k in run.rounds():
        m = {**by_round.get(k, {}), **_read(run.root / f"round_{k}" / "metrics.json")}
        pl = m.get("pseudo_labels") or {}
        for target, value in ((curves.top1, m.get("student_top1")),
                              (curves.pl_accuracy, pl.get("accuracy",
                                                          m.get("pseudo_label_accuracy"))),
                              (curves.kept_fraction, pl.get("kept_fraction"))):
            if _number(value) is not None:
                target[k] = float(value)
    return curves


def plot(runs: list[Curves], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max([0, *(k for c in runs for k in c.top1)])
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI, sharex=True)
    for ax, (key, title) in zip(axes, PANELS):
        for c in runs:
            points = sorted(getattr(c, key).items())
            if points:
                ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o",
                        label=c.name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].set_xticks(range(TEACHER_X, last + 1),
                       ["teacher", *(str(k) for k in range(last + 1))])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def _cell(values: dict[int, float], x: int) -> str:
    return f"{100 * values[x]:.2f}" if x in values else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories")
    p.add_argument("--out", type=Path,
                   help="PNG to write (default: <run>/rounds.png for one run, ./rounds.png)")
    args = p.parse_args(argv)
    try:
        opened = [open_run(path) for path in args.runs]
        names = [r.config.name for r in opened]
        if len(set(names)) < len(names):  # same names: tell them apart by their folders
            names = [str(path) for path in args.runs]
        runs = [load_curves(r, n) for r, n in zip(opened, names)]
        empty = [str(c.root) for c in runs if not c.top1]
        if empty:
            raise ArtifactError(f"no teacher or finished round to plot in {', '.join(empty)}")
        import matplotlib  # noqa: F401  (fail here, with a clear message)
    except ImportError:
        print(f"{p.prog}: error: matplotlib is not installed (pip install -e '.[tools]')",
              file=sys.stderr)
        return 2
    except NoisyStudentError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    out = args.out or (opened[0].root / "rounds.png" if len(opened) == 1 else Path("rounds.png"))
    plot(runs, out)
    for c in runs:
        print(f"{c.name}  ({c.root})")
        print(f"  {'round':>7} {'top-1 %':>8} {'PL acc %':>9} {'kept %':>7}")
        for x in sorted(c.top1.keys() | c.pl_accuracy.keys() | c.kept_fraction.keys()):
            label = "teacher" if x == TEACHER_X else str(x)
            print(f"  {label:>7} {_cell(c.top1, x):>8} {_cell(c.pl_accuracy, x):>9} "
                  f"{_cell(c.kept_fraction, x):>7}")
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
