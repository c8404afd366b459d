"""Peers side by side: established SSL frameworks on our recipe's split, network and budget.

    python tools/peers.py setup
    python tools/peers.py run --dataset fashion_mnist --method fixmatch --seed 100 --minutes 55
    python tools/peers.py table runs/peers/*/result.json

`setup` makes its own venv, `.peers-venv/` in the repo root (never the project's `.venv`), with
torch 2.14.1 / torchvision 0.29.1, USB (`semilearn` 0.3.2), LAMDA-SSL 1.0.2 (its FixMatch, the
second opinion: `--method lamda-fixmatch`, tools/peers_lamda.py) and this project (editable). USB's
metadata asks for torchaudio, which has no release for torch 2.14, so USB is installed with
`--no-deps` and only what it imports when `import semilearn` runs: numpy, Pillow, scikit-learn,
scipy, scikit-image, tqdm, progress, ruamel.yaml, timm, transformers (<5: USB imports
`transformers.file_utils`), tensorboard (`torch.utils.tensorboard`), and wandb (this project's own
dependency). Two of its imports are stubbed at run time instead (see `cpu_shims`): torchaudio (no
release for torch 2.14; USB imports it for audio data sets only) and aim (an experiment tracker,
imported by USB's hook module, used only with `use_aim`; it would pull in a web server stack).

`run` re-executes itself inside `.peers-venv`, builds the split of `recipes/<dataset>.py` at the
given seed with the project's own `make_splits`, hands the recipe's final network (our registry)
to USB through its net builder, trains with USB's own algorithm, hooks and augmentations at its
published CIFAR-10 hyperparameters, with the number of iterations set from a timed warm-up so the
run fits `--minutes`, evaluates the EMA model on the test (and validation) images and writes one
result.json. docs/peers.md says what is the same as our recipe and what differs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".peers-venv"
USB_VERSION = "0.3.2"
LAMDA_VERSION = "1.0.2"  # FixMatch only, the second opinion (tools/peers_lamda.py)
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
USB_IMPORTS = ["numpy", "Pillow", "scikit-learn", "scipy", "scikit-image", "tqdm", "progress",
               "ruamel.yaml", "timm", "transformers<5", "tensorboard", "wandb"]
STUBBED = {"torchaudio": "no torchaudio release is built for torch 2.14; USB imports it for its "
                         "audio data sets only",
           "aim": "USB's hook module imports this tracker; it is used only with use_aim"}
DATASETS = ("fashion_mnist", "digits")
METHODS = ("fixmatch", "flexmatch", "pseudolabel", "meanteacher", "lamda-fixmatch")
LAMDA_METHODS = {"lamda-fixmatch"}  # run by tools/peers_lamda.py


class UsageError(Exception):
    """Bad input or a missing prerequisite: one message, exit status 2."""


# --------------------------------------------------------------------------------------- setup

def setup() -> None:
    """Create `.peers-venv` and install the peers' dependencies into it (never into `.venv`)."""
    import venv

    if not (VENV / "bin" / "python").exists():
        print(f"creating {VENV.relative_to(ROOT)}/")
        venv.create(VENV, with_pip=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install"]
    steps = [pip + TORCH_PINS,
             pip + ["--no-deps", f"semilearn=={USB_VERSION}", f"LAMDA-SSL=={LAMDA_VERSION}"],
             pip + USB_IMPORTS + TORCH_PINS,
             pip + ["-e", str(ROOT)] + TORCH_PINS]
    for cmd in steps:
        print("$ pip", " ".join("." if c == str(ROOT) else c for c in cmd[4:]), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise UsageError(f"setup: `{' '.join(cmd[2:])}` failed (see pip's output above)")
    check = subprocess.run([str(VENV / "bin" / "python"), str(Path(__file__)), "versions"],
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        raise UsageError("setup: .peers-venv cannot import USB under the shims:\n"
                         + check.stderr.strip()[-2000:])
    print(check.stdout.strip())
    print(f"done: {VENV.relative_to(ROOT)}/ holds torch, semilearn {USB_VERSION}, LAMDA-SSL "
          f"{LAMDA_VERSION} and this project; stubbed at run time: {', '.join(STUBBED)}")


# ------------------------------------------------------------------------- CPU shims, stubs

class CpuEvent:
    """`torch.cuda.Event` on the CPU: `record()` notes the wall clock, `elapsed_time` is in ms."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self.at: float | None = None

    def record(self, stream: Any = None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: CpuEvent) -> float:
        return 1000.0 * ((end.at or 0.0) - (self.at or 0.0))


class StubModule(types.ModuleType):
    """An imported-but-unused module that is not installed: any use of it names the stub. It
    has a spec (without a loader or a distribution), so `find_spec` answers and transformers'
    version check counts it as absent."""

    def __init__(self, name: str) -> None:
        import importlib.machinery

        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__}.{name}: {self.__name__} is a stub of tools/peers.py "
                          f"({STUBBED.get(self.__name__, 'not installed')})")


# One function per patched name: torch's compiler keeps a table of torch's functions by
# identity, and one function standing for two of them breaks its import.
def _tensor_cuda(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def _module_cuda(module: Any, *args: Any, **kwargs: Any) -> Any:
    return module


def _set_device(*args: Any, **kwargs: Any) -> None:
    return None


def _synchronize(*args: Any, **kwargs: Any) -> None:
    return None


SHIMS = ["Tensor.cuda and Module.cuda return the object unchanged (USB moves every batch, the "
         "model and FlexMatch's state with .cuda(gpu))",
         "torch.cuda.set_device and torch.cuda.synchronize do nothing",
         "torch.cuda.Event is a wall-clock event (USB's TimerHook and ParamUpdateHook time steps "
         "with it)",
         "torchaudio and aim are stub modules when not installed (USB imports them at import "
         "time; neither is used for images)"]


@contextlib.contextmanager
def cpu_shims() -> Iterator[list[str]]:
    """Run USB on the CPU without editing its files; everything is undone on exit.

    The whole list is `SHIMS`. FlexMatch's `ulb_dest_len` (the unlabeled set's size, which USB
    takes from its own data sets) is not a shim: `usb_args` passes it in the configuration.
    """
    import importlib.util

    import torch

    patches = [(torch.Tensor, "cuda", _tensor_cuda), (torch.nn.Module, "cuda", _module_cuda),
               (torch.cuda, "set_device", _set_device), (torch.cuda, "synchronize", _synchronize),
               (torch.cuda, "Event", CpuEvent)]
    stubs = [name for name in STUBBED
             if name not in sys.modules and importlib.util.find_spec(name) is None]
    with contextlib.ExitStack() as stack:
        for target, name, new in patches:
            stack.enter_context(mock.patch.object(target, name, new))
        for name in stubs:
            sys.modules[name] = StubModule(name)
        try:
            yield list(SHIMS)
        finally:
            for name in stubs:
                if isinstance(sys.modules.get(name), StubModule):
                    del sys.modules[name]


# ----------------------------------------------------------------- the split and the network

def recipe_splits(dataset: str, seed: int) -> tuple[Any, Any]:
    """The recipe's config at `seed` and the split our run makes from it (`make_splits`)."""
    import runpy

    from noisy_student.data import load_source, make_splits

    if dataset not in DATASETS:
        raise UsageError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    cfg = runpy.run_path(str(ROOT / "recipes" / f"{dataset}.py"))["make_config"]()
    cfg = dataclasses.replace(cfg, seed=seed)
    return cfg, make_splits(load_source(cfg.data), cfg.data, seed)


def index_sha256(indices: list[int]) -> str:
    """sha256 of an index list as compact JSON: `json.dumps(ids, separators=(",", ":"))`."""
    return hashlib.sha256(json.dumps([int(i) for i in indices],
                                     separators=(",", ":")).encode()).hexdigest()


def split_record(splits: Any) -> dict[str, Any]:
    """Sizes and index hashes of each set, to check against the run's splits.json."""
    names = ["labeled", "unlabeled", "test"] + (["validation"] if _validation(splits) else [])
    record = splits.record
    out: dict[str, Any] = {"seed": record.get("seed"), "source": record.get("source")}
    for name in names:
        out[name] = {"count": len(getattr(splits, name))}
        if isinstance(record.get(name), list):
            out[name]["sha256"] = index_sha256(record[name])
    return out


def _validation(splits: Any) -> Any:
    validation = getattr(splits, "validation", None)
    return validation if validation is not None and len(validation) else None


def plain_config(cfg: Any) -> Any:
    """The recipe's config without Noisy Student's model noise (dropout, stochastic depth)."""
    model = dataclasses.replace(cfg.model, drop_rate=0.0, drop_path_rate=0.0)
    return dataclasses.replace(cfg, model=model)


def usb_net(net: Any) -> Any:
    """One of our models with USB's interface: `forward(x) -> {'logits', 'feat'}`."""
    from torch import nn

    class UsbNet(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: Any, only_fc: bool = False, only_feat: bool = False,
                    **_: Any) -> Any:
            if only_fc:
                return self.net.head(x)
            feat = self.net.forward_features(x)
            if only_feat:
                return feat
            return {"logits": self.net.head(feat), "feat": feat}

    return UsbNet(net)


def recipe_network(cfg: Any, splits: Any) -> Any:
    """The recipe's final network (last ladder rung), from our registry, without model noise."""
    from noisy_student.ladder import build_model

    plain = plain_config(cfg)
    return build_model(plain, plain.rounds, splits)


def net_builder(cfg: Any, splits: Any) -> Any:
    """USB's `net_builder`: `recipe_network` with USB's interface."""

    def build(num_classes: int, pretrained: bool = False, pretrained_path: Any = None,
              **_: Any) -> Any:
        if num_classes != splits.num_classes:
            raise ValueError(f"USB asks for {num_classes} classes, the split has "
                             f"{splits.num_classes}")
        return usb_net(recipe_network(cfg, splits))

    return build


# ----------------------------------------------------------------- USB's published settings

# USB's config/classic_cv/<method>/<method>_cifar10_4000_0.yaml (semilearn 0.3.2): all but the
# number of iterations (1,048,576 there; set from the budget here) and the network.
COMMON_HP: dict[str, Any] = {
    "batch_size": 64, "eval_batch_size": 256, "ema_m": 0.999, "crop_ratio": 0.875,
    "optim": "SGD", "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "layer_decay": 1.0,
    "amp": False, "clip_grad": 0.0, "use_cat": True, "num_workers": 1, "num_warmup_iter": 0,
    "train_sampler": "RandomSampler"}
METHOD_HP: dict[str, dict[str, Any]] = {
    "fixmatch": {"uratio": 7, "ulb_loss_ratio": 1.0, "hard_label": True, "T": 0.5,
                 "p_cutoff": 0.95},
    "flexmatch": {"uratio": 7, "ulb_loss_ratio": 1.0, "hard_label": True, "T": 0.5,
                  "p_cutoff": 0.95, "thresh_warmup": True},
    "pseudolabel": {"uratio": 1, "ulb_loss_ratio": 1.0, "p_cutoff": 0.95, "unsup_warm_up": 0.4},
    "meanteacher": {"uratio": 1, "ulb_loss_ratio": 50.0, "unsup_warm_up": 0.4},
}
RANDAUGMENT = (3, 5)  # USB's strong augmentation: RandAugment(3, 5), then its Cutout


EMA_HORIZON_SHARE = 0.1  # the EMA's horizon 1 / (1 - ema_m), at most this share of the run


def ema_momentum(num_train_iter: int, published: float = COMMON_HP["ema_m"]) -> float:
    """USB's EMA momentum (0.999: a horizon of 1,000 steps in its 1,048,576), shortened on short
    runs so that the horizon is at most a tenth of them: min(0.999, 1 - 10 / iterations)."""
    return max(0.0, min(published, 1.0 - 1.0 / (EMA_HORIZON_SHARE * num_train_iter)))


def hyperparameters(method: str) -> dict[str, Any]:
    if method not in METHOD_HP:
        raise UsageError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    return {**COMMON_HP, **METHOD_HP[method]}


def usb_transforms(splits: Any, flip: bool, crop_ratio: float) -> dict[str, Any]:
    """USB's CIFAR transforms (crop with reflect padding, flip, RandAugment) on our images,
    normalised with the split's mean/std. One-channel images go through RandAugment as RGB
    (USB's Cutout paints an RGB colour) and come back to one channel."""
    from semilearn.datasets.augmentation import RandAugment
    from torchvision import transforms as T

    size = int(splits.labeled.images.shape[1])
    gray = splits.channels == 1
    crop = T.RandomCrop(size, padding=int(size * (1 - crop_ratio)), padding_mode="reflect")
    weak = [crop] + ([T.RandomHorizontalFlip()] if flip else [])
    rand = [T.Lambda(lambda im: im.convert("RGB")), RandAugment(*RANDAUGMENT),
            T.Grayscale(1)] if gray else [RandAugment(*RANDAUGMENT)]
    tail = [T.ToTensor(), T.Normalize(splits.mean, splits.std)]
    return {"weak": T.Compose(weak + tail), "strong": T.Compose(weak + rand + tail),
            "eval": T.Compose(tail)}


def usb_datasets(method: str, splits: Any, transforms: dict[str, Any]) -> dict[str, Any]:
    """USB `BasicDataset`s over the split: labeled, unlabeled (weak + strong), test, validation."""
    from semilearn import BasicDataset

    def images(s: Any) -> Any:
        return s.images[..., 0] if s.images.shape[-1] == 1 else s.images  # PIL wants HxW

    n = splits.num_classes
    sets = {"train_lb": BasicDataset(method, images(splits.labeled), splits.labeled.labels, n,
                                     transforms["weak"], is_ulb=False),
            "train_ulb": BasicDataset(method, images(splits.unlabeled), None, n,
                                      transforms["weak"], is_ulb=True,
                                      strong_transform=transforms["strong"]),
            "test": BasicDataset(method, images(splits.test), splits.test.labels, n,
                                 transforms["eval"], is_ulb=False),
            "probe": BasicDataset(method, images(splits.labeled), splits.labeled.labels, n,
                                  transforms["eval"], is_ulb=False)}
    validation = _validation(splits)
    if validation is not None:
        sets["validation"] = BasicDataset(method, images(validation), validation.labels, n,
                                          transforms["eval"], is_ulb=False)
    return sets


# ------------------------------------------------------------------------------ the budget

@dataclasses.dataclass
class Plan:
    """How many iterations fit the budget, and how they are cut into checkpointed epochs."""

    num_train_iter: int
    epochs: int
    iters_per_epoch: int
    sec_per_iter: float
    eval_estimate_s: float
    setup_s: float  # data, network, USB, before the warm-up
    warmup_s: float
    warmup_iters: int
    spec: dict[str, Any]  # dataset, method, seed, minutes: a resume must match them


def iteration_budget(budget_s: float, spent_s: float, sec_per_iter: float, eval_s: float,
                     margin: float = 0.05) -> int:
    """Iterations that fit: the budget less a safety margin (a share of it), the time spent so
    far and the final evaluation's estimate, at the warm-up's seconds per iteration."""
    if sec_per_iter <= 0:
        raise ValueError(f"seconds per iteration must be positive, got {sec_per_iter}")
    left = budget_s * (1.0 - margin) - spent_s - eval_s
    return max(0, math.floor(left / sec_per_iter))


def epoch_plan(num_iter: int, sec_per_iter: float, every_s: float = 120.0) -> tuple[int, int]:
    """(epochs, iterations per epoch): an epoch of about `every_s` seconds, as USB checkpoints
    and resumes at epoch ends; the total is rounded down to whole epochs."""
    per = max(1, min(num_iter, round(every_s / sec_per_iter)))
    return max(1, num_iter // per), per


def measured_plan(spec: RunSpec, stamps: list[float], probe_s: float, probe_images: int,
                  scored_images: int, setup_s: float, warmup_s: float,
                  checkpoints: bool = True) -> Plan:
    """The plan a warm-up's timings give, whichever framework was timed: seconds a step from its
    step `stamps`; the final evaluation's estimate from one pass over `probe_images` that took
    `probe_s`, scaled to the `scored_images` (test and validation) and doubled (EMA and trained
    weights); the iterations that fit what is left of `--minutes` (`iteration_budget`), in
    epochs of about `spec.checkpoint_s` seconds (`epoch_plan`), or in one without
    `checkpoints`."""
    sec_per_iter = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    eval_s = 2 * probe_s * scored_images / probe_images
    spent_s = setup_s + warmup_s
    num = iteration_budget(60.0 * spec.minutes, spent_s, sec_per_iter, eval_s)
    if num < 1:
        raise UsageError(f"--minutes {spec.minutes}: no training step fits (setup and warm-up "
                         f"took {spent_s:.0f} s, a step {sec_per_iter:.2f} s, the evaluation "
                         f"about {eval_s:.0f} s); give more minutes")
    epochs, per = epoch_plan(num, sec_per_iter, spec.checkpoint_s) if checkpoints else (1, num)
    print(f"[peers] warm-up: {sec_per_iter:.3f} s a step, evaluation ~{eval_s:.0f} s, setup and "
          f"warm-up {spent_s:.0f} s -> {epochs * per} iterations ({epochs} x {per}) fit "
          f"{spec.minutes} min less a 5% margin", flush=True)
    return Plan(epochs * per, epochs, per, sec_per_iter, eval_s, setup_s, warmup_s, len(stamps),
                spec_record(spec))


# ------------------------------------------------------------------------- USB's algorithm

@dataclasses.dataclass
class RunSpec:
    dataset: str
    method: str
    seed: int
    minutes: float
    out: Path
    checkpoint_s: float = 120.0  # training seconds between checkpoints (epoch ends)


def usb_args(spec: RunSpec, splits: Any, plan: Plan, resume: bool, name: str = "usb") -> Any:
    """USB's configuration (`semilearn.get_config`) for one run: its published settings, our
    data sizes, the planned iterations; the data set name is one USB does not know, so it builds
    no data of its own."""
    from semilearn import get_config

    config = {**hyperparameters(spec.method), "ema_m": ema_momentum(plan.num_train_iter),
              "algorithm": spec.method, "net": "noisy_student",
              "dataset": f"peers_{spec.dataset}", "num_classes": splits.num_classes,
              "num_labels": len(splits.labeled), "img_size": int(splits.labeled.images.shape[1]),
              "ulb_dest_len": len(splits.unlabeled), "lb_dest_len": len(splits.labeled),
              "num_train_iter": plan.num_train_iter, "epoch": plan.epochs,
              "num_eval_iter": plan.iters_per_epoch,
              "num_log_iter": max(1, plan.iters_per_epoch // 4), "seed": spec.seed,
              "save_dir": str(spec.out), "save_name": name, "resume": resume,
              "load_path": str(spec.out / name / "latest_model.pth"), "gpu": None,
              "use_tensorboard": False, "use_wandb": False, "use_aim": False,
              "distributed": False, "multiprocessing_distributed": False}
    return get_config(config)


def clock_hook(progress: Path | None, before_s: float, stop_after_s: float | None = None) -> Any:
    """A USB hook noting the wall clock after each step and, at each checkpoint (epoch end),
    the training seconds so far into `progress` (a resumed run counts them). With
    `stop_after_s` (the warm-up), training stops once that many seconds have passed since the
    first step and at least 3 steps are timed."""
    from semilearn.core.hooks import Hook

    class PeerClock(Hook):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.stamps: list[float] = []

        def seconds(self) -> float:
            return before_s + time.perf_counter() - self.start

        def after_train_step(self, algorithm: Any) -> None:
            self.stamps.append(time.perf_counter())
            if stop_after_s is not None and len(self.stamps) >= 3 and \
                    self.stamps[-1] - self.stamps[0] >= stop_after_s:
                algorithm.num_train_iter = algorithm.it + 1  # USB's loop ends after this step
            at_end = (self.every_n_iters(algorithm, algorithm.num_eval_iter)
                      or self.is_last_iter(algorithm))
            if progress is not None and at_end:
                _write_json(progress, {"it": algorithm.it + 1, "train_seconds": self.seconds()})

    return PeerClock()


def build_algorithm(args: Any, builder: Any, sets: dict[str, Any], clock: Any) -> Any:
    """USB's algorithm with our data loaders (made as USB makes its own), without its periodic
    evaluation (it keeps the best model on its eval set, the test set in USB's set-up; here the
    final EMA model is evaluated once), with the clock hook."""
    from semilearn import get_algorithm, get_data_loader

    alg = get_algorithm(args, builder, tb_log=None, logger=None)
    train = {"num_iters": args.num_train_iter, "num_epochs": args.epoch,
             "data_sampler": args.train_sampler}
    alg.loader_dict = {
        "train_lb": get_data_loader(args, sets["train_lb"], args.batch_size,
                                    num_workers=args.num_workers, **train),
        "train_ulb": get_data_loader(args, sets["train_ulb"], args.batch_size * args.uratio,
                                     num_workers=2 * args.num_workers, **train)}
    for name in ("test", "validation", "probe"):
        if name in sets:
            alg.loader_dict[name] = get_data_loader(args, sets[name], args.eval_batch_size,
                                                    data_sampler=None, drop_last=False,
                                                    num_workers=args.num_workers)
    alg._hooks = [h for h in alg._hooks if h.name != "EvaluationHook"]
    alg.hooks_dict.pop("EvaluationHook", None)
    alg.register_hook(clock, "PeerClock", "LOWEST")
    return alg


class NoEma:
    """Stands in for USB's EMA while the trained weights themselves are evaluated."""

    def apply_shadow(self) -> None:
        pass

    def restore(self) -> None:
        pass


def top1(alg: Any, name: str, ema: bool = True) -> float:
    """USB's own evaluation of one loader, with the EMA weights (what USB reports) or the
    trained weights (`ema=False`): top-1 as a fraction."""
    if ema:
        return float(alg.evaluate(name)[f"{name}/top-1-acc"])
    saved, alg.ema = alg.ema, NoEma()
    try:
        return float(alg.evaluate(name)[f"{name}/top-1-acc"])
    finally:
        alg.ema = saved


# ------------------------------------------------------------------------------------ a run

WARMUP_ITERS = 12  # timed steps of a throw-away copy of the run; the first is not counted
WARMUP_SHARE = 0.05  # ... or fewer (3 at least), once they took this share of the budget


def spec_record(spec: RunSpec) -> dict[str, Any]:
    return {"dataset": spec.dataset, "method": spec.method, "seed": spec.seed,
            "minutes": spec.minutes}


def warm_up(spec: RunSpec, splits: Any, sets: dict[str, Any], builder: Any,
            setup_s: float) -> Plan:
    """Time a throw-away copy of the run (same method, data, network, batch sizes) for
    WARMUP_ITERS steps (fewer past WARMUP_SHARE of the budget) and one evaluation pass over the
    labeled images; plan from those timings (`measured_plan`)."""
    import shutil

    start = time.perf_counter()
    probe = Plan(WARMUP_ITERS, 1, WARMUP_ITERS, 1.0, 0.0, 0.0, 0.0, 0, {})
    clock = clock_hook(None, 0.0, stop_after_s=WARMUP_SHARE * 60.0 * spec.minutes)
    alg = build_algorithm(usb_args(spec, splits, probe, False, "warmup"), builder, sets, clock)
    alg.train()
    t = time.perf_counter()
    top1(alg, "probe")
    probe_s = time.perf_counter() - t
    scored = len(sets["test"]) + (len(sets["validation"]) if "validation" in sets else 0)
    del alg
    shutil.rmtree(spec.out / "warmup", ignore_errors=True)
    return measured_plan(spec, clock.stamps, probe_s, len(sets["probe"]), scored, setup_s,
                         time.perf_counter() - start)


def load_plan(spec: RunSpec) -> tuple[Plan | None, float]:
    """A killed run's plan and its training seconds up to its last checkpoint, or (None, 0)."""
    path = spec.out / "plan.json"
    if not path.exists():
        return None, 0.0
    try:
        plan = Plan(**json.loads(path.read_text()))
        progress = spec.out / "progress.json"
        before = float(json.loads(progress.read_text())["train_seconds"]) \
            if progress.exists() else 0.0
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{path.parent}: unreadable plan.json or progress.json ({e}); delete "
                         "the folder to start again") from e
    if plan.spec != spec_record(spec):
        raise UsageError(f"{path.parent} holds a run of {plan.spec}, not {spec_record(spec)}; "
                         "choose another --out")
    if not (spec.out / "usb" / "latest_model.pth").exists():
        return plan, 0.0
    return plan, before


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_method(result: dict[str, Any]) -> str:
    """The `--method` that made a result: USB's by its own name, LAMDA-SSL's prefixed."""
    lamda = result["framework"] == "LAMDA-SSL"
    return f"lamda-{result['method']}" if lamda else result["method"]


def finished(spec: RunSpec, done: Path) -> dict[str, Any]:
    """The result already in `--out`, when it is this run's; another run's is an error."""
    try:
        result = json.loads(done.read_text())
        ran = {"dataset": result["dataset"], "method": run_method(result),
               "seed": result["seed"], "minutes": result["budget_minutes"]}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{done}: not a readable peer result ({e}); delete it to run "
                         "again") from e
    if ran != spec_record(spec):
        raise UsageError(f"{done} is the result of {ran}, not {spec_record(spec)}; choose "
                         "another --out")
    print(f"[peers] {done} exists: this run is done (delete it to run again)")
    return result


def run(spec: RunSpec) -> dict[str, Any]:
    """One peer run: the split, USB's algorithm on our network, the budget, the result."""
    t0 = time.perf_counter()
    done = spec.out / "result.json"
    if done.exists():
        return finished(spec, done)
    spec.out.mkdir(parents=True, exist_ok=True)
    provenance()  # the code this run starts from, whatever is committed while it runs
    with cpu_shims() as shims:
        seed_everything(spec.seed)
        cfg, splits = recipe_splits(spec.dataset, spec.seed)
        hp = hyperparameters(spec.method)
        sets = usb_datasets(spec.method, splits,
                            usb_transforms(splits, cfg.noise.flip, hp["crop_ratio"]))
        builder = net_builder(cfg, splits)
        plan, before = load_plan(spec)
        earlier = 0.0 if plan is None else plan.setup_s + plan.warmup_s + before
        if plan is None:
            plan = warm_up(spec, splits, sets, builder, time.perf_counter() - t0)
            _write_json(spec.out / "plan.json", dataclasses.asdict(plan))
        clock = clock_hook(spec.out / "progress.json", before)
        alg = build_algorithm(usb_args(spec, splits, plan, before > 0), builder, sets, clock)
        if before > 0:
            alg.load_model(str(spec.out / "usb" / "latest_model.pth"))
            print(f"[peers] resumed at iteration {alg.it} of {plan.num_train_iter}", flush=True)
        alg.train()
        train_s = clock.seconds()
        t = time.perf_counter()
        tops = {f"{name}{suffix}": top1(alg, name, ema=not suffix)
                for name in ("test", "validation") if name in sets for suffix in ("", "_raw")}
        eval_s = time.perf_counter() - t
        total = earlier + time.perf_counter() - t0
        seconds = {"warmup": plan.warmup_s, "train": train_s, "eval": eval_s,
                   "other": total - plan.warmup_s - train_s - eval_s, "total": total}
        result = make_result(spec, cfg, splits, plan, alg, seconds, tops, shims)
        result["resumed"] = earlier > 0
    _write_json(done, result)
    print(f"[peers] {spec.method} on {spec.dataset} seed {spec.seed}: test top-1 "
          f"{100 * tops['test']:.2f}% after {result['iterations']} iterations, "
          f"{result['minutes']['total']:.1f} min -> {done}")
    return result


# --------------------------------------------------------------------------------- records

def _write_json(path: Path, data: Any) -> None:
    """Write through a temporary file, so a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def provenance() -> dict[str, Any]:
    """The commit, dirty flag and package code (as they were when first asked: `run` asks at
    its start), versions and machine, as every benchmark result names them."""
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_runs

    return bench_runs.provenance()


def common_result(spec: RunSpec, cfg: Any, splits: Any, plan: Plan, seconds: dict[str, Any],
                  tops: dict[str, float], network: Any) -> dict[str, Any]:
    """What every peer's result holds, whatever its framework: the run, its minutes and plan,
    top-1 (EMA and trained weights), the split, the network; no absolute path of this
    machine."""
    from noisy_student.models import count_params

    return {
        "dataset": spec.dataset, "recipe": f"recipes/{spec.dataset}.py", "seed": spec.seed,
        "budget_minutes": spec.minutes,
        "minutes": {k: v / 60.0 for k, v in seconds.items()},
        "planned_iterations": plan.num_train_iter,
        "iteration_plan": {"sec_per_iter": plan.sec_per_iter, "warmup_iters": plan.warmup_iters,
                           "eval_estimate_s": plan.eval_estimate_s, "margin": 0.05,
                           "epochs": plan.epochs, "iters_per_epoch": plan.iters_per_epoch},
        "test_top1": tops["test"], "validation_top1": tops.get("validation"),
        "test_top1_raw": tops["test_raw"], "validation_top1_raw": tops.get("validation_raw"),
        "split": split_record(splits),
        "network": {"name": plain_config(cfg).model_for(cfg.rounds),
                    "params": count_params(network), "drop_rate": 0.0, "drop_path_rate": 0.0,
                    "in_chans": splits.channels,
                    "image_size": list(splits.labeled.images.shape[1:3])},
        "normalisation": {"mean": splits.mean, "std": splits.std},
        **provenance(),
    }


def make_result(spec: RunSpec, cfg: Any, splits: Any, plan: Plan, alg: Any,
                seconds: dict[str, Any], tops: dict[str, float], shims: list[str]) -> dict:
    """Everything one row of the side-by-side table needs, and what makes it checkable."""
    hp = hyperparameters(spec.method)
    return {
        "method": spec.method, "framework": "USB (semilearn)",
        "framework_version": importlib.metadata.version("semilearn"),
        **common_result(spec, cfg, splits, plan, seconds, tops, alg.model.net),
        "iterations": int(alg.it),
        "batch_size": {"labeled": hp["batch_size"],
                       "unlabeled": hp["batch_size"] * hp["uratio"],
                       "eval": hp["eval_batch_size"]},
        "hyperparameters": {**hp, "ema_m": ema_momentum(plan.num_train_iter),
                            "ema_m_published": hp["ema_m"], "num_train_iter": plan.num_train_iter,
                            "lr_schedule": "cosine, 7/16 of a cycle over num_train_iter",
                            "randaugment": list(RANDAUGMENT), "flip": bool(cfg.noise.flip)},
        "evaluated": "top1: USB's EMA weights after the last iteration (as USB reports); "
                     "top1_raw: the trained weights themselves",
        "shims": shims,
    }


RESULT_KEYS = ("method", "framework", "framework_version", "dataset", "seed", "test_top1",
               "minutes")


_BOTH_WEIGHTS = ("validation_top1", "validation_top1_raw", "test_top1_raw")


def _chosen_on_validation(r: dict[str, Any]) -> float:
    """Test top-1 of the weights (EMA or trained) with the higher validation top-1."""
    raw_wins = float(r["validation_top1_raw"]) > float(r["validation_top1"])
    return float(r["test_top1_raw"] if raw_wins else r["test_top1"])


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def peers_rows(results: list[dict[str, Any]],
               ours: dict[str, dict[int, dict[str, float]]] | None = None
               ) -> list[dict[str, Any]]:
    """One row per (dataset, framework, version, method): test top-1 (a fraction) and minutes as
    {mean, std (sample), n}, the seeds, validation top-1 when every run has one, and, given our
    recipe's runs (`ours[dataset][seed]`: "top1" and "minutes") on every seed the peer ran,
    the comparison on those same seeds: `vs_ours`, the peer's top-1 less ours seed by seed
    (paired), and `minutes_ratio`, the peer's mean minutes over ours.

    When every run has both weights' figures (`*_top1_raw`: the trained weights beside the EMA
    ones), `chosen_top1` is the test top-1 of the weights its own validation prefers, run by run
    (the EMA ones on a tie), and `vs_ours_chosen` that against ours: the peer at its best that
    validation can pick, which our recipe (no such choice) is not given."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"a peer result lacks {missing}")
        key = (r["dataset"], r["framework"], r["framework_version"], r["method"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (dataset, framework, version, method), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"dataset": dataset, "framework": framework, "framework_version": version,
               "method": method, "seeds": [r["seed"] for r in rs],
               "test_top1": _stats([float(r["test_top1"]) for r in rs]),
               "minutes": _stats([float(r["minutes"]["total"]) for r in rs]),
               "validation_top1": None}
        if all(r.get("validation_top1") is not None for r in rs):
            row["validation_top1"] = _stats([float(r["validation_top1"]) for r in rs])
        chosen = None
        if all(r.get(k) is not None for r in rs for k in _BOTH_WEIGHTS):
            chosen = [_chosen_on_validation(r) for r in rs]
            row["chosen_top1"] = _stats(chosen)
        mine = (ours or {}).get(dataset, {})
        if all(seed in mine for seed in row["seeds"]):
            row["vs_ours"] = _stats([float(r["test_top1"]) - mine[r["seed"]]["top1"]
                                     for r in rs])
            if chosen is not None:
                row["vs_ours_chosen"] = _stats([c - mine[r["seed"]]["top1"]
                                                for c, r in zip(chosen, rs)])
            row["minutes_ratio"] = row["minutes"]["mean"] / statistics.fmean(
                mine[seed]["minutes"] for seed in row["seeds"])
        rows.append(row)
    return rows


def read_results(paths: list[str]) -> list[dict[str, Any]]:
    """Peer result files, each checked: JSON, an object, with the keys a row needs."""
    results = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{p}: not a readable JSON file ({e})") from e
        if not isinstance(data, dict) or any(k not in data for k in RESULT_KEYS) or \
                not isinstance(data["minutes"], dict) or "total" not in data["minutes"]:
            raise UsageError(f"{p}: not a peer result (expected the keys "
                             f"{', '.join(RESULT_KEYS)} and minutes.total)")
        results.append(data)
    return results


def table(paths: list[str]) -> None:
    """Print the rows of `peers_rows` as a Markdown table (top-1 in %)."""
    def ms(s: dict[str, float] | None, scale: float = 1.0) -> str:
        if s is None:
            return "-"
        sd = f" ± {scale * s['std']:.2f}" if s["n"] > 1 else ""
        return f"{scale * s['mean']:.2f}{sd}"

    print("| data set | method | framework | seeds | test top-1 % | validation top-1 % "
          "| minutes |\n|---|---|---|---|---|---|---|")
    for r in peers_rows(read_results(paths)):
        print(f"| {r['dataset']} | {r['method']} | {r['framework']} {r['framework_version']} "
              f"| {', '.join(map(str, r['seeds']))} | {ms(r['test_top1'], 100)} "
              f"| {ms(r['validation_top1'], 100)} | {ms(r['minutes'])} |")


def lamda_driver() -> Any:
    """tools/peers_lamda.py, which imports this module as `peers`: one UsageError, one Plan."""
    sys.modules.setdefault("peers", sys.modules[__name__])
    import peers_lamda

    return peers_lamda


def versions() -> None:
    """What `.peers-venv` holds, imported the way `run` imports it."""
    with cpu_shims() as shims, lamda_driver().lamda_shims() as more:
        import semilearn  # noqa: F401  (the imports are the check)
        import torch
        from LAMDA_SSL.Algorithm.Classification.FixMatch import FixMatch  # noqa: F401

        print(f"python {platform.python_version()}, torch {torch.__version__}, semilearn "
              f"{importlib.metadata.version('semilearn')}, LAMDA-SSL "
              f"{importlib.metadata.version('LAMDA-SSL')}; shims: {len(shims) + len(more)}")


# ------------------------------------------------------------------------------------ main

def in_peers_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def reexec_in_venv(argv: list[str]) -> None:
    """Run this command again with `.peers-venv`'s python (replaces this process)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        raise UsageError(f"{VENV.name}/ is missing: run `python tools/peers.py setup` first")
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create .peers-venv and install the peers into it")
    sub.add_parser("versions", help="what .peers-venv holds")
    r = sub.add_parser("run", help="one peer run on our recipe's split and network")
    r.add_argument("--dataset", required=True, choices=DATASETS)
    r.add_argument("--method", required=True, choices=METHODS)
    r.add_argument("--seed", required=True, type=int)
    r.add_argument("--minutes", required=True, type=float,
                   help="wall-clock budget: setup, warm-up, training and evaluation")
    r.add_argument("--out", help="default: runs/peers/<dataset>-<method>-seed<N>")
    r.add_argument("--checkpoint-minutes", type=float, default=2.0,
                   help="training minutes between checkpoints (a killed run resumes there)")
    t = sub.add_parser("table", help="mean ± sd per method of result.json files")
    t.add_argument("results", nargs="+")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.command == "setup":
            setup()
        elif args.command == "table":
            table(args.results)
        elif not in_peers_venv():
            reexec_in_venv(argv)
        elif args.command == "versions":
            versions()
        else:
            for name in ("minutes", "checkpoint_minutes"):
                value = getattr(args, name)
                if not (value > 0 and math.isfinite(value)):
                    raise UsageError(f"--{name.replace('_', '-')} {value}: expected a positive "
                                     "number")
            out = Path(args.out or ROOT / "runs" / "peers" /
                       f"{args.dataset}-{args.method}-seed{args.seed}")
            spec = RunSpec(args.dataset, args.method, args.seed, args.minutes, out,
                           60.0 * args.checkpoint_minutes)
            (lamda_driver().run if args.method in LAMDA_METHODS else run)(spec)
    except UsageError as e:
        print(f"peers: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
