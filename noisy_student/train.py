"""Train one model (round 0's teacher or a round's student): optimizer, schedule, EMA, AMP, steps.

Each step draws `batch_size` noised labeled images and, for a student, `unlabeled_ratio *
batch_size` noised pseudo-labeled images; both go through the model in one forward pass (shared
batch-norm statistics, as in the official implementation). An epoch is one pass over the
pseudo-labeled items (students) or over the labeled images (round 0's teacher).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler

from .errors import TrainingError  # noqa: F401 (raised here, importable from here)
from . import distributed
from .checkpoint import CheckpointError, TrainCheckpoints
from .config import TrainConfig
from .data import NoisedDataset, TwoViews, normalize
from .data.datasets import collate
from .losses import StudentLoss
from .optim import build_optimizer, freeze_backbone, lr_factor, train_mode
from .signals import GracefulStop, Interrupted
from .tracking import Tracker, Progress


BatchNoiseFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # uint8 batch -> uint8


class StreamSampler(Sampler):
    """An endless stream of `(pass, index)` keys: a seeded reshuffle of range(n) per pass.

    The pass number travels with each key, so the dataset draws item noise from
    (seed, pass, index) in any worker, and the stream is a pure function of the seed: resuming
    at item `start` of it gives the same data order as never stopping.
    """

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p, skip = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            for i in torch.randperm(self.n, generator=g)[skip:].tolist():
                yield p, i
            p, skip = p + 1, 0


class RankSampler(Sampler):
    """Rank r's part of each global batch of a stream: items [r*b, (r+1)*b) of every `batch`,
    b = batch / world. The ranks together see exactly the single-process batches."""

    def __init__(self, stream: StreamSampler, batch: int, rank: int = 0, world: int = 1) -> None:
        self.stream, self.batch, self.rank, self.world = stream, batch, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        it, b = iter(self.stream), self.batch // self.world
        while True:
            keys = [next(it) for _ in range(self.batch)]
            yield from keys[self.rank * b:(self.rank + 1) * b]


def _stream(dataset: NoisedDataset, batch_size: int, seed: int, workers: int,
            pin: bool, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the global batches of `batch_size`, from item `start` on."""
    world = distributed.world_size() if distributed.active() else 1
    sampler = RankSampler(StreamSampler(len(dataset), seed, start), batch_size,
                          distributed.rank() if world > 1 else 0, world)
    loader = DataLoader(dataset, batch_size=batch_size // world, sampler=sampler,
                        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                        collate_fn=collate)
    return iter(loader)


