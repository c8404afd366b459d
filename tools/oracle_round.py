"""What a round's student reaches when its pseudo-labels are perfect, or partly corrected.

    python tools/oracle_round.py RUN K --out NEW [--fix F] [--set KEY=VALUE ...]

For a run whose unlabeled images have hidden labels (digits, Fashion-MNIST): links RUN's
teacher and rounds < K into NEW (RUN is left as it was), writes round K's pseudo-labels as the
hidden labels (every unlabeled image kept, confidence 1; one-hot when the run learns soft
labels) and trains round K's student as the run's config says: the same teacher weights to warm
start from, noise, epochs and loss. Its validation top-1 beside RUN's own round-K student splits
what the labels cost from what the round's budget (network, epochs) allows: when even perfect
labels leave the student short of a target, better pseudo-labels alone cannot reach it.

With `--fix F` (0 <= F < 1) the labels are the teacher's, with a random fraction F of its wrong
ones corrected (drawn with the run's seed): a few values of F trace the student's accuracy
against its labels' accuracy, and so how accurate the labels must be to reach a target.

With `--set KEY=VALUE` (repeatable) round K's student trains with those settings instead, e.g.
`--set train.epochs=16`: what a larger round budget would buy, with the same labels.

With `--results benchmarks/results.json` the row (beside the run's own round K, with the commit)
goes into BENCHMARKS.md's headroom table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from noisy_student.artifacts import open_run
from noisy_student.checkpoint import load_json, load_npz, save_json, save_npz
from noisy_student.errors import NoisyStudentError
from noisy_student.loop import run
from noisy_student.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def oracle_labels(arrays: dict[str, np.ndarray], truth: np.ndarray, fix: float = 1.0,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A round's `pseudo_labels.npz` arrays with every unlabeled image kept and labeled by the
    teacher, `fix` of its wrong labels (a random draw, all when 1) replaced by the hidden ones;
    the identity (teacher, settings) in `meta` is kept, so the loop takes them as the round's."""
    meta = json.loads(str(arrays["meta"]))
    soft = "soft_probs" in arrays or bool(meta.pop("soft_parts", None))
    labels = np.asarray(arrays["predicted"], dtype=np.int64).copy()
    wrong = np.flatnonzero(labels != truth)
    fixed = np.random.default_rng(seed).permutation(wrong)[:round(fix * len(wrong))]
    labels[fixed] = truth[fixed]
    n = len(truth)
    out = {"indices": np.arange(n, dtype=np.int64), "predicted": labels,
           "confidence_all": np.ones(n, np.float32), "meta": np.array(json.dumps(meta))}
    if soft:
        out["soft_probs"] = np.eye(int(meta["num_classes"]), dtype=np.float32)[labels]
    return out


def oracle_round(run_dir: str | Path, k: int, out: str | Path, fix: float = 1.0,
                 overrides: list[str] = ()) -> dict:
    """Train round k of `run_dir` again in `out` with perfect labels (`fix` of the teacher's
    wrong ones corrected), with the config `overrides` if any; returns the new run's
    summary."""
    if not 0 <= fix <= 1:
        raise NoisyStudentError(f"--fix {fix}: a fraction of the wrong labels, 0 to 1")
    source = open_run(run_dir)
    config = replace(source.config, rounds=k + 1, out=str(out)).with_overrides(overrides)
    truth = source.splits().unlabeled.labels
    if truth is None:
        raise NoisyStudentError(f"{source.root}: its unlabeled images have no hidden labels")
    labels = source.root / f"round_{k}" / "pseudo_labels.npz"
    src = RunDir(source.root)
    finished = all(src.is_done(f) for f in [src.teacher, *map(src.round, range(k))])
    if not labels.is_file() or not finished:
        raise NoisyStudentError(f"{source.root}: round {k} has no pseudo-labels, or a round "
                                "before it is unfinished")
    target = RunDir(out)
    target.create()  # refuses a directory that holds a run
    target.copy_from(src, ["splits.json", "teacher", *(f"round_{j}" for j in range(k))])
    target.round(k).mkdir()
    save_npz(target.round(k) / "pseudo_labels.npz",
             oracle_labels(load_npz(labels), truth, fix, source.config.seed + k))
    save_json(target.root / "config.json", config.to_dict())
    return run(config, resume=True)


def headroom_row(run_dir: str | Path, k: int, fix: float, summary: dict,
                 overrides: list[str] = ()) -> dict:
    """The new student's figures beside the run's own round k (None where it has none)."""
    source = open_run(run_dir)
    new = summary["rounds"][-1]
    own = next((r for r in load_json(source.root / "summary.json", dict).get("rounds", [])
                if r.get("round") == k), {})
    return {"dataset": source.config.data.source, "seed": source.config.seed, "round": k,
            "fix": fix, "overrides": list(overrides), "labels": new["pseudo_label_accuracy"],
            "student_val": new.get("student_val_top1"), "student_test": new["student_top1"],
            "run_labels": own.get("pseudo_label_accuracy"),
            "run_student_val": own.get("student_val_top1"),
            "run_student_test": own.get("student_top1"), "minutes": new["seconds"] / 60}


def record(results: Path, row: dict, argv: list[str]) -> None:
    """Add `row` to the results JSON's headroom rows (one per data set, seed, round and
    fraction: a later one replaces it) and regenerate the report."""
    import benchmark

    rows = (load_json(results, dict) if results.is_file() else {}).get("headroom", {})
    key = " ".join([f"{row['dataset']} seed {row['seed']} round {row['round']} fix {row['fix']:g}",
                    *row.get("overrides", [])])
    rows = {**rows.get("rows", {}), key: {**row, "provenance": benchmark.provenance()}}
    command = shlex.join(["python", "tools/oracle_round.py", *argv])
    benchmark.merge_and_report(results, "headroom", {"rows": rows}, command)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run directory whose round K has pseudo-labels")
    p.add_argument("round", type=int, help="the round K to train again with perfect labels")
    p.add_argument("--out", required=True, help="a new run directory for it")
    p.add_argument("--fix", type=float, default=1.0,
                   help="correct only this fraction of the teacher's wrong labels (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="train the round's student with this setting instead (repeatable)")
    p.add_argument("--results", type=Path,
                   help="add the row to this results JSON and regenerate its report "
                        "(benchmarks/results.json: BENCHMARKS.md; else a .md beside it)")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    if a.results:
        sys.path.insert(0, str(ROOT / "tools"))
        import bench_runs
        bench_runs.code_state()  # the code as it is now, before the hour of training
    try:
        summary = oracle_round(a.run, a.round, a.out, a.fix, a.overrides)
        row = headroom_row(a.run, a.round, a.fix, summary, a.overrides)
    except NoisyStudentError as e:
        print(f"oracle_round: {e}", file=sys.stderr)
        return 2
    print(json.dumps(row, indent=1))
    if a.results:
        record(a.results, row, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
