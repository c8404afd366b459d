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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed
from .checkpoint import load_npz
from .config import PseudoLabelConfig
from .inference import FrozenTeacher, iter_logits, predict_logits
from .soft_labels import ItemTargets, PartWriter, SoftLabelError, SoftLabels, compact


@dataclass
class PseudoLabels:
    """The teacher's labels for one round.

    indices        int64 [m]    items -> unlabeled image (an image repeats when balancing
                                duplicated it)
    predicted      int64 [n]    the teacher's class for every unlabeled image (kept or not)
    confidence_all float32 [n]  max_c softmax(z_t)_c for every unlabeled image (T = 1)
    meta           teacher identity, temperature, settings fingerprint, class count, and
                   `soft_parts` (the records of soft labels stored beside the `.npz`)
    soft           soft labels softmax(z_t / T) of every unlabeled image (`SoftLabels`, in
                   memory or memory-mapped parts), or None for hard labels (= `predicted`)
    """

    indices: np.ndarray
    predicted: np.ndarray
    confidence_all: np.ndarray
    meta: dict[str, Any]
    soft: SoftLabels | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def confidence(self) -> np.ndarray:
        """float32 [m]: the teacher's confidence in each kept item."""
        return self.confidence_all[self.indices]

    @property
    def targets(self) -> np.ndarray:
        """Per item: the class `int64 [m]`, or the dense soft label `float32 [m, C]` (this
        reads every kept row: for inspection; training reads them lazily)."""
        if self.soft is None:
            return self.predicted[self.indices]
        return self.soft.rows(self.indices)

    def kept_classes(self) -> np.ndarray:
        """The class of each kept item `int64 [m]`."""
        return self.predicted[self.indices]

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an `.npz` file (loadable with allow_pickle=False). Soft labels in
        memory are included; stored parts are named in `meta["soft_parts"]`."""
        out = {"indices": self.indices, "predicted": self.predicted,
               "confidence_all": self.confidence_all,
               "meta": np.array(json.dumps(self.meta, sort_keys=True))}
        if self.soft is not None and "soft_parts" not in self.meta:
            out.update(self.soft.arrays())
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, folder: Path | None = None,
                    verify: bool = True) -> PseudoLabels:
        """Back from `arrays()`; stored soft-label parts are opened under `folder` (the
        `.npz`'s folder), memory-mapped, their sha256 checked with `verify`."""
        meta = json.loads(str(arrays["meta"]))
        soft = None
        if "soft_probs" in arrays:
            classes = np.asarray(arrays["soft_classes"]) if "soft_classes" in arrays else None
            soft = SoftLabels([(np.asarray(arrays["soft_probs"]), classes)],
                              int(meta["num_classes"]))
        elif meta.get("soft_parts"):
            if folder is None:
                raise SoftLabelError("these pseudo-labels keep their soft labels in files "
                                     "beside the .npz: pass its folder")
            soft = SoftLabels.open(folder, meta["soft_parts"], int(meta["num_classes"]), verify)
        return cls(np.asarray(arrays["indices"]), np.asarray(arrays["predicted"]),
                   np.asarray(arrays["confidence_all"]), meta, soft)

    @classmethod
    def load(cls, path: Path, verify: bool = True) -> PseudoLabels:
        """A round's `pseudo_labels.npz`, with its soft-label parts beside it; `SoftLabelError`
        naming the file when it is missing, damaged or not what it should hold."""
        try:
            labels = cls.from_arrays(load_npz(path), path.parent, verify)
        except SoftLabelError:
            raise
        except Exception as e:  # noqa: BLE001 - numpy, zipfile and zlib raise many types
            raise SoftLabelError(f"{path}: damaged pseudo-labels ({type(e).__name__}: "
                                 f"{e})") from e
        n = len(labels.predicted)
        if not (len(labels.confidence_all) == n and labels.indices.ndim == 1
                and np.all((labels.indices >= 0) & (labels.indices < n))):
            raise SoftLabelError(f"{path}: damaged pseudo-labels (inconsistent arrays)")
        return labels

    def training_targets(self) -> Any:
        """What the student trains on, per item: classes `int64 [m]`, or soft labels read
        row by row when an item is loaded (`ItemTargets`)."""
        if self.soft is None:
            return self.predicted[self.indices]
        return ItemTargets(self.soft, self.indices)

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
    """Run the frozen teacher (eval mode, no augmentation) on `images` and select as
    configured; everything in memory (see `label_part` for sets of any size)."""
    if not isinstance(teacher, FrozenTeacher):
        raise TypeError("pseudo-labels come from a FrozenTeacher, so the teacher is never noised")
    logits = predict_logits(teacher, images, mean, std, cfg.batch_size, device, amp,
                            channels_last, progress, check)  # [n, C]
    return labels_from_logits(logits, cfg, temperature, meta)


def labels_from_logits(logits: torch.Tensor, cfg: PseudoLabelConfig, temperature: float,
                       meta: dict[str, Any]) -> PseudoLabels:
    """Filter and balance the un-noised teacher's logits `[n, C]` of every unlabeled image."""
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    soft = None
    if cfg.kind == "soft":
        soft = SoftLabels([compact((logits / temperature).softmax(dim=1), cfg.top_k)],
                          logits.shape[1])
    return select_labels(predicted.numpy().astype(np.int64), confidence.numpy(), soft,
                         logits.shape[1], cfg, temperature, meta)


@dataclass
class LabeledPart:
    """One rank's share of the unlabeled set, labeled: class and confidence per image, and the
    record of its soft labels written to disk (None for hard labels)."""
    predicted: np.ndarray  # int64 [n_part]
    confidence: np.ndarray  # float32 [n_part]
    num_classes: int
    soft_part: dict[str, Any] | None


def label_part(teacher: FrozenTeacher, images: np.ndarray, mean: list[float], std: list[float],
               cfg: PseudoLabelConfig, temperature: float, stem: Path,
               device: torch.device | str = "cpu", amp: bool = False,
               channels_last: bool = False, progress: object | None = None,
               check: Callable[[], None] | None = None) -> LabeledPart:
    """Label `images` batch by batch, keeping 12 bytes per image in memory; soft labels go to
    `<stem>.*.npy` as they come (`soft_labels.PartWriter`), so memory stays flat."""
    if not isinstance(teacher, FrozenTeacher):
        raise TypeError("pseudo-labels come from a FrozenTeacher, so the teacher is never noised")
    predicted, confidence, writer, num_classes = [], [], None, 0
    for logits in iter_logits(teacher, images, mean, std, cfg.batch_size, device, amp,
                              channels_last, progress, check):  # [b, C]
        num_classes = logits.shape[1]
        c, p = logits.softmax(dim=1).max(dim=1)
        confidence.append(c.numpy())
        predicted.append(p.numpy().astype(np.int64))
        if cfg.kind == "soft":
            if writer is None:
                writer = PartWriter(stem, len(images), num_classes, cfg.top_k)
            writer.write((logits / temperature).softmax(dim=1))
    if cfg.kind == "soft" and writer is None:  # an empty share: an empty part
        writer = PartWriter(stem, 0, num_classes or 1, cfg.top_k)
    return LabeledPart(np.concatenate(predicted) if predicted else np.zeros(0, np.int64),
                       np.concatenate(confidence) if confidence else np.zeros(0, np.float32),
                       num_classes, writer.close() if writer is not None else None)


SOFT_DIR = "soft_labels"  # a round folder's sub-folder of soft-label parts


def merge_parts(parts: list[LabeledPart], folder: Path, cfg: PseudoLabelConfig,
                temperature: float, meta: dict[str, Any],
                remove_stale: bool = False) -> PseudoLabels:
    """Every rank's `LabeledPart` (in rank order) -> the round's pseudo-labels; the soft
    labels' parts (under `folder / SOFT_DIR`) are memory-mapped and named in the meta. With
    `remove_stale`, other part files there (an earlier attempt's) are deleted."""
    records = [dict(p.soft_part, stem=f"{SOFT_DIR}/{p.soft_part['stem']}")
               for p in parts if p.soft_part is not None]
    num_classes = max(p.num_classes for p in parts)
    if remove_stale and (folder / SOFT_DIR).is_dir():
        keep = {Path(r["stem"]).name for r in records}
        for f in (folder / SOFT_DIR).glob("part-*.npy"):
            if f.name.split(".")[0] not in keep:
                f.unlink()
    soft = SoftLabels.open(folder, records, num_classes, verify=False) if records else None
    return select_labels(np.concatenate([p.predicted for p in parts]),
                         np.concatenate([p.confidence for p in parts]), soft, num_classes, cfg,
                         temperature, dict(meta, **({"soft_parts": records} if records else {})))


def select_labels(predicted: np.ndarray, confidence_all: np.ndarray, soft: SoftLabels | None,
                  num_classes: int, cfg: PseudoLabelConfig, temperature: float,
                  meta: dict[str, Any]) -> PseudoLabels:
    """Threshold and balance (`select`) every unlabeled image's class and confidence; under
    torchrun rank 0 selects and broadcasts the selection."""
    indices = distributed.once(lambda: select(
        predicted, confidence_all, num_classes, cfg.threshold, cfg.balance, cfg.per_class,
    ).astype(np.int64))  # fmt: skip
    meta = dict(meta, num_classes=num_classes, temperature=temperature, kind=cfg.kind,
                threshold=cfg.threshold, balance=cfg.balance, per_class=cfg.per_class,
                top_k=cfg.top_k)
    return PseudoLabels(indices, predicted.astype(np.int64),
                        confidence_all.astype(np.float32), meta, soft)


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


def stored_labels(candidates: list[Path], identity: tuple[str, str, float],
                  say: Callable[[str], None]) -> tuple[PseudoLabels, Path] | None:
    """The pseudo-labels of an earlier attempt at this round, from the first of `candidates`
    (`pseudo_labels.npz` files) that the same teacher made with the same settings: `identity` is
    (teacher sha256, settings fingerprint, temperature). Each one passed over is said why."""
    for path in candidates:
        if not path.is_file():
            continue
        try:
            labels = PseudoLabels.load(path)
        except SoftLabelError as e:
            say(f"not reusing {path}: cannot read it ({e})")
            continue
        meta = labels.meta
        if (meta.get("teacher_sha256"), meta.get("settings"), meta.get("temperature")) != identity:
            say(f"not reusing {path}: made by another teacher or with other settings")
            continue
        say(f"reusing the pseudo-labels in {path} (same teacher, same settings)")
        return labels, path
    return None
