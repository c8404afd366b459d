"""Could a finished run's own models make better pseudo-labels? Measured offline, on one run.

    python tools/label_headroom.py RUN [--phase last|teacher|K] [--out FILE.json]

For a run whose unlabeled images have hidden labels (digits, Fashion-MNIST), prints the accuracy
on the unlabeled and validation images of the labels that each cheap refinement would give,
every model labeling as the run's teachers did: averaged over the views of each image that
`pseudo_label.flip_average` and `shift_average` name:

  alone                  the phase's model (`--phase`, default the last round's student)
  last k students        the average of the last k rounds' students (`pseudo_label.ensemble`)
  neighbours k=10        each image's probabilities averaged half and half with those of its
                         10 nearest neighbours in the model's feature space (cosine, weights
                         sim^3; a labeled neighbour gives its one-hot label)
  label propagation      Zhou et al. 2004 on that kNN graph, from the labels alone (Iscen et
                         al. 2019): (I - 0.99 W) Z = Y, Y one-hot on the labeled images

A refinement that is not more accurate than `alone` here cannot lift the chain of rounds, whose
students learn no better than their labels (BENCHMARKS.md, "Where it stops").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sps
import torch
from scipy.sparse.linalg import cg

from noisy_student.artifacts import open_run
from noisy_student.data.datasets import to_tensor
from noisy_student.errors import NoisyStudentError
from noisy_student.inference import ViewAverage


def view_averaged(model: torch.nn.Module, images: np.ndarray, mean: list[float],
                  std: list[float], flip: bool, shift: int,
                  batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalized features [N, D], probabilities [N, C]), each the mean over the views a
    teacher labels (`ViewAverage`'s: the mirror image with `flip`, shifts of `shift` px)."""
    views = ViewAverage(model, flip, shift).views
    feats, probs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            z = torch.stack([model.forward_features(v) for v in
                             views(to_tensor(images[i:i + batch], mean, std))])  # [V, B, D]
            feats.append(torch.nn.functional.normalize(z.mean(0), dim=1))
            probs.append(model.head(z).softmax(-1).mean(0))  # eval: no head dropout
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def nearest(feats: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar other rows (cosine on normalized features): (index, sim)."""
    f = torch.from_numpy(feats)
    index, sim = [], []
    for i in range(0, len(f), chunk):
        s = f[i:i + chunk] @ f.T
        s[torch.arange(len(s)), torch.arange(i, i + len(s))] = -2.0  # never itself
        v, j = s.topk(k, dim=1)
        index.append(j.numpy())
        sim.append(v.numpy())
    return np.concatenate(index), np.concatenate(sim)


def neighbour_smoothed(probs: np.ndarray, index: np.ndarray, sim: np.ndarray,
                       weight: float = 0.5) -> np.ndarray:
    """(1 - weight) * p_i + weight * (sum_j w_ij p_j / sum_j w_ij), w_ij = max(sim, 0)^3."""
    w = np.clip(sim, 0, None) ** 3
    around = (w[:, :, None] * probs[index]).sum(1) / (w.sum(1, keepdims=True) + 1e-12)
    return (1 - weight) * probs + weight * around


def propagated(index: np.ndarray, sim: np.ndarray, seeds: np.ndarray, num_classes: int,
               alpha: float = 0.99, iterations: int = 20) -> np.ndarray:
    """Label propagation: Z solving (I - alpha D^-1/2 W D^-1/2) Z = Y, W the symmetrized kNN
    graph (max(sim, 0)^3), Y one-hot on rows whose `seeds` label is >= 0, zero elsewhere."""
    n, k = index.shape
    w = sps.csr_matrix((np.clip(sim, 0, None).ravel() ** 3, (np.repeat(np.arange(n), k),
                                                               index.ravel())), shape=(n, n))
    w = w + w.T
    d = sps.diags(1 / np.sqrt(np.asarray(w.sum(1)).ravel() + 1e-12))
    a = sps.eye(n) - alpha * (d @ w @ d)
    z = np.zeros((n, num_classes))
    for c in range(num_classes):
        z[:, c] = cg(a, (seeds == c).astype(float), maxiter=iterations)[0]
    return z


def headroom(run_dir: str | Path, phase: str | int = "last") -> dict[str, dict[str, float]]:
    """{refinement: {"unlabeled": top-1 %, "val": top-1 %}} (see the module docstring)."""
    run = open_run(run_dir)
    sp = run.splits()
    if sp.unlabeled.labels is None or sp.validation is None:
        raise NoisyStudentError(f"{run.root}: its unlabeled images have no hidden labels, or it "
                                "has no validation set: nothing to measure against")
    sets = {"labeled": sp.labeled.images, "unlabeled": sp.unlabeled.images,
            "val": sp.validation.images}
    truth = {"unlabeled": sp.unlabeled.labels, "val": sp.validation.labels}
    images = np.concatenate(list(sets.values()))  # one pass: labeled, unlabeled, val
    ends = np.cumsum([len(v) for v in sets.values()])
    spans = {name: slice(end - len(v), end) for (name, v), end in zip(sets.items(), ends)}

    def measured(probs: np.ndarray) -> dict[str, float]:
        return {s: round(100 * float((probs[spans[s]].argmax(1) == truth[s]).mean()), 2)
                for s in truth}

    def of(which: str | int) -> tuple[np.ndarray, np.ndarray]:
        model = run.model(which)
        if not (hasattr(model, "forward_features") and hasattr(model, "head")):
            raise NoisyStudentError(f"{run.root}: {type(model).__name__} has no "
                                    "forward_features and head to read features from")
        pl = run.config.pseudo_label
        return view_averaged(model, images, run.mean, run.std, pl.flip_average,
                             pl.shift_average)

    feats, probs = of(phase)
    out = {"alone": measured(probs)}
    students = run.rounds()
    if phase == "last" and len(students) > 1:
        older = [of(r)[1] for r in students[:-1]]
        for k in range(2, len(students) + 1):
            out[f"last {k} students"] = measured(np.mean([probs, *older[len(older) - k + 1:]], 0))
    known = probs.copy()
    known[spans["labeled"]] = np.eye(probs.shape[1])[sp.labeled.labels]
    index, sim = nearest(feats, min(10, len(feats) - 1))
    out["neighbours k=10"] = measured(neighbour_smoothed(known, index, sim))
    seeds = np.full(len(feats), -1)
    seeds[spans["labeled"]] = sp.labeled.labels
    out["label propagation"] = measured(propagated(index, sim, seeds, probs.shape[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a finished run directory")
    p.add_argument("--phase", default="last", help="last (default), teacher, or a round K")
    p.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    try:
        result = headroom(a.run, int(a.phase) if a.phase.isdigit() else a.phase)
    except NoisyStudentError as e:
        print(f"label_headroom: {e}", file=sys.stderr)
        return 2
    print(f"{'labels':<22} {'unlabeled':>9} {'val':>6}  (top-1 %)")
    for name, r in result.items():
        print(f"{name:<22} {r['unlabeled']:>9.2f} {r['val']:>6.2f}")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
