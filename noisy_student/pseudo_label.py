"""Pseudo-labeling: the un-noised teacher labels the unlabeled images, then filter and balance.

As in the official Noisy Student: keep images whose confidence max_c softmax(z_t)_c is at least
`threshold`; then, per predicted class, keep the `per_class` most confident images and duplicate
the images of classes that have fewer (whole copies, then the most confident for the remainder),
so every class with any kept image contributes exactly `per_class` items.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .config import PseudoLabelConfig
from .data import TopKTargets
from .inference import FrozenTeacher, predict_logits


@dataclass
class PseudoLabels:
    """The teacher's labels for one round.

    indices     int64 [m]     into the unlabeled set; an index repeats when balancing duplicated it
    targets     float16 [m, C] soft labels softmax(z_t / T), or int64 [m] hard labels, or
                float16 [m, k] the top-k probabilities (with `target_classes`)
    target_classes int16|int32 [m, k]  the classes of top-k soft labels (else None)
    confidence  float32 [m]   max_c softmax(z_t)_c of each kept item (T = 1)
    predicted   int64 [n]     the teacher's class for every unlabeled image (kept or not)
    confidence_all float32 [n] its confidence for every unlabeled image
    meta        teacher identity, temperature, settings fingerprint, class count
    """

    indices: np.ndarray
    targets: np.ndarray
    confidence: np.ndarray
    predicted: np.ndarray
    confidence_all: np.ndarray
    meta: dict[str, Any]
    target_classes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def kept_classes(self) -> np.ndarray:
        """The class of each kept item `int64 [m]`."""
        return self.predicted[self.indices]

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an `.npz` file (loadable with allow_pickle=False)."""
        out = {"indices": self.indices, "targets": self.targets, "confidence": self.confidence,
               "predicted": self.predicted, "confidence_all": self.confidence_all,
               "meta": np.array(json.dumps(self.meta, sort_keys=True))}
        if self.target_classes is not None:
            out["target_classes"] = self.target_classes
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> PseudoLabels:
        names = ("indices", "targets", "confidence", "predicted", "confidence_all")
        classes = np.asarray(arrays["target_classes"]) if "target_classes" in arrays else None
        return cls(*(np.asarray(arrays[k]) for k in names), json.loads(str(arrays["meta"])),
                   classes)

    def training_targets(self) -> Any:
        """What the student trains on: the targets, or top-k soft labels densified per item."""
        if self.target_classes is not None:
            return TopKTargets(self.target_classes, self.targets, self.num_classes)
        return self.targets

    def stats(self, hidden_labels: np.ndarray | None = None) -> dict[str, Any]:
        """Kept counts, per-class counts, mean confidence, accuracy against hidden labels."""
        n = len(self.predicted)
        unique = np.unique(self.indices)
        counts = np.bincount(self.kept_classes(), minlength=self.num_classes)
        out: dict[str, Any] = {
            "unlabeled": n,
            "kept": int(len(self.indices)),  # items the student trains on, duplicates included
            "kept_unique": int(len(unique)),
            "kept_fraction": float(len(unique) / n) if n else 0.0,
            "per_class": counts.tolist(),
            "mean_confidence": float(self.confidence.mean()) if len(self) else 0.0,
            "mean_confidence_all": float(self.confidence_all.mean()) if n else 0.0,
            "accuracy": None,
            "accuracy_all": None,
        }
        if hidden_labels is not None and len(hidden_labels) == n:
            right = self.predicted == hidden_labels
            out["accuracy"] = float(right[unique].mean()) if len(unique) else None
            out["accuracy_all"] = float(right.mean()) if n else None
        return out


def select(predicted: np.ndarray, confidence: np.ndarray, num_classes: int, threshold: float,
           balance: bool, per_class: int | None = None) -> np.ndarray:
    """Indices to train on: confidence >= threshold, then balanced per predicted class.

    Without `per_class`, the target is the mean kept count over classes that kept any image.
    Returned indices are grouped by class, most confident first within a class.
    """
    kept = np.flatnonzero(confidence >= threshold)
    if not balance:
        return kept
    by_class = [kept[predicted[kept] == c] for c in range(num_classes)]
    by_class = [m[np.argsort(-confidence[m], kind="stable")] for m in by_class]
    present = [len(m) for m in by_class if len(m)]
    if not present:
        return kept  # nothing survived the threshold; the caller reports it
    target = per_class or max(1, int(round(sum(present) / len(present))))
    chosen = []
    for members in by_class:
        if len(members) >= target:
            chosen.append(members[:target])
        elif len(members):
            copies, rest = divmod(target, len(members))
            chosen.append(np.concatenate([np.tile(members, copies), members[:rest]]))
    return np.concatenate(chosen) if chosen else kept


