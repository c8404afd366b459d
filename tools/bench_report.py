"""BENCHMARKS.md and the accuracy-per-round plot, written from the benchmark results JSON."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGETS = {"train_step": 1.10, "inference": 1.10}  # framework / bare at most
WAIT_TARGET = 0.10  # share of a training run spent waiting for noised batches


@dataclass(frozen=True)
class QualityTarget:
    """What a data set's recipe is asked for (issue 24), judged on the report seeds' mean: the
    final student against labels-only on the same split."""
    gap_closed: float | None = None  # at least this share of the gap to full supervision ...
    minutes: float | None = None  # ... with every seed's whole recipe in at most this long
    stretch_gain: float | None = None  # the stretch: a gain of at least this (top-1)
    gain_sds: float | None = None  # a gain above this many standard deviations over seeds


QUALITY_TARGETS = {"fashion_mnist": QualityTarget(gap_closed=0.60, minutes=45.0,
                                                  stretch_gain=0.05),
                   "digits": QualityTarget(gain_sds=2.0)}
CONVERGED = 0.002  # a ceiling trained twice as long moves less than this: converged


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def made_by(result: dict[str, Any], current: str | None) -> str:
    """The commit that made a figure, marked when the package has changed since (`current`: the
    package code now) or when the tree was dirty."""
    p = result.get("provenance")
    if p is None:
        return "unrecorded (older code)"
    text = (p.get("commit") or "unknown")[:8] + (" (dirty)" if p.get("dirty") else "")
    if current is not None and p.get("package_code") != current:
        text += " (older code)"
    return text


def minutes(result: dict[str, Any]) -> str:
    """A run's minutes, saying when its torch threads were fewer than the machine's cores (run
    beside another job: its minutes are not the recipe's on an idle machine)."""
    m = result.get("provenance", {}).get("machine", {})
    threads, cores = m.get("torch_threads"), m.get("cores")
    slow = threads is not None and cores is not None and threads < cores
    return f"{result['seconds'] / 60:.1f}" + (f" ({threads} of {cores} cores)" if slow else "")


def mean_std(s: dict[str, float], scale: float = 100.0) -> str:
    if s["n"] == 1:
        return f"{scale * s['mean']:.2f}"
    return f"{scale * s['mean']:.2f} ± {scale * s['std']:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def quality_section(name: str, q: dict[str, Any], current: str | None = None,
                    headroom: list[dict[str, Any]] = (),
                    longer: dict[str, Any] | None = None) -> list[str]:
    s, seeds = q["summary"], q["seeds"]
    first = seeds[0]
    used = q.get("summary_seeds", [x["seed"] for x in seeds])
    lines = [f"### {name}", "",
             f"{first['labeled']:,} labeled, {first.get('validation', 0):,} validation, "
             f"{first['unlabeled']:,} unlabeled, {first['test']:,} test images; final "
             f"architecture `{first['model']}`; "
             + (f"seed {used[0]}." if len(used) == 1 else
                f"seeds {', '.join(map(str, used))} (mean ± standard deviation).")
             + (" Report seeds: never used for a choice." if all(
                 x["role"] == "report" for x in seeds if x["seed"] in used) else
                " **Tuning seeds only: no untouched seed yet.**"), ""]
    header = ["labels-only", "round 0 teacher",
              *(f"round {r['round']} student" for r in s["rounds"]), "fully supervised",
              "gain", "gap closed"]
    row = [mean_std(s["labels_only"]), mean_std(s["teacher"]),
           *(mean_std(r["student_top1"]) for r in s["rounds"]), mean_std(s["supervised"]),
           mean_std(s["gain"]) + " pts",
           mean_std(s["gap_closed"]) + " %" if "gap_closed" in s else "-"]
    lines += ["Test top-1 (%):", "", *table(header, [row])]
    lines += _target(name, s, [x for x in seeds if x["seed"] in used])
    lines += ["Pseudo-label accuracy on the kept unlabeled images (%), per round: "
              + ", ".join(mean_std(r["pseudo_label_accuracy"]) for r in s["rounds"]) + ".", ""]
    lines += _where_it_stops(s, QUALITY_TARGETS.get(name), headroom, longer)
    per = [[f"{x['seed']} ({x['role']})", pct(x["labels_only"]["top1"]),
            pct(x["noisy_student"]["teacher_top1"]),
            " / ".join(pct(r["student_top1"]) for r in x["noisy_student"]["rounds"]),
            pct(x["noisy_student"].get("final_val_top1")), pct(best_ceiling(x)["top1"]),
            f"{x['labels_only']['steps']} x {x['labels_only']['batch']}",
            f"{best_ceiling(x)['steps']} x {best_ceiling(x)['batch']}",
            minutes(x["noisy_student"]),
            made_by(x["noisy_student"], current)] for x in seeds]
    lines += table(["seed", "labels-only", "teacher", "students by round (test)",
                    "final student (validation)", "supervised", "labels-only steps x batch",
                    "supervised steps x batch", "NS minutes", "commit"], per)
    return lines + _ceiling(seeds, current)


def variants_section(variants: dict[str, Any], current: str | None = None) -> list[str]:
    """The recipe changed (`benchmark.py quality --set ... --name`) or as it is on other seeds
    (`--name` alone), per data set: a row per variant, the recipe's rows first, with the same
    figures as the headline's; what a variant's gap is measured to when that is another
    network's ceiling; and each changed variant against the recipe on the same seeds."""
    by_dataset: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, datasets in sorted(variants.items(), key=lambda v: (
            any(q.get("changes") for q in v[1].values()), v[0])):
        for dataset, q in datasets.items():
            by_dataset.setdefault(dataset, []).append((name, q))
    lines = []
    for dataset, rows in by_dataset.items():
        said = [_variant_row(name, q, current) for name, q in rows]
        texts = [note for _, note in said] + [_against_recipe(n, q, rows) for n, q in rows]
        lines += [f"### {dataset}", "", *table(
            ["variant", "changes to the recipe", "seeds", "final network", "labels-only",
             "round 0 teacher", "final student (validation)", "final student (test)",
             "fully supervised", "gain", "gap closed", "NS minutes", "commit"],
            [row for row, _ in said]),
            *(line for text in texts if text for line in (text, ""))]
    return lines


def _summary_seeds(q: dict[str, Any]) -> list[dict[str, Any]]:
    """The seeds a quality result's summary is over (all of them when it does not say)."""
    used = q.get("summary_seeds")
    return [x for x in q["seeds"] if used is None or x["seed"] in used]


