"""LAMDA-SSL's FixMatch, a second opinion on USB's: our recipe's split, network and budget.

    python tools/peers.py run --dataset fashion_mnist --method lamda-fixmatch --seed 100 \
        --minutes 37

Run by `tools/peers.py` inside `.peers-venv` (its `setup` installs LAMDA-SSL 1.0.2 with
`--no-deps`: its metadata asks for torchtext and torch-geometric, for its text and graph data
sets; torchtext has no release for torch 2.14 and the FixMatch path imports neither). The split,
the network, the budget plan and the result are `tools/peers.py`'s; what differs from a USB run:

- LAMDA-SSL's published FixMatch settings (its `Config/FixMatch.py`), `HP` below, with the
  iterations (2**20 there) set from a timed warm-up and the EMA horizon shortened as for USB.
- Its augmentations work on RGB images: a one-channel image goes in as three equal channels and
  the network sees their mean, the image itself (every augmentation used treats the channels
  alike: flips, crops, RandAugment's operations, a grey Cutout).
- LAMDA-SSL has no checkpoints: a killed run starts again.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import peers

# LAMDA-SSL 1.0.2's Config/FixMatch.py: all but the number of iterations and the network
HP: dict[str, Any] = {
    "batch_size": 64, "mu": 7, "threshold": 0.95, "lambda_u": 1.0, "T": 0.5, "lr": 0.03,
    "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "ema_decay": 0.999,
    "eval_batch_size": 64, "crop_padding": 0.125, "randaugment": [2, 10], "cutout": 0.5}
SHIMS = ["sklearn.utils._approximate_mode is sklearn.utils.extmath's (scikit-learn moved it; "
         "LAMDA-SSL's DataSplit imports it from sklearn.utils)",
         "sklearn.base.ClassifierMixin._estimator_type is 'classifier' (scikit-learn 1.6 replaced "
         "it with tags; LAMDA-SSL's classifiers read it)"]
CONFIGURATION = ["the cosine schedule is torch's CosineAnnealingLR called without `verbose`, "
                 "which torch 2.14 no longer takes (LAMDA-SSL's wrapper passes it)",
                 "data loaders have at least one worker (LAMDA-SSL passes prefetch_factor, "
                 "which torch refuses without workers): 1 labeled, 2 unlabeled, 1 evaluation"]


@contextlib.contextmanager
def lamda_shims() -> Iterator[list[str]]:
    """What LAMDA-SSL 1.0.2 needs of today's scikit-learn, patched in for the run (`SHIMS`)."""
    import sklearn.base
    import sklearn.utils
    import sklearn.utils.extmath

    with mock.patch.object(sklearn.utils, "_approximate_mode",
                           sklearn.utils.extmath._approximate_mode, create=True), \
            mock.patch.object(sklearn.base.ClassifierMixin, "_estimator_type", "classifier",
                              create=True):
        yield list(SHIMS)


def channel_mean(net: Any) -> Any:
    """`net` behind LAMDA-SSL's RGB augmentations: it sees the mean of the three channels."""
    from torch import nn

    class ChannelMean(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: Any) -> Any:
            return self.net(x.mean(1, keepdim=True))

    return ChannelMean(net)


def rgb(images: Any) -> Any:
    import numpy as np

    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def transforms(splits: Any, flip: bool) -> dict[str, Any]:
    """LAMDA-SSL's FixMatch augmentations (`HP`), weak and strong, and the tensor transform that
    follows them (normalised with the split's mean/std, per channel of the RGB images)."""
    from LAMDA_SSL.Augmentation.Vision.Cutout import Cutout
    from LAMDA_SSL.Augmentation.Vision.RandAugment import RandAugment
    from LAMDA_SSL.Augmentation.Vision.RandomCrop import RandomCrop
    from LAMDA_SSL.Augmentation.Vision.RandomHorizontalFlip import RandomHorizontalFlip
    from LAMDA_SSL.Transform.ToTensor import ToTensor
    from LAMDA_SSL.Transform.Vision.Normalization import Normalization
    from sklearn.pipeline import Pipeline

    times = 3 // splits.channels  # the images are RGB (`rgb`): a gray one's channel 3 times
    crop = [("RandomCrop", RandomCrop(padding=HP["crop_padding"], padding_mode="reflect"))]
    weak = ([("RandomHorizontalFlip", RandomHorizontalFlip())] if flip else []) + crop
    strong = weak + [("RandAugment", RandAugment(*HP["randaugment"], num_bins=10)),
                     ("Cutout", Cutout(v=HP["cutout"], fill=(127, 127, 127)))]
    tensor = Pipeline([("ToTensor", ToTensor(dtype="float", image=True)),
                       ("Normalization", Normalization(mean=list(splits.mean) * times,
                                                       std=list(splits.std) * times))])
    return {"weak": Pipeline(weak), "strong": Pipeline(strong), "tensor": tensor}


