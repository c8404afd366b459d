"""Look at one round's pseudo-labels: what the teacher said about the unlabeled images.

    python tools/inspect_pseudo_labels.py runs/digits --round 0 [--per-class 4] [--out DIR]

Reads round K's `pseudo_labels.npz` and the run's unlabeled images (re-made from its config and
seed) and writes, to `<run>/inspect/round_K/` unless `--out` says otherwise:

  class_CC_<name>.png  per predicted class: its N most (top row) and N least (bottom row)
                       confident images, titled with the teacher's class and confidence (and,
                       when the source has them, the hidden label: green right, red wrong)
  confidence.png       histogram of the teacher's confidence: every unlabeled image, the kept ones
  kept_per_class.png   per class: images predicted, kept (unique) and training items (balancing
                       duplicates included)
  confusion.png        hidden label x teacher's class on every unlabeled image (hidden labels only)
  inspect.json         the numbers behind the figures

and prints the per-class table and the pseudo-label accuracy (kept images, and all images).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from noisy_student.artifacts import ArtifactError, open_run
from noisy_student.errors import NoisyStudentError
from noisy_student.pseudo_label import PseudoLabels, confidence_extremes

DPI = 100
CELL = (1.5, 1.75)  # inches per image in a class grid; the grid adds TITLE for its title
TITLE = 0.5


def grid_size(per_class: int) -> tuple[float, float]:
    """A class grid's figure size in inches: `per_class` columns (at least 2), two rows."""
    return max(per_class, 2) * CELL[0], 2 * CELL[1] + TITLE


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def class_grids(labels: PseudoLabels, images: Any, hidden: np.ndarray | None,
                classes: list[str], n: int, out: Path) -> list[Path]:
    """One PNG per predicted class: its n most and n least confident images."""
    plt = _pyplot()
    rows = confidence_extremes(labels.predicted, labels.confidence_all, len(classes), n)
    written = []
    for c, name in enumerate(classes):
        mine = [r for r in rows if r[1] == c]
        if not mine:
            continue
        fig, axes = plt.subplots(2, max(n, 2), figsize=grid_size(n), dpi=DPI, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for row, kind in enumerate(("most", "least")):
            for col, (i, _, conf, _) in enumerate(r for r in mine if r[3] == kind):
                ax, image = axes[row, col], np.asarray(images[i])  # [H, W, C]
                if image.shape[-1] == 1:
                    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
                else:
                    ax.imshow(image)
                title, color = f"{name} {conf:.2f}", "black"
                if hidden is not None:
                    title += f"\ntrue: {classes[int(hidden[i])]}"
                    color = "green" if int(hidden[i]) == c else "red"
                ax.set_title(title, fontsize=8, color=color)
        fig.suptitle(f"teacher's class {name}: most confident (top), least (bottom)",
                     fontsize=9)
        path = out / f"class_{c:0{len(str(len(classes) - 1))}d}_{_safe(name)}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def confidence_histogram(labels: PseudoLabels, title: str, out: Path) -> Path:
    plt = _pyplot()
    kept = labels.confidence_all[np.unique(labels.indices)]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
    bins = np.linspace(0, 1, 41)
    ax.hist(labels.confidence_all, bins=bins, alpha=0.6, label=f"all ({len(labels.predicted)})")
    ax.hist(kept, bins=bins, alpha=0.6, label=f"kept ({len(kept)})")
    threshold = labels.meta.get("threshold")
    if threshold:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("teacher's confidence (max softmax)")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("unlabeled images")
    ax.legend()
    fig.tight_layout()
    path = out / "confidence.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def per_class_table(labels: PseudoLabels, hidden: np.ndarray | None,
                    classes: list[str]) -> list[dict[str, Any]]:
    """Per class: predicted, kept (unique images), items, and the kept images' accuracy."""
    c = len(classes)
    unique = np.unique(labels.indices)
    predicted = np.bincount(labels.predicted, minlength=c)
    kept = np.bincount(labels.predicted[unique], minlength=c)
    items = np.bincount(labels.kept_classes(), minlength=c)
    table = []
    for k, name in enumerate(classes):
        row: dict[str, Any] = {"class": name, "predicted": int(predicted[k]),
                               "kept": int(kept[k]), "items": int(items[k])}
        if hidden is not None:
            mine = unique[labels.predicted[unique] == k]
            row["hidden"] = int((hidden == k).sum())
            row["accuracy"] = float((hidden[mine] == k).mean()) if len(mine) else None
        table.append(row)
    return table