def make_pseudo_labels(teacher: FrozenTeacher, images: np.ndarray, mean: list[float],
                       std: list[float], cfg: PseudoLabelConfig, temperature: float,
                       meta: dict[str, Any], device: torch.device | str = "cpu",
                       amp: bool = False, channels_last: bool = False,
                       progress: object | None = None,
                       check: Callable[[], None] | None = None) -> PseudoLabels:
    """Run the frozen teacher (eval mode, no augmentation) on `images` and select as configured."""
    if not isinstance(teacher, FrozenTeacher):
        raise TypeError("pseudo-labels come from a FrozenTeacher, so the teacher is never noised")
    logits = predict_logits(teacher, images, mean, std, cfg.batch_size, device, amp,
                            channels_last, progress, check)  # [n, C]
    return labels_from_logits(logits, cfg, temperature, meta)


def labels_from_logits(logits: torch.Tensor, cfg: PseudoLabelConfig, temperature: float,
                       meta: dict[str, Any]) -> PseudoLabels:
    """Filter and balance the un-noised teacher's logits `[n, C]` of every unlabeled image."""
    num_classes = logits.shape[1]
    confidence_all, predicted = logits.softmax(dim=1).max(dim=1)
    confidence_all, predicted = confidence_all.numpy(), predicted.numpy().astype(np.int64)
    indices = select(predicted, confidence_all, num_classes, cfg.threshold, cfg.balance,
                     cfg.per_class).astype(np.int64)
    target_classes = None
    if cfg.kind == "soft":
        probs = (logits[torch.from_numpy(indices)] / temperature).softmax(dim=1)
        if cfg.top_k is not None and cfg.top_k < num_classes:
            top = probs.topk(cfg.top_k, dim=1)  # the k most probable classes per item
            probs = top.values
            target_classes = top.indices.numpy().astype(
                np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32)
        targets = probs.numpy().astype(np.float16)
    else:
        targets = predicted[indices]
    meta = dict(meta, num_classes=num_classes, temperature=temperature, kind=cfg.kind,
                threshold=cfg.threshold, balance=cfg.balance, per_class=cfg.per_class,
                top_k=cfg.top_k)
    return PseudoLabels(indices, targets, confidence_all[indices].astype(np.float32), predicted,
                        confidence_all.astype(np.float32), meta, target_classes)


def confidence_extremes(predicted: np.ndarray, confidence: np.ndarray, num_classes: int,
                        n: int) -> list[tuple[int, int, float, str]]:
    """For each predicted class, its `n` most and `n` least confident unlabeled images, as
    `(index, class, confidence, "most" | "least")`; a class with fewer than 2n images lists
    each image once."""
    rows = []
    for c in range(num_classes):
        members = np.flatnonzero(predicted == c)
        order = members[np.argsort(-confidence[members], kind="stable")]
        most = order[:n]
        least = [i for i in order[::-1][:n] if i not in set(most.tolist())][::-1]
        rows += [(int(i), c, float(confidence[i]), "most") for i in most]
        rows += [(int(i), c, float(confidence[i]), "least") for i in least]
    return rows


def coverage_warning(labels: PseudoLabels, threshold: float,
                     classes: list[str] | None = None) -> str | None:
    """A warning when some class kept no pseudo-label: per-class counts, and the threshold that
    would keep at least one image of each class the teacher predicts at all."""
    c = labels.num_classes
    kept = np.bincount(labels.kept_classes(), minlength=c) if len(labels) else np.zeros(c, int)
    predicted = np.bincount(labels.predicted, minlength=c)
    missing = [k for k in range(c) if kept[k] == 0]
    if not missing:
        return None
    names = [classes[k] if classes else str(k) for k in missing]
    top = {k: float(labels.confidence_all[labels.predicted == k].max())
           for k in missing if predicted[k]}
    never = [names[i] for i, k in enumerate(missing) if k not in top]
    text = (f"classes {names} got no pseudo-labels (kept per class {kept.tolist()}, "
            f"predicted per class {predicted.tolist()})")
    if top:
        lower = math.floor(100 * min(top.values())) / 100
        text += (f"; pseudo_label.threshold = {lower:.2f} (now {threshold}) would keep at least "
                 "one image of each predicted class")
    if never:
        text += f"; the teacher predicts no unlabeled image as {never}"
    return text
