"""Seeded labeled / unlabeled / test splits, reproducible and recorded for the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DataConfig
from .sources import DataError, ImageSet, Source


@dataclass
class Splits:
    """What one run trains and evaluates on.

    `unlabeled.labels` are the hidden labels when the source has them: the loop never trains on
    them, they only measure pseudo-label accuracy. `mean`/`std` (per channel, on the 0..1 scale)
    normalize every model input; they are measured on the labeled images.
    """

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet
    mean: list[float]
    std: list[float]
    record: dict[str, Any]  # written to splits.json
    validation: ImageSet | None = None  # scores models for every choice; test is the report

    def scored(self) -> dict[str, ImageSet]:
        """The labeled sets models are scored on, by the name their metrics carry."""
        return {**({"val": self.validation} if self.validation is not None else {}),
                "test": self.test}

    @property
    def num_classes(self) -> int:
        return len(self.labeled.classes)

    @property
    def channels(self) -> int:
        return int(self.labeled.images.shape[-1])


def make_splits(source: Source, cfg: DataConfig, seed: int) -> Splits:
    """Class-balanced labeled subset of `labeled_per_class`, then a class-balanced validation
    set of `val_per_class`; the rest of the pool is unlabeled. Unlabeled images identical to a
    labeled, validation or test image are left out (image folders: by the reader)."""
    rng = np.random.default_rng(seed)
    record: dict[str, Any] = {"seed": seed, "source": cfg.source}
    if source.unlabeled is not None:  # image_folder: the user's folders are the split
        labeled, unlabeled, test, validation = (source.pool, source.unlabeled, source.test,
                                                source.validation)
        assert test is not None
        record.update(labeled_dir=cfg.labeled_dir, unlabeled_dir=cfg.unlabeled_dir,
                      unlabeled_list=cfg.unlabeled_list, test_dir=cfg.test_dir,
                      val_dir=cfg.val_dir)
        if cfg.unlabeled_limit is not None and len(unlabeled) > cfg.unlabeled_limit:
            unlabeled = unlabeled.subset(np.sort(rng.permutation(len(unlabeled))[:cfg.unlabeled_limit]))
    else:
        labeled, unlabeled, validation, test = _split_pool(source, cfg, rng, record)
    if len(unlabeled) == 0:
        raise DataError("the unlabeled set is empty: Noisy Student needs unlabeled images")
    pixels = labeled.images.reshape(-1, labeled.images.shape[-1]).astype(np.float64) / 255.0
    mean = pixels.mean(0).tolist()
    std = np.maximum(pixels.std(0), 1e-3).tolist()
    counts = {"labeled": len(labeled), "unlabeled": len(unlabeled), "test": len(test)}
    if validation is not None:
        counts["validation"] = len(validation)
    record.update(counts=counts, mean=mean, std=std, classes=labeled.classes,
                  image_shape=[int(v) for v in labeled.images.shape[1:]])  # H, W, C
    return Splits(labeled, unlabeled, test, mean, std, record, validation)


def _split_pool(source: Source, cfg: DataConfig, rng: np.random.Generator,
                record: dict[str, Any]) -> tuple[ImageSet, ImageSet, ImageSet | None, ImageSet]:
    """Labeled, unlabeled, validation (None when off) and test sets from a labeled pool; their
    pool indices (test: official indices) go into `record`."""
    pool = source.pool
    assert pool.labels is not None
    order = rng.permutation(len(pool))  # one shuffle decides everything below
    if source.test is None:
        test_idx = _stratified_take(pool.labels, order, cfg.test_fraction)
        order = order[~np.isin(order, test_idx)]
        test, record["test_from"] = pool.subset(test_idx), "pool"
    else:
        test, record["test_from"] = source.test, "official"
        test_idx = np.arange(len(test))
    labeled_idx = _per_class(pool.labels, order, cfg.labeled_per_class, pool.classes)
    order = order[~np.isin(order, labeled_idx)]
    per_class = cfg.labeled_per_class if cfg.val_per_class is None else cfg.val_per_class
    val_idx = _per_class(pool.labels, order, per_class, pool.classes, "data.val_per_class")
    unlabeled_idx = order[~np.isin(order, val_idx)]
    if cfg.test_limit is not None and len(test_idx) > cfg.test_limit:
        keep = np.sort(rng.permutation(len(test_idx))[:cfg.test_limit])
        test, test_idx = test.subset(keep), test_idx[keep]
    validation = pool.subset(val_idx) if len(val_idx) else None
    unlabeled_idx, record["leaks_excluded"] = _without_copies(
        pool, unlabeled_idx, {"labeled": pool.subset(labeled_idx), "validation": validation,
                              "test": test})
    if cfg.unlabeled_limit is not None:
        unlabeled_idx = unlabeled_idx[:cfg.unlabeled_limit]
    record.update(labeled=labeled_idx.tolist(), unlabeled=unlabeled_idx.tolist(),
                  validation=val_idx.tolist(), test=np.asarray(test_idx).tolist())
    return pool.subset(labeled_idx), pool.subset(unlabeled_idx), validation, test


def _without_copies(pool: ImageSet, unlabeled_idx: np.ndarray,
                    others: dict[str, ImageSet | None]) -> tuple[np.ndarray, dict[str, list[int]]]:
    """`unlabeled_idx` less the images whose pixels equal an image of another set (a leak: the
    run would train on a test image); the pool indices left out, by the set they copy."""
    seen = {name: {image.tobytes() for image in images.images}
            for name, images in others.items() if images is not None}
    excluded: dict[str, list[int]] = {}
    keep = np.ones(len(unlabeled_idx), bool)
    for i, index in enumerate(unlabeled_idx):
        data = pool.images[index].tobytes()
        copied = next((name for name, hashes in seen.items() if data in hashes), None)
        if copied is not None:
            keep[i] = False
            excluded.setdefault(copied, []).append(int(index))
    if excluded:
        listed = "; ".join(f"{len(v)} identical to {k} images (pool indices "
                           f"{', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})"
                           for k, v in excluded.items())
        print(f"data check: left out of the unlabeled set: {listed}", flush=True)
    return unlabeled_idx[keep], excluded


def _stratified_take(labels: np.ndarray, order: np.ndarray, fraction: float) -> np.ndarray:
    """The first `fraction` of each class in `order` (at least one image per class)."""
    taken = []
    for c in np.unique(labels):
        members = order[labels[order] == c]
        taken.append(members[:max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(taken))


def _per_class(labels: np.ndarray, order: np.ndarray, k: int, classes: list[str],
               key: str = "data.labeled_per_class") -> np.ndarray:
    """The first `k` images of each class in `order`; a class with fewer is an error."""
    picked = []
    for c in range(len(classes)):
        members = order[labels[order] == c]
        if len(members) < k:
            raise DataError(f"class {classes[c]!r} has {len(members)} images left in the pool, "
                            f"fewer than {key} = {k}")
        picked.append(members[:k])
    return np.sort(np.concatenate(picked))