def fixmatch(splits: Any, network: Any, num_iter: int, flip: bool,
             stop_after_s: float | None = None) -> Any:
    """LAMDA-SSL's FixMatch at `HP` for `num_iter` iterations (cosine over them), noting the
    wall clock after each step in `.stamps`; with `stop_after_s` (the warm-up) it stops once
    that many seconds have passed since the first step and 3 steps are timed."""
    import torch
    from LAMDA_SSL.Algorithm.Classification.FixMatch import FixMatch
    from LAMDA_SSL.Dataloader.LabeledDataloader import LabeledDataLoader
    from LAMDA_SSL.Dataloader.UnlabeledDataloader import UnlabeledDataLoader
    from LAMDA_SSL.Dataset.LabeledDataset import LabeledDataset
    from LAMDA_SSL.Dataset.UnlabeledDataset import UnlabeledDataset
    from LAMDA_SSL.Opitimizer.SGD import SGD
    from LAMDA_SSL.Sampler.RandomSampler import RandomSampler
    from LAMDA_SSL.Scheduler.CosineAnnealingLR import CosineAnnealingLR
    from LAMDA_SSL.Transform.ToImage import ToImage

    class Cosine(CosineAnnealingLR):
        def init_scheduler(self, optimizer: Any) -> Any:
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.T_max,
                                                              eta_min=self.eta_min)

    class TimedFixMatch(FixMatch):
        def end_fit_batch(self, train_result: Any, *args: Any, **kwargs: Any) -> None:
            super().end_fit_batch(train_result, *args, **kwargs)
            self.stamps.append(time.perf_counter())
            if stop_after_s is not None and len(self.stamps) >= 3 and \
                    self.stamps[-1] - self.stamps[0] >= stop_after_s:
                self.num_it_total = self.it_total + 1  # LAMDA's loop ends after this step

    t = transforms(splits, flip)

    def data(kind: Any) -> Any:
        return kind(pre_transform=ToImage(), transform=t["tensor"])

    def evaluation() -> Any:
        return UnlabeledDataLoader(batch_size=HP["eval_batch_size"], num_workers=1)

    alg = TimedFixMatch(
        threshold=HP["threshold"], lambda_u=HP["lambda_u"], T=HP["T"], mu=HP["mu"],
        weight_decay=HP["weight_decay"],
        ema_decay=peers.ema_momentum(num_iter, HP["ema_decay"]),
        epoch=1, num_it_epoch=num_iter, num_it_total=num_iter, device="cpu",
        network=channel_mean(network) if splits.channels == 1 else network,
        optimizer=SGD(lr=HP["lr"], momentum=HP["momentum"], nesterov=HP["nesterov"]),
        scheduler=Cosine(T_max=num_iter, eta_min=0),
        augmentation={"weak_augmentation": t["weak"], "strong_augmentation": t["strong"]},
        labeled_dataset=data(LabeledDataset), unlabeled_dataset=data(UnlabeledDataset),
        valid_dataset=data(UnlabeledDataset), test_dataset=data(UnlabeledDataset),
        labeled_sampler=RandomSampler(replacement=True,
                                      num_samples=HP["batch_size"] * num_iter),
        unlabeled_sampler=RandomSampler(replacement=True),
        labeled_dataloader=LabeledDataLoader(batch_size=HP["batch_size"], num_workers=1,
                                             drop_last=True),
        unlabeled_dataloader=UnlabeledDataLoader(num_workers=2, drop_last=True),
        valid_dataloader=evaluation(), test_dataloader=evaluation(), evaluation=None)
    alg.stamps = []  # the wall clock after each step
    return alg