def _each(logits: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`fn` applied to the logits, or to each of a (class, distillation) pair."""
    return tuple(fn(z) for z in logits) if isinstance(logits, tuple) else fn(logits)


def late_fusion(logits: Any) -> torch.Tensor:
    """The class logits of a training forward: a distilled ViT's (class, distillation) pair
    averaged, as its eval mode does (DeiT's late fusion); any other model's as they are."""
    return sum(logits) / 2 if isinstance(logits, tuple) else logits


@dataclass
class Mixup:
    """One step's mixup of the pseudo-labeled images (Zhang et al. 2018, `noise.mixup`): image i
    after the `n_labeled` labeled ones becomes lam * x_i + (1 - lam) * x_perm[i], and its loss
    lam * D(z_i, q_i) + (1 - lam) * D(z_i, q_perm[i])."""

    lam: float
    perm: torch.Tensor  # [B_pse] indices into the pseudo-labeled part

    @classmethod
    def draw(cls, alpha: float, n: int, seed: int, step: int, rank: int) -> Mixup:
        """lam ~ Beta(alpha, alpha) and a permutation of n, drawn from (seed, step, rank): a
        resumed phase draws what it would have drawn."""
        rng = np.random.default_rng([seed, step, rank])
        return cls(float(rng.beta(alpha, alpha)), torch.from_numpy(rng.permutation(n)))

    def images(self, x: torch.Tensor, n_labeled: int) -> torch.Tensor:
        rest = x[n_labeled:]
        mixed = rest.lerp(rest[self.perm.to(x.device)], 1 - self.lam)
        return torch.cat([x[:n_labeled], mixed])  # keeps x's memory format

    def loss(self, loss_at: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, Any]]],
             targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss and its parts, mixed as the images were, from `loss_at(targets)`."""
        loss, parts = loss_at(targets)
        other, other_parts = loss_at(targets[self.perm.to(targets.device)])
        mix = lambda a, b: self.lam * a + (1 - self.lam) * b  # noqa: E731
        return mix(loss, other), {k: mix(v, other_parts[k]) for k, v in parts.items()}


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states, as plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _over_ranks(sums: dict[str, float], correct: int, seen: int,
                world: int) -> tuple[dict[str, float], int, int]:
    """An epoch's loss sums (mean over ranks), correct count and images (totals over ranks)."""
    if world == 1:
        return sums, correct, seen
    parts = distributed.gather((sums, correct, seen))
    mean = {k: sum(p[0][k] for p in parts) / world for k in sums}
    return mean, sum(p[1] for p in parts), sum(p[2] for p in parts)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step's outcome, as device tensors until read: `step` (its number, before
    it ran), the epoch, the images of the epoch so far, the lr it used, the labeled images it
    classified right, the loss and gradient norm, whether both were finite (the step applied),
    and the loss parts."""

    step: int
    epoch: int
    seen: int
    lr: float
    correct: torch.Tensor
    loss: torch.Tensor
    norm: torch.Tensor
    finite: torch.Tensor
    parts: dict[str, torch.Tensor]

    def why_skipped(self) -> str:
        return (f"the loss is {self.loss.item()}" if not torch.isfinite(self.loss)
                else f"the gradient norm is {self.norm.item()}")


@dataclass(frozen=True)
class PhaseGeometry:
    """How long one phase trains and on how many images per step (global, over the ranks)."""

    epochs: int
    steps_per_epoch: int
    batch_labeled: int
    batch_pseudo: int  # pseudo-labeled (or consistency) items; 0 for a labels-only teacher

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def phase_geometry(cfg: TrainConfig, n_labeled: int, n_pseudo: int | None, epochs: int,
                   min_steps: int = 0, world: int = 1,
                   n_unlabeled: int | None = None) -> PhaseGeometry:
    """A phase's batches and length: an epoch is one pass over the pseudo-labeled items (a
    student) or the labeled images (round 0's teacher, also when it takes `n_unlabeled`
    images for its consistency loss, `unlabeled_ratio` times its labeled batch per step);
    `epochs` is raised until the phase has at least `min_steps` steps. Each rank takes 1/world
    of every batch (rounded down to a multiple of it)."""
    b_lab = min(cfg.batch_size, n_labeled) // world * world
    extra = n_pseudo if n_pseudo is not None else n_unlabeled
    b_pse = (min(cfg.batch_size * cfg.unlabeled_ratio, extra) // world * world
             if extra is not None else 0)
    n, b = (n_pseudo, b_pse) if n_pseudo is not None else (n_labeled, b_lab)
    per_epoch = math.ceil(n / b) if b else 0
    if per_epoch:
        epochs = max(epochs, math.ceil(min_steps / per_epoch))
    return PhaseGeometry(epochs, per_epoch, b_lab, b_pse)


@dataclass
class TrainResult:
    model: nn.Module  # the weights to evaluate and to teach with: the EMA when it is on
    steps: int
    # training time, over every process of a resumed run (what a crash lost after the last
    # checkpoint is not counted: those steps are trained again and counted then)
    seconds: float
    images_per_second: float  # this process's
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    resumed_from: str | None = None  # the checkpoint training continued from
    # where `seconds` went: waiting for noised batches, evaluating, writing checkpoints
    timing: dict[str, float] = field(default_factory=dict)
    seconds_before: float = 0.0  # the part of `seconds` earlier processes spent (checkpointed)


@dataclass
class TrainData:
    """What a phase trains on and for how long: the labeled images, a student's pseudo-labeled
    items, the epochs (raised to reach `min_steps`), the seed of its data order and noise."""

    labeled: NoisedDataset
    pseudo: NoisedDataset | None = None
    epochs: int = 1
    min_steps: int = 0
    seed: int = 0
    num_workers: int = 0
    # noise.backend = "torch": the datasets deliver clean images and each uint8 batch is noised
    # on the training device, from a generator seeded by (seed, step, rank)
    batch_noise: BatchNoiseFn | None = None
    # round 0's teacher with a consistency loss: unlabeled (weak, strong) view pairs; the
    # targets of the strong views are the model's own predictions on the weak ones
    views: TwoViews | None = None
    weak_batch_noise: BatchNoiseFn | None = None  # the batch noise of the weak views
    mixup: float = 0.0  # a student's: Beta(mixup, mixup) mixup of its pseudo-labeled images


@dataclass
class TrainHooks:
    """Where a phase reports, saves and listens; each is optional."""

    tag: str = "train"
    tracker: Tracker = field(default_factory=lambda: Tracker(None))
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None  # e.g. val_top1, val_ece
    eval_times: int = 5  # evaluations spread over the epochs
    checkpoints: TrainCheckpoints | None = None  # with .resume: continue from the newest
    stop: GracefulStop | None = None  # a signal ends training after the step, checkpointed


@dataclass
class TrainState:
    """A phase's progress: saved in every checkpoint (as "run") and restored on resume."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's loss parts, summed
    correct: int = 0  # this epoch's labeled images classified right (in train mode)
    good: int = 0  # this epoch's steps that were not skipped
    skipped: int = 0  # non-finite steps so far
    seconds: float = 0.0  # training time so far, over every process, at the last save
    timing: dict[str, float] = field(default_factory=dict)  # its parts

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class Clock:
    """Training time over every process of a resumed run: the earlier processes' (from the
    checkpoint) plus this one's, with its parts (waiting for data, evaluating, checkpointing)."""

    def __init__(self, state: TrainState) -> None:
        self.start = time.perf_counter()
        self.before = {"seconds": state.seconds, **state.timing}
        self.parts = {"data_wait": 0.0, "evaluate": 0.0, "checkpoint": 0.0}

    def total(self) -> dict[str, float]:
        now = {"seconds": time.perf_counter() - self.start, **self.parts}
        return {k: self.before.get(k, 0.0) + v for k, v in now.items()}