def _variant_row(name: str, q: dict[str, Any], current: str | None) -> tuple[list[str], str]:
    """A variant's row, and a note when its gap is measured to another network's ceiling."""
    s, seeds = q["summary"], _summary_seeds(q)
    model = seeds[0]["model"]
    others = ", ".join(f"`{m}`" for m in sorted(
        {x.get("ceiling_model", model) for x in seeds} - {model}))
    closed = mean_std(s["gap_closed"]) + " %" if "gap_closed" in s else "-"
    note = ""
    if others:
        closed += f" (to {others}'s ceiling)"
        note = (f"\"{name}\" measures its gap to the ceiling of {others}, not of its own "
                f"network `{model}` (not trained: hours on this machine): were its own higher, "
                "the share closed would be lower.")
    return [name, " ".join(f"`{c}`" for c in q.get("changes", [])) or "(none)",
            ", ".join(f"{x['seed']} ({x['role']})" for x in seeds), f"`{model}`",
            mean_std(s["labels_only"]), mean_std(s["teacher"]),
            mean_std(s["noisy_student_val"]) if "noisy_student_val" in s else "-",
            mean_std(s["noisy_student"]), mean_std(s["supervised"]),
            mean_std(s["gain"]) + " pts", closed,
            " / ".join(minutes(x["noisy_student"]) for x in seeds),
            ", ".join(made_by(x["noisy_student"], current) for x in seeds)], note


