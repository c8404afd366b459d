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

    @property
    def num_classes(self) -> int:
        return len(self.labeled.classes)

    @property
    def channels(self) -> int:
        return int(self.labeled.images.shape[-1])


def make_splits(source: Source, cfg: DataConfig, seed: int) -> Splits:
    """Class-balanced labeled subset of `labeled_per_class`; the rest of the pool is unlabeled."""
    rng = np.random.default_rng(seed)
    record: dict[str, Any] = {"seed": seed, "source": cfg.source}
    if source.unlabeled is not None:  # image_folder: the user's folders are the split
        labeled, unlabeled, test = source.pool, source.unlabeled, source.test
        assert test is not None
        record.update(labeled_dir=cfg.labeled_dir, unlabeled_dir=cfg.unlabeled_dir,
                      unlabeled_list=cfg.unlabeled_list, test_dir=cfg.test_dir)
        if cfg.unlabeled_limit is not None and len(unlabeled) > cfg.unlabeled_limit:
            unlabeled = unlabeled.subset(np.sort(rng.permutation(len(unlabeled))[:cfg.unlabeled_limit]))
    else:
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
        unlabeled_idx = order[~np.isin(order, labeled_idx)]
        if cfg.unlabeled_limit is not None:
            unlabeled_idx = unlabeled_idx[:cfg.unlabeled_limit]
        labeled, unlabeled = pool.subset(labeled_idx), pool.subset(unlabeled_idx)
        if cfg.test_limit is not None and len(test_idx) > cfg.test_limit:
            keep = np.sort(rng.permutation(len(test_idx))[:cfg.test_limit])
            test, test_idx = test.subset(keep), test_idx[keep]
        record.update(labeled=labeled_idx.tolist(), unlabeled=unlabeled_idx.tolist(),
                      test=np.asarray(test_idx).tolist())
    if len(unlabeled) == 0:
        raise DataError("the unlabeled set is empty: Noisy Student needs unlabeled images")
    pixels = labeled.images.reshape(-1, labeled.images.shape[-1]).astype(np.float64) / 255.0
    mean = pixels.mean(0).tolist()
    std = np.maximum(pixels.std(0), 1e-3).tolist()
    record.update(counts={"labeled": len(labeled), "unlabeled": len(unlabeled), "test": len(test)},
                  mean=mean, std=std, classes=labeled.classes,
                  image_shape=[int(v) for v in labeled.images.shape[1:]])  # H, W, C
    return Splits(labeled, unlabeled, test, mean, std, record)


def _stratified_take(labels: np.ndarray, order: np.ndarray, fraction: float) -> np.ndarray:
    """The first `fraction` of each class in `order` (at least one image per class)."""
    taken = []
    for c in np.unique(labels):
        members = order[labels[order] == c]
        taken.append(members[:max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(taken))


def _per_class(labels: np.ndarray, order: np.ndarray, k: int, classes: list[str]) -> np.ndarray:
    """The first `k` images of each class in `order`; a class with fewer is an error."""
    picked = []
    for c in range(len(classes)):
        members = order[labels[order] == c]
        if len(members) < k:
            raise DataError(f"class {classes[c]!r} has {len(members)} images in the pool, fewer "
                            f"than data.labeled_per_class = {k}")
        picked.append(members[:k])
    return np.sort(np.concatenate(picked))
