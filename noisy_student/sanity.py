"""The sanity gate after round 0's teacher: stop a run whose rounds could only degrade.

A student learns what its teacher's pseudo-labels say, so a teacher near chance, or pseudo-labels
that name only a few classes, make every later round worse. Two checks, both on round 0 only:

- the teacher's validation top-1 is below twice chance (2 / classes); skipped without a
  validation set (test is never used for a choice);
- the kept pseudo-labels (before balancing) cover fewer than half of the classes, where a class
  counts when it holds at least a tenth of an even share of them.

Either stops the run (exit 2) with what to change; `--force` goes on anyway. The teacher and its
pseudo-labels stay in the run directory.
"""

from __future__ import annotations

import numpy as np

ADVICE = ("train the teacher longer (train.teacher_min_steps, train.teacher_epochs), use a "
          "smaller model (model.ladder), or check the labeled folder's classes")


def teacher_problem(val_top1: float | None, num_classes: int) -> str | None:
    """Why round 0's teacher is too weak to teach, or None."""
    if val_top1 is None or val_top1 >= 2 / num_classes:
        return None
    return (f"round 0's teacher is near chance: validation top-1 {100 * val_top1:.1f}% with "
            f"{num_classes} classes (chance {100 / num_classes:.1f}%, the gate "
            f"{200 / num_classes:.1f}%). To change: {ADVICE}")


def coverage_problem(predicted: np.ndarray, kept: np.ndarray, threshold: float,
                     classes: list[str]) -> str | None:
    """Why round 0's pseudo-labels cannot teach every class, or None. `predicted`: the
    teacher's class for every unlabeled image; `kept`: the indices kept (duplicates allowed)."""
    c = len(classes)
    unique = np.unique(kept)
    per_class = np.bincount(predicted[unique], minlength=c)
    covered = per_class >= max(1.0, 0.1 * len(unique) / c)
    if covered.sum() * 2 >= c:
        return None
    named = [classes[k] for k in np.flatnonzero(covered)]
    return (f"round 0's pseudo-labels cover {int(covered.sum())} of {c} classes ({named}): "
            f"{len(unique):,} of {len(predicted):,} unlabeled images kept at "
            f"pseudo_label.threshold = {threshold}, per class {per_class.tolist()}. To change: "
            f"{ADVICE}, or lower pseudo_label.threshold")


def gate_message(problem: str) -> str:
    return (f"{problem}. The rounds after it could only get worse, so the run stops here, its "
            "files kept; to go on anyway: the same command with --resume --force")