def _against_recipe(name: str, q: dict[str, Any],
                    rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A changed variant against the recipe's row (no changes) on the same seeds: the final
    student on validation and test, the share of the gap, and the minutes, as ratios."""
    seeds = [x["seed"] for x in _summary_seeds(q)]
    base = next((b for _, b in rows if not b.get("changes")
                 and [x["seed"] for x in _summary_seeds(b)] == seeds), None)
    if not q.get("changes") or base is None:
        return ""
    s, b = q["summary"], base["summary"]

    def points(key: str) -> str:
        return f"{100 * (s[key]['mean'] - b[key]['mean']):+.2f}"

    def total(x: dict[str, Any]) -> float:
        return sum(y["noisy_student"]["seconds"] for y in _summary_seeds(x))
    shared = [k for k in ("noisy_student_val", "noisy_student", "gap_closed")
              if k in s and k in b]
    what = {"noisy_student_val": "final student on validation",
            "noisy_student": "on test", "gap_closed": "share of the gap"}
    return (f"\"{name}\" against the recipe on the same seeds ({', '.join(map(str, seeds))}): "
            + ", ".join(f"{what[k]} {points(k)} points" for k in shared)
            + f", in {total(q) / total(base):.2f} times the minutes.")


def _target(name: str, s: dict[str, Any], seeds: list[dict[str, Any]]) -> list[str]:
    """The target's verdict, each part with the figure it was judged on."""
    goal = QUALITY_TARGETS.get(name)
    if goal is None or "gain" not in s:
        return []
    gain, lines = s["gain"], []
    if goal.gap_closed is not None and "gap_closed" in s:
        closed = s["gap_closed"]["mean"]
        worst = max(x["noisy_student"]["seconds"] / 60 for x in seeds)
        met = closed >= goal.gap_closed and (goal.minutes is None or worst <= goal.minutes)
        within = (f", every seed's whole recipe in at most {goal.minutes:.0f} minutes"
                  if goal.minutes is not None else "")
        lines += [f"Target: at least {100 * goal.gap_closed:.0f}% of the gap closed (mean over "
                  f"seeds){within}: {_ok(met)} ({100 * closed:.1f}% closed, the longest seed "
                  f"{worst:.1f} minutes).", ""]
        gap = s["supervised"]["mean"] - s["labels_only"]["mean"]
        if gap > 0:
            lines += [f"The gap to full supervision is {100 * gap:.2f} points: "
                      f"{100 * goal.gap_closed:.0f}% of it is a gain of "
                      f"{100 * goal.gap_closed * gap:.2f} points.", ""]
    if goal.stretch_gain is not None:
        lines += [f"Stretch: a gain of at least {100 * goal.stretch_gain:.0f} points: "
                  f"{_ok(gain['mean'] >= goal.stretch_gain)} ({100 * gain['mean']:+.2f}).", ""]
    if goal.gain_sds is not None and gain["n"] > 1:
        bar = goal.gain_sds * gain["std"]
        lines += [f"Target: a gain above {goal.gain_sds:g} standard deviations over seeds: "
                  f"{_ok(gain['mean'] > bar)} ({100 * gain['mean']:+.2f} against "
                  f"{100 * bar:.2f}).", ""]
    return lines


def _where_it_stops(s: dict[str, Any], goal: QualityTarget | None = None,
                    headroom: list[dict[str, Any]] = (),
                    longer: dict[str, Any] | None = None) -> list[str]:
    """What limits the gain, measured: how much each round's pseudo-labels improve on the last
    round's, and how far the final student ends under its own pseudo-labels' accuracy. With a
    share-of-the-gap target not met: how accurate the labels would have to be to meet it, read
    off the headroom rows (`tools/oracle_round.py`) when there are some, else for a student
    ending as far under them as now, and for the rows that trained the round with other settings
    (more epochs), what those would need; and with `longer` (`longest_ablation`), what more
    rounds bought, and how many more the labels would need at that pace."""
    rounds = s["rounds"]
    if len(rounds) < 2:
        return []
    accuracy = [r["pseudo_label_accuracy"]["mean"] for r in rounds]
    steps = ", ".join(f"{100 * (b - a):+.2f}" for a, b in zip(accuracy, accuracy[1:]))
    final = rounds[-1]["student_top1"]["mean"]
    under = accuracy[-1] - final
    lines = [f"Where it stops: each round's pseudo-labels are {steps} points more accurate than "
             f"the round before's; the final student's test top-1 is {100 * under:.2f} points "
             "under the accuracy of the pseudo-labels it learned from (on the kept unlabeled "
             "images)."]
    labels_needed = None
    if goal is not None and goal.gap_closed is not None and "supervised" in s:
        base = s["labels_only"]["mean"]
        needed = base + goal.gap_closed * (s["supervised"]["mean"] - base)
        as_run = [r for r in headroom if not r.get("overrides")]
        if final < needed and as_run:
            said, labels_needed = _labels_needed(as_run, needed, goal.gap_closed)
            lines.append(said + _above_ceiling(labels_needed, s["supervised"]["mean"]))
        elif final < needed:
            lines.append(f"A student as far under its labels needs labels "
                         f"{pct(needed + under)}% accurate to reach {pct(needed)}% "
                         f"({100 * goal.gap_closed:.0f}% of the gap): "
                         f"{100 * (needed - final):.2f} points above the last round's.")
        if final < needed:
            lines += _other_settings([r for r in headroom if r.get("overrides")], needed,
                                     goal.gap_closed, s["supervised"]["mean"])
    if longer is not None:
        lines.append(_more_rounds(longer, labels_needed))
    return [" ".join(lines), ""]


def _labels_needed(headroom: list[dict[str, Any]], needed: float,
                   share: float) -> tuple[str, float | None]:
    """How accurate one round's labels must be for its student to reach `needed` (test), by
    linear interpolation between the measured points of the round with the most headroom rows:
    its own labels and student, then the corrected ones. The sentence, and the accuracy (None
    when no measured point reaches `needed`)."""
    def where(r: dict[str, Any]) -> tuple[int, int]:
        return r["seed"], r["round"]
    seed, k = max({where(r) for r in headroom}, key=lambda w: (
        sum(where(r) == w for r in headroom), w[1]))
    rows = [r for r in headroom if where(r) == (seed, k)]
    points = sorted(p for p in [(rows[0]["run_labels"], rows[0]["run_student_test"]),
                                *((r["labels"], r["student_test"]) for r in rows)]
                    if None not in p)
    said = (f"Measured (headroom table, seed {seed}, round {k}): its student's test top-1 goes "
            f"from {pct(points[0][1])}% on its own {pct(points[0][0])}%-accurate labels to "
            f"{pct(points[-1][1])}% on {pct(points[-1][0])}%-accurate ones")
    at = _labels_for(points, needed)
    if at is None:
        return f"{said}: short of {pct(needed)}% ({100 * share:.0f}% of the gap) on all of them.", None
    return (f"{said}: {pct(needed)}% ({100 * share:.0f}% of the gap) needs labels about "
            f"{pct(at)}% accurate."), at


def _labels_for(points: list[tuple[float, float]], needed: float) -> float | None:
    """The labels' accuracy at which the student's test top-1 reaches `needed`, by linear
    interpolation between sorted (labels, student) points; None when none reaches it (the
    first point when it already does)."""
    if points and points[0][1] >= needed:
        return points[0][0]
    for (a, ya), (b, yb) in zip(points, points[1:]):
        if ya < needed <= yb:
            return a + (needed - ya) * (b - a) / (yb - ya)
    return None


def _other_settings(headroom: list[dict[str, Any]], needed: float, share: float,
                    ceiling: float) -> list[str]:
    """A sentence per setting the headroom rows trained a round with (`--set`, e.g. more
    epochs): the student's test top-1 on each of its labels, the labels `needed` would take
    with it, and whether a teacher of the network could make them (`_above_ceiling`)."""
    said = []
    for what in sorted({(r["seed"], r["round"], tuple(r["overrides"])) for r in headroom}):
        rows = sorted((r for r in headroom
                       if (r["seed"], r["round"], tuple(r["overrides"])) == what),
                      key=lambda r: r["labels"])
        points = [(r["labels"], r["student_test"]) for r in rows]
        at = _labels_for(points, needed)
        minutes = max(r["minutes"] for r in rows)
        reach = (f"short of {pct(needed)}% on all of them" if at is None else
                 f"{pct(needed)}% ({100 * share:.0f}% of the gap) needs labels about "
                 f"{pct(at)}% accurate")
        said.append(
            f"With {', '.join(f'`{o}`' for o in what[2])} (seed {what[0]}, round {what[1]} "
            f"trained again, {minutes:.1f} minutes): its student's test top-1 is "
            + ", ".join(f"{pct(y)}% on {pct(x)}%-accurate labels" for x, y in points)
            + f"; {reach}." + _above_ceiling(at, ceiling))
    return said


def _above_ceiling(labels: float | None, ceiling: float) -> str:
    """When the labels a target needs are more accurate than the network trained on every
    label is on test (the ceiling), a sentence saying so: a teacher of that network would not
    make them."""
    if labels is None or labels <= ceiling:
        return ""
    return (f" Those labels are {100 * (labels - ceiling):.2f} points more accurate than the same "
            f"network trained on every label is on test ({pct(ceiling)}%): a teacher of this "
            "network would not make them.")


def longest_ablation(a: dict[str, Any], current: str | None = None) -> dict[str, Any] | None:
    """The ablation variant that continued the recipe's run for the most rounds (its first
    rounds the recipe's own), with its name, commit (`made_by`) and the recipe's seed, rounds
    and seconds; or None."""
    recipe = a.get("recipe")
    if not recipe:
        return None
    n, own = len(recipe["rounds"]), round_figures(recipe["rounds"])
    longer = [{**v, "name": name, "made_by": made_by(v, current), "seed": recipe["seed"],
               "recipe_rounds": n, "recipe_seconds": recipe["seconds"]}
              for name, v in a.items() if name != "recipe" and len(v.get("rounds", [])) > n
              and round_figures(v["rounds"][:n]) == own]
    return max(longer, key=lambda v: len(v["rounds"]), default=None)


def round_figures(rounds: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    """Each round's figures of quality (not its timing, which differs between two runs of the
    same training): test and validation top-1, the labels' accuracy."""
    return [(r["student_top1"], r.get("student_val_top1"), r["pseudo_label_accuracy"])
            for r in rounds]


def _rounds(n: int) -> str:
    return f"{n} round{'s' * (n != 1)}"


def _more_rounds(v: dict[str, Any], labels_needed: float | None, pace_over: int = 3) -> str:
    """What a variant that continued the recipe's run bought with its extra rounds (labels'
    accuracy, the student on validation, minutes), and, when the labels a target needs are
    known, how many more rounds they are at the pace of its last `pace_over` rounds, were that
    pace to hold."""
    n, rounds = v["recipe_rounds"], v["rounds"]
    labels = [r["pseudo_label_accuracy"] for r in rounds]
    added = len(rounds) - n
    extra = (v["seconds"] - v["recipe_seconds"]) / 60
    said = (f"More rounds, measured (ablation \"{v['name']}\", seed {v['seed']}: the recipe's "
            f"run continued for {_rounds(added)} more, {extra:.1f} minutes, commit {v['made_by']}): its "
            f"pseudo-labels go from {pct(labels[n - 1])}% after round {n - 1} to "
            f"{pct(labels[-1])}% after round {len(rounds) - 1} ("
            + ", ".join(f"{100 * (b - a):+.2f}" for a, b in zip(labels[n - 1:], labels[n:]))
            + f" a round), its student on validation from {pct(rounds[n - 1]['student_val_top1'])}"
            f"% to {pct(rounds[-1]['student_val_top1'])}%.")
    if labels_needed is None or labels[-1] >= labels_needed:
        return said
    over = min(pace_over, len(labels) - 1)
    pace = (labels[-1] - labels[-1 - over]) / over
    if pace <= 0:
        under = labels[-1] - rounds[-1]["student_val_top1"]
        still = (f", and its student ends {100 * under:.2f} points under them on validation"
                 if under > 0 else "")
        return (f"{said} Its labels stopped improving over its last {_rounds(over)}{still}: more "
                f"rounds alone do not bring the {pct(labels_needed)}% the target needs.")
    more = math.ceil((labels_needed - labels[-1]) / pace)
    return (f"{said} Were the pace of its last {_rounds(over)} to hold "
            f"({100 * pace:+.2f} points a round), labels {pct(labels_needed)}% accurate would be "
            f"{more} rounds further: about {more * extra / added / 60:.1f} more hours on this "
            "machine.")


def best_ceiling(seed: dict[str, Any]) -> dict[str, Any]:
    """The fully supervised run the gap is measured to: the better of the ceiling and the same
    trained twice as long."""
    runs = [seed["supervised"], seed.get("supervised_longer") or seed["supervised"]]
    return max(runs, key=lambda r: r["top1"])


def _ceiling(seeds: list[dict[str, Any]], current: str | None = None) -> list[str]:
    """Whether the fully supervised ceiling has converged: trained twice as long, it moves less
    than CONVERGED, on average over the ceilings measured (one per seed, or one shared): a
    small test set (digits: one image is 0.19 points) resolves the mean of several."""
    checks = {x.get("ceiling_seed", x["seed"]): x for x in seeds if x.get("supervised_longer")}
    if not checks:
        return ["No convergence check of the ceiling yet.", ""]
    lines, moves = [], []
    for seed, x in sorted(checks.items()):
        longer = x["supervised_longer"]
        moves.append(longer["top1"] - x["supervised"]["top1"])
        settings = ", ".join(f"`{o}`" for o in x["supervised"].get("overrides", []))
        lines.append(f"Ceiling, seed {seed}{', trained with ' + settings if settings else ''}: "
                     f"fully supervised {pct(x['supervised']['top1'])}"
                     f"% after {x['supervised']['epochs']} epochs, {pct(longer['top1'])}% after "
                     f"{longer['epochs']} ({100 * moves[-1]:+.2f} points)"
                     + (f", made at {made_by(longer, current)}." if "provenance" in longer
                        else "."))
    move = statistics.fmean(moves)
    shared = len(checks) == 1 and len(seeds) > 1
    lines += ["", (f"One ceiling, seed {next(iter(checks))}'s, serves every seed (the seeds' "
                   "training pools differ only in their validation images). " if shared else "")
              + (f"Mean move over {len(moves)} ceilings: {100 * move:+.2f} points: "
                 if len(moves) > 1 else "")
              + ("converged" if abs(move) < CONVERGED else
                 f"**not converged** (moves {100 * CONVERGED:.1f} points or more): the gap is "
                 "measured to the better of the two, and the share closed is an upper bound")
              + "."]
    return lines + [""]


def _verdict(points: float, spread: float | None) -> str:
    """Whether a change of `points` in the final student hurts, read against the seeds'
    standard deviation `spread` (a fraction) when there is one: a loss within two of them is
    not called one."""
    if points >= 0:
        return "does not hurt"
    if spread is not None and -points <= 2 * 100 * spread:
        return "lower, within two of the seeds' standard deviations: unclear"
    return "hurts"


def ablation_section(name: str, a: dict[str, Any], spread: float | None = None,
                     current: str | None = None) -> list[str]:
    """The variants against the recipe, and whether the paper's finding (removing noise hurts)
    holds here, read on validation (test when a run has none). `spread`: the final student's
    standard deviation over the quality seeds on the same set, the scale against which one
    seed's differences are read."""
    key = "final_val_top1" if a["recipe"].get("final_val_top1") is not None else "final_top1"
    base = a["recipe"][key]
    round_key = "student_val_top1" if key == "final_val_top1" else "student_top1"
    rows = []
    for variant, r in sorted(a.items(), key=lambda item: item[0] != "recipe"):
        label = "the recipe" if variant == "recipe" else variant
        same = " (= the recipe)" if r.get("same_as_recipe") else ""
        rows.append([label + same, pct(r.get("final_val_top1")),
                     "" if variant == "recipe" else f"{100 * (r[key] - base):+.2f}",
                     " / ".join(pct(x.get(round_key)) for x in r["rounds"]),
                     " / ".join(pct(x["pseudo_label_accuracy"]) for x in r["rounds"]),
                     minutes(r), made_by(r, current)])
    on = "validation" if key == "final_val_top1" else "test (a run without validation)"
    lines = [f"### Ablations: {name} (seed {a['recipe'].get('seed', 0)}, read on {on})", "",
             *table(["variant", "final student (validation)", "vs recipe (pts)",
                     f"students by round ({on.split()[0]})", "pseudo-label accuracy by round",
                     "minutes (a variant: its students; more rounds: all)", "commit"], rows)]
    noise = {v: 100 * (a[v][key] - base) for v in ("no input noise", "no model noise") if v in a}
    if noise:
        parts = [f"{v} {d:+.2f} pts ({_verdict(d, spread)})" for v, d in noise.items()]
        lines += [f"The paper's finding, that removing noise hurts, on {on.split()[0]}: "
                  f"{'; '.join(parts)}."
                  + (f" One seed each; the final student's standard deviation over the quality "
                     f"seeds is {100 * spread:.2f} points." if spread is not None else ""), ""]
    return lines + _where_the_chain_settles(a, key, spread)


def _where_the_chain_settles(a: dict[str, Any], key: str, spread: float | None) -> list[str]:
    """Where every run of one ablation table ends, once there are three variants or more: how
    far the final students land from the recipe's (against the seeds' standard deviation), the
    accuracy of the last round's pseudo-labels, and how far each final student ends under its
    own labels. Levers that all land in a narrow band, with labels that converge whatever the
    start, mark a fixed point of the chain rather than a lack of compute."""
    runs = {v: r for v, r in a.items() if not r.get("same_as_recipe") and r.get(key) is not None
            and r.get("rounds")}
    moves = [100 * (r[key] - a["recipe"][key]) for v, r in runs.items() if v != "recipe"]
    if len(moves) < 3:
        return []
    labels = {v: r["rounds"][-1]["pseudo_label_accuracy"] for v, r in runs.items()}
    under = [100 * (labels[v] - r[key]) for v, r in runs.items()]
    return [f"Where the chain settles: the {len(moves)} variants move the final student "
            f"{min(moves):+.2f} to {max(moves):+.2f} points from the recipe's"
            + (f" (the quality seeds' standard deviation: {100 * spread:.2f})"
               if spread is not None else "")
            + f"; their last round's pseudo-labels are {pct(min(labels.values()))} to "
            f"{pct(max(labels.values()))}% accurate on the images kept (the recipe's "
            f"{pct(labels['recipe'])}%), and a final student's top-1 ends a median "
            f"{statistics.median(under):.2f} points under the accuracy of its own labels.", ""]


def tuning_section(ablations: dict[str, dict[str, Any]]) -> list[str]:
    """Per data set, each variant run on two or more tuning seeds against the recipe of the same
    seed: the paired difference of the final student's validation top-1, seed by seed and as a
    mean ± standard deviation."""
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for key, a in ablations.items():
        by_dataset.setdefault(key.split(",")[0], []).append(a)
    lines = []
    for dataset, runs in by_dataset.items():
        diffs: dict[str, dict[int, float]] = {}
        for a in runs:
            base = a["recipe"].get("final_val_top1")
            for variant, r in a.items():
                if (variant != "recipe" and not r.get("same_as_recipe") and base is not None
                        and r.get("final_val_top1") is not None):
                    diffs.setdefault(variant, {})[a["recipe"]["seed"]] = 100 * (
                        r["final_val_top1"] - base)
        rows = [[v, ", ".join(f"{seed}: {d:+.2f}" for seed, d in sorted(by_seed.items())),
                 f"{statistics.fmean(by_seed.values()):+.2f} ± "
                 f"{statistics.stdev(by_seed.values()):.2f}", _agreement(list(by_seed.values()))]
                for v, by_seed in sorted(diffs.items()) if len(by_seed) > 1]
        if rows:
            lines += [f"### Over the tuning seeds: {dataset} (variant - recipe, final student, "
                      "validation, points)", "",
                      *table(["variant", "by seed", "mean ± sd", "sign"], rows)]
    return lines


def _agreement(points: list[float]) -> str:
    if all(p > 0 for p in points):
        return "higher on every seed"
    if all(p < 0 for p in points):
        return "lower on every seed"
    return "no difference" if all(p == 0 for p in points) else "mixed"


def peers_section(data: dict[str, Any]) -> list[str]:
    """Our recipe against the established frameworks, per data set: test top-1 over the same
    seeds, minutes, and the ratio of each peer's minutes to the recipe's."""
    import runpy

    rows_of = runpy.run_path(str(Path(__file__).with_name("peers.py")))["peers_rows"]
    quality = data.get("quality", {})
    ours = {name: q["summary"] for name, q in quality.items()}
    per_seed = {name: {s["seed"]: {"top1": s["noisy_student"]["rounds"][-1]["student_top1"],
                                   "minutes": s["noisy_student"]["seconds"] / 60}
                       for s in _summary_seeds(q)}
                for name, q in quality.items()}
    minutes = {name: statistics.fmean(s["minutes"] for s in seeds.values())
               for name, seeds in per_seed.items()}
    lines = ["## Peers: the established frameworks on the same split, network and budget", "",
             "Each peer trains the recipe's final network on the same labeled, unlabeled, "
             "validation and test images (the indices of `splits.json`), on this machine, for "
             "the wall-clock minutes our recipe took on that seed, with its own published "
             "hyperparameters scaled to the budget (`tools/peers.py`, docs/peers.md). A peer's "
             "top-1 is of its EMA weights, as its framework evaluates (the headline, chosen "
             "before any run). \"vs recipe\" and \"minutes / recipe's\" compare each peer with "
             "our recipe on the seeds the peer ran: its top-1 less ours, seed by seed, and its "
             "minutes over ours. The last two columns give each run the weights, EMA or "
             "trained, that its own validation top-1 prefers: the peer at its best that "
             "validation can pick, a choice our recipe is not given.", ""]
    for name, group in _by_dataset(rows_of(data["peers"]["results"], per_seed)).items():
        head = []
        if name in ours:
            s = ours[name]
            head = [["Noisy Student (this project)", "noisy-student", mean_std(s["noisy_student"]),
                     mean_std(s["noisy_student_val"]) if "noisy_student_val" in s else "-",
                     ", ".join(str(x["seed"]) for x in _summary_seeds(quality[name])),
                     f"{minutes[name]:.1f}", "", "1.00", "", ""]]
        rows = [[r["method"], f"{r['framework']} {r['framework_version']}",
                 mean_std(r["test_top1"]),
                 mean_std(r["validation_top1"]) if r["validation_top1"] else "-",
                 ", ".join(map(str, r["seeds"])), f"{r['minutes']['mean']:.1f}",
                 _points(r["vs_ours"]) if "vs_ours" in r else "-",
                 f"{r['minutes_ratio']:.2f}" if "minutes_ratio" in r else "-",
                 mean_std(r["chosen_top1"]) if "chosen_top1" in r else "-",
                 _points(r["vs_ours_chosen"]) if "vs_ours_chosen" in r else "-"]
                for r in group]
        lines += [f"### {name}", "", *table(["method", "framework", "test top-1 (%)",
                                             "validation top-1 (%)", "seeds", "minutes",
                                             "vs recipe, same seeds (pts)",
                                             "minutes / recipe's",
                                             "weights chosen on validation: test top-1 (%)",
                                             "those vs recipe (pts)"], head + rows),
                  *_peers_made_apart(name, quality.get(name, {}),
                                     [r for r in data["peers"]["results"]
                                      if r["dataset"] == name])]
    return lines


def _points(s: dict[str, float]) -> str:
    """A difference of top-1 fractions in points, signed, with its sd when over seeds."""
    sd = f" ± {100 * s['std']:.2f}" if s["n"] > 1 else ""
    return f"{100 * s['mean']:+.2f}{sd}"


def _peers_made_apart(name: str, quality: dict[str, Any],
                      results: list[dict[str, Any]]) -> list[str]:
    """A warning when a data set's peer rows and our rows were made by different package code
    or on different machines, each result as its own provenance says: the peers' budget was
    our minutes on their machine, so the minutes ratio would compare two runs. (A commit that
    changed only the tools does not count.)"""
    def made(p: dict[str, Any]) -> tuple[str, str, str | None]:
        return (p.get("package_code") or p["commit"], p["commit"][:8],
                (p.get("machine") or {}).get("cpu"))

    ours = [s["noisy_student"].get("provenance") or {}
            for s in (_summary_seeds(quality) if quality else [])]
    mine = {made(p) for p in ours if p.get("commit")}
    theirs = {made(r) for r in results if r.get("commit")}
    if not mine or not theirs:
        return []
    apart = [what for what, i in (("package code", 0), ("machines", 2))
             if {m[i] for m in mine} != {t[i] for t in theirs}]
    if not apart:
        return []

    def said(groups: set[tuple[str, str, str | None]]) -> str:
        commits: dict[str, list[str]] = {}
        for _, commit, cpu in sorted(groups, key=lambda g: (g[2] or "", g[1])):
            commits.setdefault(cpu or "an unrecorded machine", []).append(commit)
        return " and ".join(f"on {cpu} at commit{'s' * (len(cs) > 1)} {', '.join(cs)}"
                            for cpu, cs in commits.items())
    return [f"The peer rows were made {said(theirs)}, each given our recipe's minutes on "
            f"that machine; our rows {said(mine)}: the last two columns compare runs on "
            f"different {' and '.join(apart)}, until the peers are run again beside our rows.",
            ""]


def _by_dataset(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["dataset"], []).append(r)
    return out


def headroom_section(h: dict[str, Any], current: str | None = None) -> list[str]:
    """tools/oracle_round.py's rows: a round's student trained again on perfect (or partly
    corrected) labels, beside the run's own."""
    rows = []
    for r in sorted(h["rows"].values(), key=lambda r: (
            r["dataset"], r["seed"], r["round"], r.get("overrides", []), -r["fix"])):
        labels = ("hidden (perfect)" if r["fix"] == 1 else "the teacher's" if r["fix"] == 0
                  else f"the teacher's, {100 * r['fix']:.0f}% of its errors corrected")
        labels += "".join(f", `{o}`" for o in r.get("overrides", []))
        rows.append([r["dataset"], str(r["seed"]), str(r["round"]), labels, pct(r["labels"]),
                     pct(r["student_val"]), pct(r["student_test"]),
                     " / ".join(pct(r[f"run_{x}"]) for x in ("labels", "student_val",
                                                             "student_test")),
                     f"{r['minutes']:.1f}", made_by(r, current)])
    return ["Each row trains one round's student again with other pseudo-labels, every unlabeled "
            "image kept, everything else as the run had it unless the row names a setting "
            "(`tools/oracle_round.py`); beside it, "
            "the run's own round. On tuning seeds: what limits the gain, not a choice.", "",
            *table(["data set", "seed", "round", "labels", "labels' accuracy (%)",
                    "student (validation)", "student (test)",
                    "the run's own: labels / validation / test", "minutes", "commit"], rows)]


def speed_section(sp: dict[str, Any]) -> list[str]:
    lines = []
    for device in ("cpu", "cuda"):
        if device not in sp:
            continue
        d = sp[device]
        ts, inf, nz = d["train_step"], d["inference"], d["noise"]
        ratios = ts.get("ratios", [])
        pairs = (f"; the median of {len(ratios)} pairs: " + ", ".join(f"{r:.3f}" for r in ratios)
                 if len(ratios) > 1 else "")
        rows = [["training step: `train_model` / bare loop", f"{ts['ratio']:.3f}",
                 f"{ts['framework_s_per_step'] * 1000:.1f} ms / {ts['bare_s_per_step'] * 1000:.1f}"
                 f" ms per step of {ts['batch']} ({ts['framework_images_per_second']:.0f} / "
                 f"{ts['bare_images_per_second']:.0f} img/s{pairs})", f"<= {TARGETS['train_step']}",
                 _ok(ts["ratio"] <= TARGETS["train_step"])],
                ["pseudo-labeling: `predict_logits` / bare `model(x)`", f"{inf['ratio']:.3f}",
                 f"{inf['framework_images_per_second']:.0f} / {inf['bare_images_per_second']:.0f}"
                 " img/s", f"<= {TARGETS['inference']}", _ok(inf["ratio"] <= TARGETS["inference"])],
                ["noise supply per worker / training demand",
                 f"{nz['supply_over_demand_per_worker']:.3f}",
                 f"{nz['noise_images_per_second_per_worker']:.0f} / "
                 f"{nz['train_consumes_images_per_second']:.0f} img/s", "", ""],
                [f"time waiting for data, noised training ({nz['workers']} workers)",
                 f"{nz['data_wait_fraction']:.3f}",
                 f"{nz['noised_train_images_per_second']:.0f} img/s with noise",
                 f"< {WAIT_TARGET}", _ok(nz["data_wait_fraction"] < WAIT_TARGET)]]
        if "torch_backend" in nz:  # noise.backend = "torch": whole batches on the device
            tb = nz["torch_backend"]
            supply = tb["noise_images_per_second"] / nz["train_consumes_images_per_second"]
            rows += [["noise, torch backend (whole batches): supply / training demand",
                      f"{supply:.3f}",
                      f"{tb['noise_images_per_second']:.0f} / "
                      f"{nz['train_consumes_images_per_second']:.0f} img/s", "", ""],
                     ["noised training, torch backend: noise share of the step time",
                      f"{noise_cost(tb):.3f}",
                      f"{tb['images_per_second']:.0f} img/s with noise"
                      + (f", {tb['clean_images_per_second']:.0f} without"
                         if "clean_images_per_second" in tb else ""), "", ""]]
        lines += [f"### Speed on {device} (model `{ts['model']}`)", "",
                  *table(["measure", "ratio", "measured", "target", ""], rows)]
        if nz.get("by_workers"):
            lines += ["Noised training by DataLoader workers:", "", *table(
                ["workers", "img/s", "waiting for data"],
                [[w, f"{v['images_per_second']:.0f}", f"{100 * v['data_wait_fraction']:.1f}%"]
                 for w, v in nz["by_workers"].items()])]
    for key, title in (("cpu_variants", "CPU: bf16 autocast (`train.amp_cpu`), side by side"),
                       ("cuda_variants", "GPU: bf16 autocast and channels_last")):
        if key in sp:
            first = next(iter(sp[key].values()))["framework_images_per_second"]
            rows = [[k, f"{v['framework_images_per_second']:.0f}",
                     f"{v['framework_images_per_second'] / first:.2f}", f"{v['ratio']:.3f}"]
                    for k, v in sp[key].items()]
            lines += [f"### {title}", "", *table(
                ["setting", "train img/s", "img/s / first row's", "framework / bare"], rows)]
    if "round_split" in sp:
        rs = sp["round_split"]
        rows = [[k, f"{v:.2f}", f"{100 * rs['share'][k]:.1f}"] for k, v in rs["seconds"].items()]
        lines += [f"### Where a round's time goes ({rs['recipe']} recipe, round 0)", "",
                  *table(["part", "seconds", "share (%)"], rows),
                  f"Waiting for noised batches: {100 * rs['data_wait_share_of_train']:.1f}% of "
                  "the training time.", ""]
    return lines


def memory_section(mem: dict[str, Any]) -> list[str]:
    """Peak and resident memory against the number of unlabeled images (tools/memory_check.py)."""
    rows = []
    for r in mem["rows"]:
        stages = r.get("rss_now_mb", {})
        anon = " / ".join(f"{stages[s]['RssAnon']:.0f}" for s in ("loaded", "labeled", "read")
                          if s in stages)
        rows.append([f"{r['images']:,}", "lazy" if r["lazy"] else "in memory",
                     f"{r['soft_label_mb']}", f"{r['peak_rss_after_load_mb']:.0f}",
                     f"{r['peak_rss_mb']:.0f}", anon, f"{r['total_seconds']:.0f}"])
    return [f"{mem['size']}x{mem['size']} RGB PNG files on disk, labeled by a teacher with "
            f"{mem['classes']} outputs (soft labels written to disk), then 2,048 training items "
            "read; one fresh process per row.", "",
            *table(["unlabeled images", "mode", "soft labels on disk (MB)",
                    "peak RSS after loading (MB)", "peak RSS at the end (MB)",
                    "anonymous RSS: loaded / labeled / items read (MB)", "seconds"], rows)]


GPU_PARTS = ("train_step", "noise", "pseudo_label", "compile", "torchrun", "end_to_end")  # run order
TINY_NOTE = " --tiny (toy sizes on the CPU: the code paths, not their speed)"


def gpu_section(g: dict[str, Any]) -> list[str]:
    """tools/gpu_check.py's figures: the part statuses, then one table per part measured."""
    gpu, parts = g.get("gpu") or {}, g["parts"]
    where = (f"{gpu['name']} ({gpu['memory_gib']:.0f} GiB), driver {gpu['driver']}, CUDA "
             f"{gpu['cuda']}" if gpu else f"no GPU ({g['device']})")
    lines = [f"`tools/gpu_check.py`{TINY_NOTE if g['tiny'] else ''} on {where}, torch "
             f"{g['versions']['torch']}, {g['machine']['cores']} CPU cores, "
             f"{g['date']}. Each part ran in a process of its own with its own time limit.", "",
             *table(["part", "status", "seconds"],
                    [[n, parts[n]["status"], f"{parts[n].get('seconds', 0):.1f}"]
                     for n in GPU_PARTS if n in parts])]
    for name, render in (("train_step", _gpu_train_step), ("noise", _gpu_noise),
                         ("pseudo_label", _gpu_pseudo_label), ("compile", _gpu_compile),
                         ("torchrun", _gpu_phases), ("end_to_end", _gpu_phases)):
        if parts.get(name, {}).get("status") == "ok" or parts.get(name, {}).get("phases"):
            lines += render(name, parts[name])
    return lines


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _gpu_train_step(name: str, p: dict[str, Any]) -> list[str]:
    rows = [[f"`{r['model']}`", "x".join(map(str, r["shape"])), str(r["batch"]),
             f"{r['framework_images_per_second']:.0f}", f"{r['bare_images_per_second']:.0f}",
             f"{r['ratio']:.3f}", f"<= {r['target']}", _ok(r["ratio"] <= r["target"]),
             _mib(r["peak_gpu_mib"])] for r in p["settings"]]
    waits = p["settings"][0].get("host_waits")
    return ["### Training step: `train_model` against a bare loop (bf16 autocast on CUDA, "
            "channels_last)", "",
            *table(["model", "image", "batch", "framework img/s", "bare img/s", "ratio",
                    "target", "", "peak GPU MiB"], rows),
            *([f"The host waited for the GPU {waits['per_step']:.1f} times a step "
               f"(`{p['settings'][0]['model']}`, CUDA's sync debug mode)"
               + "".join(f", {n} at `{k}`" for k, n in waits["where"].items()) + ".", ""]
              if waits else [])]


def noise_cost(tb: dict[str, Any]) -> float:
    """The share of the torch backend's step time its noise costs: against the same training
    on clean images where measured (on a GPU the host's timers see kernel launches, not the
    device waiting), else the time the host spent in the data path."""
    return tb.get("noise_step_share", tb["data_wait_fraction"])


def _gpu_noise(name: str, p: dict[str, Any]) -> list[str]:
    tb = p["torch_backend"]
    clean = tb.get("clean_images_per_second")

    def cost(images_per_second: float) -> str:  # against the same training, clean images
        return "-" if clean is None else f"{100 * (1 - images_per_second / clean):.1f}%"

    rows = [["torch (whole batches on the device)", "0", f"{tb['images_per_second']:.0f}",
             f"{100 * tb['data_wait_fraction']:.1f}%", cost(tb["images_per_second"]),
             f"< {100 * p['target']:.0f}%", _ok(noise_cost(tb) < p["target"])],
            ["albumentations (DataLoader workers)", str(p["workers"]),
             f"{p['noised_train_images_per_second']:.0f}",
             f"{100 * p['data_wait_fraction']:.1f}%", cost(p["noised_train_images_per_second"]),
             "", ""]]
    return [f"### Noised training: where the noise is made (`{p['model']}`, "
            f"{'x'.join(map(str, p['shape']))}; peak GPU MiB {_mib(p['peak_gpu_mib'])})", "",
            *table(["noise backend", "workers", "train img/s", "host time in the data path",
                    "step time the noise costs" + ("" if clean is None else
                                                   f" (clean: {clean:.0f} img/s)"),
                    "target", ""], rows)]


def _gpu_pseudo_label(name: str, p: dict[str, Any]) -> list[str]:
    return [f"### Pseudo-labeling: `predict_logits` against a bare `model(x)` (`{p['model']}`, "
            f"{p['images']} images)", "",
            *table(["framework img/s", "bare img/s", "speed ratio", "target", "",
                    "peak GPU MiB"],
                   [[f"{p['framework_images_per_second']:.0f}",
                     f"{p['bare_images_per_second']:.0f}", f"{p['speed_ratio']:.3f}",
                     f">= {p['target']}", _ok(p["speed_ratio"] >= p["target"]),
                     _mib(p["peak_gpu_mib"])]])]


def _gpu_compile(name: str, p: dict[str, Any]) -> list[str]:
    e, c = p["eager"]["epoch_seconds"], p["compiled"]["epoch_seconds"]
    return [f"### `train.compile` ({p['backend']}; `{p['model']}`, {p['steps_per_epoch']} "
            "steps an epoch)", "",
            *table(["compiling (s)", "epoch 2 eager (s)", "epoch 2 compiled (s)",
                    "steady speed-up", "peak GPU MiB (compiled)"],
                   [[f"{p['compile_seconds']:.1f}", f"{e[1]:.2f}", f"{c[1]:.2f}",
                     f"{p['speedup']:.2f}", _mib(p["compiled"]["peak_gpu_mib"])]])]


def _gpu_phases(name: str, p: dict[str, Any]) -> list[str]:
    if name == "torchrun":
        title = (f"### torchrun: {p['processes']} process, {p['backend']}, the digits recipe cut "
                 f"short ({p['seconds']:.0f} s all told)")
    else:
        rounds = f", {p['rounds']} rounds" if p.get("rounds") else ""
        title = (f"### End to end: the {p['recipe']} recipe{rounds}, noise backend "
                 f"{p['noise_backend']}"
                 f" ({p['minutes']:.1f} minutes{'' if p['finished'] else ', cut short'}; peak "
                 f"GPU MiB {_mib(p.get('peak_gpu_mib'))})")
    rows = [[x["phase"], f"{x['seconds'] / 60:.2f}", pct(x["val_top1"]), pct(x["test_top1"])]
            for x in p["phases"]]
    return [title, "", *table(["phase", "minutes", "validation top-1", "test top-1"], rows),
            *([f"The run: {p['note']}.", ""] if p.get("note") else [])]


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


RULE = ("The rule: every choice made from a measured figure (recipe defaults, thresholds, "
        "epochs, ablation verdicts) is made on validation, a class-balanced set carved from the "
        "training pool; test is read only for this report. Seeds 0, 1, 2 are tuning seeds; seeds "
        "100, 101, 102 are report seeds, never used for a choice. A row marked (older code) was "
        "made before the last change to `noisy_student/`.")


def write(data: dict[str, Any], markdown: Path, plot: Path, current: str | None = None) -> None:
    """Regenerate the report (and the plot, when there are quality results) from `data`;
    `current`: the package code now (`bench_runs.package_code`), against which rows are marked."""
    lines = ["# Benchmarks", "",
             "Written by `tools/benchmark.py` from its results JSON; do not edit by hand. "
             "How each figure is made: see the docstrings of `tools/benchmark.py` and "
             "`tools/bench_speed.py`.", "", RULE, "",
             "The latest run of each section (a section keeps the seeds and variants of "
             "earlier runs that the latest did not redo):", ""]
    for section, info in data.get("runs", {}).items():
        lines.append(_run_line(section, info, current))
    lines.append("")
    if "quality" in data:
        lines += ["## Quality: what the unlabeled images buy", ""]
        headroom = list(data.get("headroom", {}).get("rows", {}).values())
        for name, q in data["quality"].items():
            lines += quality_section(name, q, current,
                                     [r for r in headroom if r["dataset"] == name],
                                     longest_ablation(data.get("ablations", {}).get(name, {}),
                                                      current))
        if _plot(data["quality"], plot):
            lines += [f"![test top-1 per round]({_relative(plot, markdown)})", ""]
    if data.get("variants"):
        lines += ["## The recipe changed: what other settings buy", "",
                  "Each variant runs the quality benchmark on the seeds named, with the recipe's "
                  "settings but its changes (for the loop and both baselines): test top-1 (%), "
                  "as in the table above; on tuning seeds, a measurement of what more compute "
                  "would buy, not a choice.", "", *variants_section(data["variants"], current)]
    if data.get("peers", {}).get("results"):
        lines += peers_section(data)
    if "ablations" in data:
        lines += ["## Ablations", ""]
        for name, a in data["ablations"].items():
            final = data.get("quality", {}).get(name, {}).get("summary", {}).get(
                "noisy_student_val", {})
            lines += ablation_section(name, a, final["std"] if final.get("n", 0) > 1 else None,
                                      current)
        lines += tuning_section(data["ablations"])
    if data.get("headroom", {}).get("rows"):
        lines += ["## Headroom: what better labels would buy", "",
                  *headroom_section(data["headroom"], current)]
    for section, heading, render in (
            ("speed", "Speed: what the framework costs", speed_section),
            ("memory", "Memory: unlabeled sets larger than memory", memory_section),
            ("gpu", "GPU: the CUDA path", gpu_section)):
        if section in data:
            lines += [f"## {heading}", "", *_made_at(data, section, current),
                      *render(data[section])]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines).rstrip() + "\n")