def train_model(model: nn.Module, loss_fn: StudentLoss, cfg: TrainConfig, device: torch.device,
                data: TrainData, hooks: TrainHooks | None = None,
                pretrained: bool = False) -> TrainResult:
    """Train `model` for one phase; returns the weights to use next, with per-epoch history.
    `pretrained`: the model starts from pretrained weights (`cfg.finetune`, `backbone_lr_scale`)."""
    return Trainer(model, loss_fn, cfg, device, data, hooks or TrainHooks(), pretrained).fit()


class Trainer:
    """One phase's training: set up, restore, then steps and epoch ends until done.

    Each step draws `batch_size` noised labeled images and, for a student, `unlabeled_ratio *
    batch_size` noised pseudo-labeled ones, through the model in one forward pass. The whole
    state is checkpointed at every epoch end and at the configured interval; resuming gives the
    same epoch, step, data order and random state as never stopping."""

    def __init__(self, model: nn.Module, loss_fn: StudentLoss, cfg: TrainConfig,
                 device: torch.device, data: TrainData, hooks: TrainHooks,
                 pretrained: bool = False) -> None:
        self.loss_fn, self.cfg, self.device, self.data, self.hooks = (loss_fn, cfg, device,
                                                                      data, hooks)
        self.cuda, self.bf16 = device.type == "cuda", cfg.bf16(device.type)
        self.world = distributed.world_size() if distributed.active() else 1
        self.main = not distributed.active() or distributed.is_main_process()
        self.geometry = g = phase_geometry(
            cfg, len(data.labeled), None if data.pseudo is None else len(data.pseudo),
            data.epochs, data.min_steps, self.world,
            None if data.views is None else len(data.views))
        if g.batch_labeled == 0 or (self._extra() is not None and g.batch_pseudo == 0):
            raise TrainingError(f"{hooks.tag}: train.batch_size = {cfg.batch_size} is smaller "
                                f"than the {self.world} ranks; each rank needs at least one "
                                "image per step")
        self.frozen = pretrained and cfg.finetune == "head"
        self.model = self._place(model)
        self.optimizer = build_optimizer(self.model, cfg, pretrained)
        warmup = int(cfg.warmup_fraction * g.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, g.steps, warmup))
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                  use_buffers=True) if cfg.ema_decay > 0 else None)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self.net = (nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if self.cuda else None)
            if self.world > 1 else self.model)  # gradients averaged over the ranks' shares
        if cfg.compile:  # self.model keeps the plain weights: checkpoints load without compiling
            self.net = torch.compile(self.net)
        self.state, self.resumed_from = TrainState(), None
        # with a fused optimizer (CUDA's) a step's outcome is read, a wait for the GPU, once
        # per log line, not per step: the optimizer skips a non-finite step on the device
        self.pending: list[StepRecord] = []
        self.defer = self.ema is None and any(g.get("fused") for g in self.optimizer.param_groups)

    def _place(self, model: nn.Module) -> nn.Module:
        """The model on the device, in its memory format, with SyncBatchNorm and a frozen
        backbone when asked."""
        model.to(self.device)
        if self.cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.world > 1 and self.cfg.sync_batchnorm:  # the same parameters, SyncBatchNorm
            if not self.cuda:
                raise TrainingError("train.sync_batchnorm needs CUDA devices (PyTorch's "
                                    "SyncBatchNorm has no CPU kernels); set it to false for "
                                    "gloo runs")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.frozen:
            freeze_backbone(model)
        return model

    # ---- restore, run, save ----------------------------------------------------------------
    def fit(self) -> TrainResult:
        saved = self._restore()
        d, g = self.data, self.geometry
        step = self.state.step
        self.streams = (
            _stream(d.labeled, g.batch_labeled, d.seed, d.num_workers, self.cuda,
                    start=step * g.batch_labeled),
            _stream(self._extra(), g.batch_pseudo, d.seed + 1, d.num_workers, self.cuda,
                    start=step * g.batch_pseudo) if self._extra() is not None else None)
        if saved is not None:  # after the streams, whose creation draws from torch's RNG
            self._restore_rng(saved["rng"])
        self.clock, start_step = Clock(self.state), step
        train_mode(self.model, self.frozen)
        for epoch in range(step // g.steps_per_epoch, g.epochs):
            self._epoch(epoch)
        elapsed, total = time.perf_counter() - self.clock.start, self.clock.total()
        seconds = total.pop("seconds")
        per_second = ((self.state.step - start_step) * (g.batch_labeled + g.batch_pseudo)
                      / max(elapsed, 1e-9))
        return TrainResult(self.ema.module if self.ema is not None else self.model, g.steps,
                           seconds, per_second, self.state.history, self.resumed_from,
                           {k: round(v, 3) for k, v in total.items()},
                           self.clock.before["seconds"])

    def _restore(self) -> dict[str, Any] | None:
        """The newest valid checkpoint's state loaded into the model, optimizer, schedule, EMA
        and progress; None when not resuming or there is none."""
        ck = self.hooks.checkpoints
        saved = ck.latest() if ck is not None and ck.resume else None
        if saved is None:
            return None
        path, state = saved
        geometry = dataclasses.asdict(self.geometry)
        if state.get("geometry") != geometry:
            raise CheckpointError(f"{path}: made for {state.get('geometry')}, but the config now "
                                  f"gives {geometry}; resume with the saved config, or start "
                                  "the round over with --from-round")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.state, self.resumed_from = TrainState.from_dict(state["run"]), str(path)
            if not isinstance(state["rng"], list) or not state["rng"]:
                raise ValueError("no random state")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its state does not fit this phase "
                                  f"({type(e).__name__}: {e}); move {path.parent} aside to start "
                                  "the phase over") from e
        self.hooks.tracker.log("resume", phase=self.hooks.tag, step=self.state.step,
                               checkpoint=str(path))
        return state

    def _restore_rng(self, rngs: list[dict[str, Any]]) -> None:
        """This rank's random state from the checkpoint (one state per rank)."""
        if len(rngs) != self.world and self.main:
            print(f"resume: the checkpoint holds the random state of {len(rngs)} ranks, this "
                  f"run has {self.world}: data order is the same, dropout randomness is not",
                  flush=True)
        set_rng_state(rngs[min(distributed.rank(), len(rngs) - 1)])

    def _save(self, epoch: int) -> Path:
        """A checkpoint of the whole state: every rank gives its random state, rank 0 writes."""
        ck = self.hooks.checkpoints
        assert ck is not None
        self._read_steps()  # the saved sums and counts include every step taken
        t, total = time.perf_counter(), self.clock.total()
        self.state.seconds, self.state.timing = total.pop("seconds"), total
        rngs = distributed.gather(rng_state()) if self.world > 1 else [rng_state()]
        step, g = self.state.step, self.geometry
        path = ck.folder / f"step-{step:08d}.ckpt"
        if self.main:
            path = ck.save(step, epoch, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "scaler": None,  # bf16 autocast needs no grad scaler
                "rng": rngs, "geometry": dataclasses.asdict(g),
                "run": dataclasses.asdict(self.state),
                "data_position": {"labeled": step * g.batch_labeled,
                                  "pseudo": step * g.batch_pseudo}})
        self.clock.parts["checkpoint"] += time.perf_counter() - t
        return path

    # ---- an epoch and its steps ------------------------------------------------------------
    def _epoch(self, epoch: int) -> None:
        g, tag = self.geometry, self.hooks.tag
        first = self.state.step % g.steps_per_epoch
        progress = Progress((g.steps_per_epoch - first) * (g.batch_labeled + g.batch_pseudo)
                            // self.world, f"{tag} epoch {epoch + 1}/{g.epochs}",
                            enabled=self.main)
        start, seen = time.perf_counter(), 0
        self.progress, self.last_log = progress, (start, 0)  # time and images at the last line
        for _ in range(first, g.steps_per_epoch):
            x, y_lab, q_pse = self._next_batch()
            seen += len(x)
            self._step(x, y_lab, q_pse, epoch, seen)
            progress.update(len(x))
            if not self.defer or self.state.step % self.cfg.log_every == 0:
                self._read_steps()
            self._stop_or_save_mid_epoch(epoch)
        self._read_steps()
        progress.close()
        self._end_epoch(epoch, time.perf_counter() - start, seen)

    def _extra(self) -> NoisedDataset | TwoViews | None:
        """What each step takes besides labeled images: pseudo-labeled items or view pairs."""
        return self.data.pseudo if self.data.pseudo is not None else self.data.views

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The step's images (labeled first), noised and normalized on the device, the labeled
        images' classes and the other items' targets: their pseudo-labels, or for view pairs
        the model's own predictions on the weak views (the strong views are trained on)."""
        t, (labeled, extra), q_pse, weak = time.perf_counter(), self.streams, None, None
        x, y_lab = next(labeled)
        parts = [x]
        if extra is not None:
            x_extra, q_pse = next(extra)
            if self.data.views is not None:  # [b, 2, C, H, W]: (weak, strong) pairs
                weak, x_extra, q_pse = x_extra[:, 0], x_extra[:, 1], None
            parts.append(x_extra)
        self.clock.parts["data_wait"] += time.perf_counter() - t
        if q_pse is not None:
            q_pse = q_pse.to(self.device, non_blocking=True)
        # each (pinned) part travels on its own, then [B_lab + B_pse, C, H, W] on the device: a
        # cat on the host makes pageable memory, whose copy to a GPU waits for its queue
        x = torch.cat([part.to(self.device, non_blocking=True) for part in parts])
        x = self._on_device(x, self.data.batch_noise, salt=0)
        if weak is not None:
            q_pse = self._own_targets(self._on_device(weak, self.data.weak_batch_noise, salt=1))
        return x, y_lab.to(self.device, non_blocking=True), q_pse

    def _on_device(self, x: torch.Tensor, batch_noise: BatchNoiseFn | None,
                   salt: int) -> torch.Tensor:
        """uint8 [B, C, H, W] -> on the device, batch-noised (noise.backend = "torch", from a
        generator seeded by (seed, step, rank, salt)) and normalized, in the memory format."""
        x = x.to(self.device, non_blocking=True)  # uint8 [B, C, H, W]
        if batch_noise is not None:  # data time (host time: on a GPU, launches)
            t = time.perf_counter()
            g = torch.Generator(self.device).manual_seed(
                (self.data.seed * 1_000_003 + self.state.step) * 4099 + distributed.rank()
                + salt * 7919)
            x = batch_noise(x, g)
            self.clock.parts["data_wait"] += time.perf_counter() - t
        x = normalize(x, self.data.labeled.mean, self.data.labeled.std)  # float32 [B, C, H, W]
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    @torch.no_grad()
    def _own_targets(self, weak: torch.Tensor) -> torch.Tensor:
        """Probabilities [B, C] the model gives the weak views un-noised: in eval mode (no
        dropout or stochastic depth, batch norm's running statistics) and without a gradient,
        as a Noisy Student teacher labels, but online (FixMatch's weak-view targets)."""
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            logits = self.model(weak)
        train_mode(self.model, self.frozen)
        return late_fusion(logits).float().softmax(1)

    def _step(self, x: torch.Tensor, y_lab: torch.Tensor, q_pse: torch.Tensor | None,
              epoch: int, seen: int) -> None:
        """One optimizer step, skipped when the loss or gradient is not finite (counted when
        its record is read, within train.max_skipped_steps). Where `self.defer` holds and the
        optimizer has state (a fused SGD's first step would leave its momentum unset), the skip
        is decided on the device; otherwise here, which waits for the GPU."""
        n_lab, state = len(y_lab), self.state
        mix = None
        if self.data.mixup and self.data.pseudo is not None:  # a student's (noise.mixup)
            mix = Mixup.draw(self.data.mixup, len(x) - n_lab, self.data.seed, state.step,
                             distributed.rank())
            x = mix.images(x, n_lab)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            logits, loss, parts, norm = self._forward_backward(x, y_lab, q_pse, mix)
        except torch.OutOfMemoryError as e:
            raise TrainingError(
                f"{self.hooks.tag}: out of GPU memory at step {state.step} with {n_lab} "
                f"labeled + {len(x) - n_lab} pseudo-labeled images per step: lower "
                f"train.batch_size (now {self.cfg.batch_size}) or train.unlabeled_ratio (now "
                f"{self.cfg.unlabeled_ratio})" + ("" if self.cfg.amp else ", or turn on "
                                                 "train.amp") + f" ({e})") from e
        # under DDP decide on the (all-reduced, identical) norm alone, so the ranks agree
        finite = torch.isfinite(norm) & (torch.isfinite(loss) if self.world == 1 else True)
        self.pending.append(StepRecord(
            state.step, epoch, seen, self.scheduler.get_last_lr()[0],
            (late_fusion(logits)[:n_lab].argmax(1) == y_lab).sum(), loss.detach(), norm,
            finite, {k: v.detach() for k, v in parts.items()}))
        if self.defer and self.optimizer.state:
            self.optimizer.found_inf = (~finite).float()  # the fused kernels skip on it
            self.optimizer.step()
        elif bool(finite):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        self.scheduler.step()
        state.step += 1

    def _read_steps(self) -> None:
        """The pending steps' outcomes into the epoch's sums, the step lines and the skip count
        (which may stop training): one wait for the GPU for all of them."""
        tag, state, pending, self.pending = self.hooks.tag, self.state, self.pending, []
        for r in pending:
            state.correct += int(r.correct)
            if not bool(r.finite):
                self._skip(r)
                continue
            values = {k: float(v) for k, v in r.parts.items()}
            for k, v in values.items():
                state.sums[k] = state.sums.get(k, 0.0) + v
            state.good += 1
            self.progress.update(0, loss=values["total"])
            if (r.step + 1) % self.cfg.log_every == 0:
                now, (then, before) = time.perf_counter(), self.last_log
                self.hooks.tracker.log(
                    "step", phase=tag, step=r.step + 1, epoch=r.epoch + 1, lr=r.lr,
                    images_per_second=(r.seen - before) / max(now - then, 1e-9), **values)
                self.last_log = (now, r.seen)

    def _forward_backward(self, x: torch.Tensor, y_lab: torch.Tensor, q_pse: torch.Tensor | None,
                          mix: Mixup | None = None) -> tuple[Any, torch.Tensor, dict[str, Any],
                                                             torch.Tensor]:
        """Logits, loss, its parts and the gradient norm (before clipping), on the device."""
        n_lab = len(y_lab)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            logits = self.net(x)  # [B / world, num_classes], or a (class, dist) pair
        logits = _each(logits, lambda z: z.float())
        if q_pse is not None:
            def loss_at(q: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
                return self.loss_fn(_each(logits, itemgetter(slice(None, n_lab))), y_lab,
                                    _each(logits, itemgetter(slice(n_lab, None))), q)
            loss, parts = loss_at(q_pse) if mix is None else mix.loss(loss_at, q_pse)
        else:
            loss, parts = self.loss_fn(logits, y_lab)
        loss.backward()  # even when non-finite: under DDP every rank must join
        params = self.model.parameters()
        norm = (nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0
                else  # the norm only (for the check), no rescaling
                nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        return logits, loss, parts, norm

    def _skip(self, r: StepRecord) -> None:
        """A non-finite step, whose update was not applied: too many stop training."""
        state, cfg, ck = self.state, self.cfg, self.hooks.checkpoints
        state.skipped += 1
        bad, epoch = r.why_skipped(), r.epoch
        self.hooks.tracker.log("skipped_step", phase=self.hooks.tag, step=r.step,
                               epoch=epoch + 1, reason=bad)
        if state.skipped > cfg.max_skipped_steps:
            last = ck.paths()[-1] if ck and ck.paths() else None
            raise TrainingError(
                f"{self.hooks.tag}: {bad} at step {r.step} (epoch {epoch + 1}), "
                f"{state.skipped} non-finite steps so far (train.max_skipped_steps = "
                f"{cfg.max_skipped_steps}); the last good checkpoint is {last or 'none yet'}; "
                "lower train.lr, set train.grad_clip, or allow skipping with "
                "train.max_skipped_steps")

    def _stop_or_save_mid_epoch(self, epoch: int) -> None:
        """One small all-reduce: a stop seen by any rank, a checkpoint due by rank 0's clock."""
        h, step = self.hooks, self.state.step
        stop_now, due = distributed.agree([
            h.stop is not None and h.stop.requested,
            self.main and h.checkpoints is not None and h.checkpoints.due(step)])
        if step % self.geometry.steps_per_epoch == 0:
            return  # the epoch's end saves and stops
        if stop_now:
            path = self._save(epoch) if h.checkpoints is not None else None
            raise Interrupted((h.stop.signum if h.stop else None) or 15,
                              f"{h.tag}, epoch {epoch + 1}, step {step}", path)
        if due:
            self._save(epoch)

    def _end_epoch(self, epoch: int, seconds: float, seen: int) -> None:
        """The epoch's record (means over its good steps), evaluation, checkpoint, stop."""
        g, h, state = self.geometry, self.hooks, self.state
        sums, correct, seen = _over_ranks(state.sums, state.correct, seen, self.world)
        record: dict[str, Any] = {
            "phase": h.tag, "epoch": epoch + 1, "step": state.step,
            "lr": self.optimizer.param_groups[0]["lr"], "images_per_second": seen / seconds,
            # on the noised labeled images it trained on (model in train mode)
            "labeled_train_accuracy": correct / (g.steps_per_epoch * g.batch_labeled),
            "skipped_steps": g.steps_per_epoch - state.good,
            **{k: v / max(1, state.good) for k, v in sums.items()}}  # over the good steps
        state.correct, state.good, state.sums = 0, 0, {}
        if h.evaluate is not None and (epoch + 1) in self._eval_epochs():
            t = time.perf_counter()
            metrics = h.evaluate(self.ema.module if self.ema is not None else self.model)
            self.clock.parts["evaluate"] += time.perf_counter() - t
            train_mode(self.model, self.frozen)
            record.update(metrics)
            if self.main:
                scores = ", ".join(f"{k.removesuffix('_top1')} top-1 {100 * v:.2f}%"
                                   for k, v in metrics.items() if k.endswith("_top1"))
                print(f"{h.tag} epoch {epoch + 1}/{g.epochs}: loss {record['total']:.4f}, "
                      f"{scores}, {record['images_per_second']:.0f} img/s", flush=True)
        h.tracker.log("epoch", **record)
        state.history.append(record)
        if h.checkpoints is not None:
            self._save(epoch + 1)
        if distributed.agree([h.stop is not None and h.stop.requested])[0]:
            raise Interrupted((h.stop.signum if h.stop else None) or 15,
                              f"{h.tag}, end of epoch {epoch + 1}",
                              h.checkpoints.folder / f"step-{state.step:08d}.ckpt"
                              if h.checkpoints is not None else None)

    def _eval_epochs(self) -> set[int]:
        n, epochs = self.hooks.eval_times, self.geometry.epochs
        return {round(epochs * (i + 1) / max(1, n)) for i in range(n)}