def kept_bars(table: list[dict[str, Any]], title: str, out: Path) -> Path:
    plt = _pyplot()
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(table) + 1.5), 4), dpi=DPI)
    for j, key in enumerate(("predicted", "kept", "items")):
        ax.bar(x + (j - 1) * 0.27, [r[key] for r in table], width=0.27, label=key)
    ax.set_xticks(x, [r["class"] for r in table], rotation=90 if len(table) > 12 else 0)
    ax.set_ylabel("unlabeled images")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = out / "kept_per_class.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confusion(labels: PseudoLabels, hidden: np.ndarray, classes: list[str], title: str,
              out: Path) -> tuple[Path, np.ndarray]:
    """Hidden label (rows) x teacher's class (columns), counts over every unlabeled image."""
    plt = _pyplot()
    c = len(classes)
    matrix = np.bincount(hidden * c + labels.predicted, minlength=c * c).reshape(c, c)  # [C, C]
    side = min(max(5.0, 0.5 * c + 2), 20.0)
    fig, ax = plt.subplots(figsize=(side, side), dpi=DPI)
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if c <= 25:
        for (r, k), v in np.ndenumerate(matrix):
            ax.text(k, r, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > matrix.max() / 2 else "black")
        ax.set_xticks(range(c), classes, rotation=90)
        ax.set_yticks(range(c), classes)
    ax.set_xlabel("teacher's class (pseudo-label)")
    ax.set_ylabel("hidden label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = out / "confusion.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path, matrix


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--round", type=int, required=True, metavar="K", help="round (0-based)")
    p.add_argument("--per-class", type=int, default=4, metavar="N",
                   help="most and least confident images shown per class (default 4)")
    p.add_argument("--out", type=Path, help="output folder (default <run>/inspect/round_K)")
    args = p.parse_args(argv)
    try:
        if args.per_class < 1:
            raise ValueError(f"--per-class must be at least 1, not {args.per_class}")
        run = open_run(args.run)
        path = run.root / f"round_{args.round}" / "pseudo_labels.npz"
        if not path.is_file():
            have = sorted(int(q.parent.name[6:]) for q in run.root.glob("round_*/pseudo_labels.npz")
                          if q.parent.name[6:].isdigit())
            raise ArtifactError(f"{path}: missing; rounds with pseudo-labels: {have or 'none'}")
        labels = PseudoLabels.load(path, verify=False)
        unlabeled = run.splits().unlabeled
        if len(unlabeled) != len(labels.predicted):
            raise ArtifactError(f"the run's unlabeled set has {len(unlabeled)} images, its "
                            f"pseudo-labels {len(labels.predicted)}: the data changed since")
        import matplotlib  # noqa: F401  (fail here, with a clear message)
    except ImportError:
        print(f"{p.prog}: error: matplotlib is not installed (pip install -e '.[tools]')",
              file=sys.stderr)
        return 2
    except (NoisyStudentError, ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    out = args.out or run.root / "inspect" / f"round_{args.round}"
    out.mkdir(parents=True, exist_ok=True)
    classes = run.classes
    hidden = None if unlabeled.labels is None else np.asarray(unlabeled.labels, dtype=np.int64)
    stats = labels.stats(hidden)
    table = per_class_table(labels, hidden, classes)
    written = class_grids(labels, unlabeled.images, hidden, classes, args.per_class, out)
    k = args.round
    written += [confidence_histogram(labels, f"round {k}: the teacher's confidence", out),
                kept_bars(table, f"round {k}: pseudo-labels per class", out)]
    report: dict[str, Any] = {"run": str(run.root), "round": args.round, "stats": stats,
                              "per_class": table}
    if hidden is not None:
        title = (f"round {args.round} teacher on the unlabeled set: pseudo-label accuracy "
                 f"{_percent(stats['accuracy'])} kept, {_percent(stats['accuracy_all'])} all")
        figure, matrix = confusion(labels, hidden, classes, title, out)
        written.append(figure)
        report["confusion"] = matrix.tolist()
    (out / "inspect.json").write_text(json.dumps(report, indent=2) + "\n")

    width = max(5, *(len(n) for n in classes))
    head = f"{'class':<{width}} {'predicted':>9} {'kept':>6} {'items':>6}"
    print(head + (f" {'hidden':>6} {'accuracy':>8}" if hidden is not None else ""))
    for r in table:
        line = f"{r['class']:<{width}} {r['predicted']:>9} {r['kept']:>6} {r['items']:>6}"
        if hidden is not None:
            line += f" {r['hidden']:>6} {_percent(r['accuracy']):>8}"
        print(line)
    print(f"kept {stats['kept_unique']} of {stats['unlabeled']} unlabeled images "
          f"({_percent(stats['kept_fraction'])}), {stats['kept']} training items; mean "
          f"confidence {stats['mean_confidence']:.3f} kept, {stats['mean_confidence_all']:.3f} all")
    if hidden is not None:
        print(f"pseudo-label accuracy: {_percent(stats['accuracy'])} of kept images, "
              f"{_percent(stats['accuracy_all'])} of all")
    else:
        print("pseudo-label accuracy: no hidden labels (this source has none)")
    print(f"wrote {len(written)} figures and inspect.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