def _made_at(data: dict[str, Any], section: str, current: str | None) -> list[str]:
    """The commit a whole section was made at, marked (older code) when the package has
    changed since: its figures may have moved."""
    info = data.get("runs", {}).get(section)
    if info is None:
        return []
    return [f"Made at commit {made_by({'provenance': info.get('provenance', info)}, current)}.",
            ""]


def _run_line(section: str, info: dict[str, Any], current: str | None) -> str:
    if "provenance" not in info and "machine" in info and "python" in info["machine"]:
        m = info["machine"]  # recorded before commits were
        return (f"- **{section}**: `{info['command']}` on {info['date']}, commit unrecorded; "
                f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}")
    p = info.get("provenance", info)
    m, v = p["machine"], p["versions"]
    return (f"- **{section}**: `{info['command']}` on {p['date']} at commit "
            f"{made_by({'provenance': p}, current)}; {m['cpu']}, {m['cores']} cores, "
            f"{m['torch_threads']} torch threads, GPU {m['gpu'] or 'none'}; Python "
            f"{v['python']}, torch {v['torch']}, albumentations {v['albumentations']}, numpy "
            f"{v['numpy']}")


def _relative(path: Path, markdown: Path) -> str:
    try:
        return str(path.resolve().relative_to(markdown.parent.resolve()))
    except ValueError:
        return str(path)


def _plot(quality: dict[str, Any], path: Path) -> bool:
    """Test top-1 after each round against the labels-only and supervised baselines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[tools]'): no plot")
        return False
    fig, axes = plt.subplots(1, len(quality), figsize=(5 * len(quality), 3.6), squeeze=False)
    for ax, (name, q) in zip(axes[0], quality.items(), strict=True):
        s = q["summary"]
        xs = list(range(len(s["rounds"]) + 1))
        ys = [s["teacher"]["mean"]] + [r["student_top1"]["mean"] for r in s["rounds"]]
        es = [s["teacher"]["std"]] + [r["student_top1"]["std"] for r in s["rounds"]]
        ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o",
                    label="Noisy Student (0: labels-only teacher)")
        for key, style, label in (("labels_only", "--", "labels-only, final architecture"),
                                  ("supervised", ":", "fully supervised")):
            ax.axhline(100 * s[key]["mean"], linestyle=style, color="gray" if key ==
                       "labels_only" else "black", label=label)
        ax.set(title=name, xlabel="after round (0 = round 0's teacher)", ylabel="test top-1 (%)",
               xticks=xs)
        ax.grid(alpha=0.3)
        if not all(math.isfinite(y) for y in ys):
            return False
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