def fit(alg: Any, splits: Any) -> Any:
    return alg.fit(rgb(splits.labeled.images), splits.labeled.labels,
                   rgb(splits.unlabeled.images))


def top1(alg: Any, images: Any, ema: bool = True) -> float:
    """LAMDA-SSL's prediction on one set, with the EMA weights (what it predicts with) or the
    trained weights (`ema=False`): top-1 as a fraction."""
    saved = alg.ema
    alg.ema = saved if ema else None
    try:
        return float((alg.predict(rgb(images.images)) == images.labels).mean())
    finally:
        alg.ema = saved


def warm_up(spec: peers.RunSpec, splits: Any, network: Any, flip: bool,
            setup_s: float) -> peers.Plan:
    """`peers.warm_up` for LAMDA-SSL: a throw-away run timed for WARMUP_ITERS steps (fewer past
    WARMUP_SHARE of the budget) and one evaluation over the labeled images; the plan from those
    timings (`peers.measured_plan`), in one epoch (LAMDA-SSL has no checkpoints)."""
    start = time.perf_counter()
    alg = fixmatch(splits, network, peers.WARMUP_ITERS, flip,
                   stop_after_s=peers.WARMUP_SHARE * 60.0 * spec.minutes)
    fit(alg, splits)
    t = time.perf_counter()
    top1(alg, splits.labeled)
    probe_s = time.perf_counter() - t
    scored = [splits.test] + ([v] if (v := peers._validation(splits)) is not None else [])
    return peers.measured_plan(spec, alg.stamps, probe_s, len(splits.labeled),
                               sum(map(len, scored)), setup_s, time.perf_counter() - start,
                               checkpoints=False)


def run(spec: peers.RunSpec) -> dict[str, Any]:
    """One LAMDA-SSL FixMatch run: the split, the network, the budget, the result."""
    t0 = time.perf_counter()
    done = spec.out / "result.json"
    if done.exists():
        return peers.finished(spec, done)
    spec.out.mkdir(parents=True, exist_ok=True)
    peers.provenance()  # the code this run starts from, whatever is committed while it runs
    with lamda_shims() as shims:
        peers.seed_everything(spec.seed)
        cfg, splits = peers.recipe_splits(spec.dataset, spec.seed)
        network = peers.recipe_network(cfg, splits)
        flip = bool(cfg.noise.flip)
        plan = warm_up(spec, splits, network, flip, time.perf_counter() - t0)  # LAMDA copies it
        alg = fixmatch(splits, network, plan.num_train_iter, flip)
        t = time.perf_counter()
        fit(alg, splits)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        sets = {"test": splits.test, "validation": peers._validation(splits)}
        tops = {f"{name}{suffix}": top1(alg, images, ema=not suffix)
                for name, images in sets.items() if images is not None
                for suffix in ("", "_raw")}
        eval_s = time.perf_counter() - t
    total = time.perf_counter() - t0
    seconds = {"warmup": plan.warmup_s, "train": train_s, "eval": eval_s,
               "other": total - plan.warmup_s - train_s - eval_s, "total": total}
    result = {**peers.common_result(spec, cfg, splits, plan, seconds, tops, network),
              "framework": "LAMDA-SSL", "framework_version": importlib.metadata.version(
                  "LAMDA-SSL"),
              "method": "fixmatch", "iterations": int(alg.it_total),
              "batch_size": {"labeled": HP["batch_size"],
                             "unlabeled": HP["batch_size"] * HP["mu"],
                             "eval": HP["eval_batch_size"]},
              "hyperparameters": {**HP, "ema_decay": peers.ema_momentum(plan.num_train_iter,
                                                                        HP["ema_decay"]),
                                  "ema_decay_published": HP["ema_decay"],
                                  "num_it_total": plan.num_train_iter,
                                  "lr_schedule": "cosine to 0 over num_it_total", "flip": flip},
              "evaluated": "top1: LAMDA-SSL's prediction, with its EMA weights; top1_raw: the "
                           "trained weights themselves",
              "shims": shims + CONFIGURATION, "resumed": False}
    peers._write_json(done, result)
    print(f"[peers] LAMDA-SSL fixmatch on {spec.dataset} seed {spec.seed}: test top-1 "
          f"{100 * tops['test']:.2f}% after {result['iterations']} iterations, "
          f"{result['minutes']['total']:.1f} min -> {done}")
    return result
