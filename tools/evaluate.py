"""Evaluate a finished run's models: metrics, reliability diagram, confusion matrix, robustness.

    python tools/evaluate.py RUN_DIR|WEIGHTS_FILE [--round K|teacher|last|all] [--images DIR]
                             [--out DIR] [--robustness] [--severities 1 2 3 4 5] [--limit N]

The phase: `--round` (default: the one a WEIGHTS_FILE or folder inside the run names, e.g.
`round_1/student.safetensors`, `teacher/`; else `last`, the newest finished round). The images:
the recipe's test set (re-made from the run's config and seed), or `--images DIR` with one
sub-folder per class of the run. Per phase, into `--out` (default `<run>/evaluation/<phase>/`,
`<phase>_<DIR name>/` with `--images`): metrics.json (top-1, top-5, per-class accuracy, ECE over
15 bins, NLL, the bins, the confusion matrix), reliability.png (accuracy against confidence per
bin, the diagonal, ECE in the title), confusion.png (rows true, columns predicted).

`--robustness`: on the same images, the top-1 error E(m, c, s) per corruption c and severity s
(`noisy_student.corruptions`), CE_c = sum_s E(m, c, s) / sum_s E(teacher, c, s) against round 0's
labels-only teacher, mCE = mean_c CE_c (Hendrycks & Dietterich 2019, as in the Noisy Student
paper), for the phase and the teacher (`--round all`: every finished round, to see whether
robustness improves round by round). Printed as a table, written to robustness.json (in the
phase's folder; with several phases next to their folders). Bad input exits with code 2 and a
one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch

from noisy_student import corruptions
from noisy_student.artifacts import FinishedRun, open_run
from noisy_student.errors import NoisyStudentError
from noisy_student.data.image_folder import IMAGE_EXTENSIONS, BadFile, read_image
from noisy_student.metrics import classification_metrics
from noisy_student.inference import predict_logits

BINS = 15  # as noisy_student.metrics.expected_calibration_error
DPI = 100
RELIABILITY_INCHES = 5.0
Phase = str | int


class UsageError(RuntimeError):
    """Bad input to the tool; the message says why (exit code 2)."""


def confusion_inches(num_classes: int) -> float:
    return min(20.0, max(5.0, 0.45 * num_classes + 2.0))


def phase_name(which: Phase) -> str:
    return "teacher" if which == "teacher" else f"round_{which}"


def parse_round(text: str) -> Phase:
    if text in ("teacher", "last", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: expected K (a round number), teacher, last or all")


def phase_of_path(run: FinishedRun, path: Path) -> Phase | None:
    """The phase a path inside the run names (None for the run directory itself)."""
    parts = path.resolve().relative_to(run.root).parts
    if not parts:
        return None
    head = parts[0]
    which: Phase | None = "teacher" if head == "teacher" else (
        int(head[6:]) if head.startswith("round_") and head[6:].isdigit() else None)
    if which is None or (path.is_file() and len(parts) > 1 and parts[1:] != (
            ("model.safetensors",) if which == "teacher" else ("student.safetensors",))):
        raise UsageError(f"{path}: not a phase's weights file or folder (teacher/model.safetensors "
                         "or round_K/student.safetensors)")
    return which


def select_phases(run: FinishedRun, which: Phase) -> list[Phase]:
    """`all` -> the teacher and every finished round; else the one phase (checked to exist)."""
    if which == "all":
        phases: list[Phase] = ["teacher", *run.rounds()]
    else:
        phases = [run.rounds()[-1] if which == "last" and run.rounds() else which]
    for p in phases:
        run.phase(p)  # raises ArtifactError naming the cause
    return phases


def read_folder(directory: Path, run: FinishedRun) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, S, S, C] and int64 [N] from one sub-folder per class of `run.classes`."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a folder")
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in run.classes]
    if unknown:
        raise UsageError(f"{directory}: unknown classes {unknown}; the run's classes are "
                         f"{run.classes}")
    size = run.image_shape[0]  # the side of the run's images
    images, labels = [], []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
            try:
                images.append(read_image(path.read_bytes(), size, run.channels)[0])
            except (OSError, BadFile) as e:
                raise UsageError(f"{path}: {e}") from e
            labels.append(run.classes.index(folder.name))
    if not images:
        raise UsageError(f"{directory}: no images in class sub-folders ({', '.join(run.classes)})")
    return np.stack(images), np.asarray(labels, np.int64)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: count, accuracy, mean confidence (empty: None).
    ECE = sum_b count_b / N * |accuracy_b - confidence_b| (the binning of noisy_student/metrics.py)."""
    confidence, predicted = probs.max(dim=1)  # [N], [N]
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges, right=False) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                    "accuracy": float(correct[members].mean()) if n else None,
                    "confidence": float(confidence[members].mean()) if n else None})
    return out


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """int64 [K, K]: rows true class, columns predicted class."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_reliability(bins: list[dict], ece: float, path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(RELIABILITY_INCHES, RELIABILITY_INCHES), dpi=DPI)
    full = [b for b in bins if b["count"]]
    width = bins[0]["hi"] - bins[0]["lo"]
    ax.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar([b["lo"] for b in full], [b["confidence"] - b["accuracy"] for b in full], width=width,
           bottom=[b["accuracy"] for b in full], align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title}: ECE = {100 * ece:.2f}%")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    k, side = len(classes), confusion_inches(len(classes))
    fig, ax = plt.subplots(figsize=(side, side), dpi=DPI)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)  # fraction of each true class
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    font = max(4, min(9, 120 // k))
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    if k <= 30:
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=font,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def evaluate_phase(run: FinishedRun, which: Phase, images: np.ndarray, labels: np.ndarray,
                   out: Path, data: str, batch_size: int, device: str) -> dict[str, Any]:
    """metrics.json, reliability.png and confusion.png of one phase in `out`."""
    model = run.model(which, device)
    logits = predict_logits(model, images, run.mean, run.std, batch_size, device)  # [N, K]
    target = torch.from_numpy(labels)
    k = len(run.classes)
    metrics = classification_metrics(logits, target, k)
    bins = reliability_bins(logits.float().softmax(1), target)
    matrix = confusion_matrix(logits.argmax(1).numpy(), labels, k)
    record = {"run": str(run.root), "phase": phase_name(which), "weights": str(run.phase(which)[1]),
              "data": data, **metrics, "classes": run.classes, "reliability": bins,
              "confusion": matrix.tolist()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    title = f"{phase_name(which)} ({data})"
    plot_reliability(bins, float(metrics["ece"]), out / "reliability.png", title)
    plot_confusion(matrix, run.classes, out / "confusion.png", title)
    print(f"{phase_name(which)}: top-1 {100 * metrics['top1']:.2f}%, top-5 "
          f"{100 * metrics['top5']:.2f}%, ECE {100 * metrics['ece']:.2f}%, NLL "
          f"{metrics['nll']:.4f} on {metrics['n']} images -> {out}")
    return record


def robustness(run: FinishedRun, phases: list[Phase], images: np.ndarray, labels: np.ndarray,
               severities: list[int], batch_size: int, device: str, seed: int) -> dict[str, Any]:
    """E(m, c, s) per phase m, corruption c, severity s; CE_c = sum_s E(m, c, s) /
    sum_s E(teacher, c, s); mCE = mean_c CE_c (CE_c is None where the teacher makes no error)."""
    names = ["teacher", *(p for p in phases if p != "teacher")]
    models = {phase_name(p): run.model(p, device) for p in names}
    errors: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}

    def error_rate(model: torch.nn.Module, x: np.ndarray) -> float:
        logits = predict_logits(model, x, run.mean, run.std, batch_size, device)  # [N, K]
        return float((logits.argmax(1).numpy() != labels).mean())

    clean = {m: error_rate(model, images) for m, model in models.items()}
    for c in corruptions.CORRUPTIONS:
        for s in severities:
            corrupted = corruptions.corrupt(images, c, s, seed=seed)  # [N, H, W, C]
            for m, model in models.items():
                errors[m].setdefault(c, {})[str(s)] = error_rate(model, corrupted)
    result: dict[str, Any] = {"baseline": "teacher", "severities": severities, "n": len(labels),
                              "seed": seed, "phases": {}}
    for m in models:  # the teacher (the baseline) first
        ce, mce = corruptions.corruption_errors(errors[m], errors["teacher"])
        result["phases"][m] = {"clean_error": clean[m], "errors": errors[m], "ce": ce, "mce": mce}
    return result


def _fail(message: str) -> NoReturn:
    print(f"evaluate: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a run directory, or a weights file / folder in one")
    p.add_argument("--round", dest="which", type=parse_round, metavar="K|teacher|last|all",
                   help="K, teacher, last or all (default: the one the path names, else last)")
    p.add_argument("--images", type=Path, help="one sub-folder per class (default: test set)")
    p.add_argument("--out", type=Path, help="output folder (default: <run>/evaluation/...)")
    p.add_argument("--robustness", action="store_true", help="corruption errors, CE and mCE")
    p.add_argument("--severities", type=int, nargs="+", choices=corruptions.SEVERITIES,
                   default=list(corruptions.SEVERITIES), help="default: %(default)s")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--seed", type=int, default=0, help="corruption seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.error = lambda message: _fail(f"{message} (see --help)")  # type: ignore[method-assign]
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # bad arguments (one line, code 2) and --help (0)
        return int(e.code or 0)
    try:
        return evaluate(args)
    except (NoisyStudentError, UsageError, BadFile) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    if not args.path.exists():
        raise UsageError(f"{args.path}: no such file or directory")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    run = open_run(args.path)
    named = phase_of_path(run, args.path)
    if named is not None and args.which not in (None, named):
        raise UsageError(f"{args.path} is {phase_name(named)}'s, but --round {args.which} was "
                         "given; give one of the two")
    phases = select_phases(run, args.which if args.which is not None else
                           (named if named is not None else "last"))
    if args.images is not None:
        images, labels = read_folder(args.images, run)
        data, suffix = str(args.images), f"_{args.images.resolve().name}"
    else:
        test = run.splits().test
        if test.labels is None:
            raise UsageError(f"{run.root}: the recipe's test set has no labels")
        images, labels, data, suffix = test.images[:args.limit], test.labels, "test", ""
    images, labels = np.asarray(images[:args.limit]), np.asarray(labels[:args.limit], np.int64)
    base = args.out or run.root / "evaluation"

    def folder(which: Phase) -> Path:  # --out names the folder of a single phase
        single = len(phases) == 1 and args.out is not None
        return base if single else base / f"{phase_name(which)}{suffix}"

    for which in phases:
        evaluate_phase(run, which, images, labels, folder(which), data, args.batch_size,
                       args.device)
    if args.robustness:
        result = robustness(run, phases, images, labels, sorted(set(args.severities)),
                            args.batch_size, args.device, args.seed)
        target = (folder(phases[0]) / "robustness.json" if len(phases) == 1 else
                  base / f"robustness{suffix}.json")
        target.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\ncorruption error CE (%; the teacher = 100) on {len(labels)} images, "
              f"severities {result['severities']}:")
        print(corruptions.robustness_table(result))
        print(f"-> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
