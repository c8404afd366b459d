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

from . import distributed
from .checkpoint import CheckpointError, TrainCheckpoints
from .config import TrainConfig
from .data import NoisedDataset, normalize
from .losses import StudentLoss
from .optim import build_optimizer, freeze_backbone, lr_factor, train_mode
from .signals import GracefulStop, Interrupted
from .tracking import Tracker, Progress


BatchNoiseFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # uint8 batch -> uint8


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, ...); the message names the step."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


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
                        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    return iter(loader)


def _each(logits: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`fn` applied to the logits, or to each of a (class, distillation) pair."""
    return tuple(fn(z) for z in logits) if isinstance(logits, tuple) else fn(logits)


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
class PhaseGeometry:
    """How long one phase trains and on how many images per step (global, over the ranks)."""

    epochs: int
    steps_per_epoch: int
    batch_labeled: int
    batch_pseudo: int  # 0 for round 0's teacher

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def phase_geometry(cfg: TrainConfig, n_labeled: int, n_pseudo: int | None, epochs: int,
                   min_steps: int = 0, world: int = 1) -> PhaseGeometry:
    """A phase's batches and length: an epoch is one pass over the pseudo-labeled items (a
    student) or the labeled images (round 0's teacher); `epochs` is raised until the phase
    has at least `min_steps` steps. Each rank takes 1/world of every batch (rounded down to a
    multiple of it)."""
    b_lab = min(cfg.batch_size, n_labeled) // world * world
    b_pse = (min(cfg.batch_size * cfg.unlabeled_ratio, n_pseudo) // world * world
             if n_pseudo is not None else 0)
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


def train_model(model: nn.Module, loss_fn: StudentLoss, labeled: NoisedDataset,
                pseudo: NoisedDataset | None, cfg: TrainConfig, epochs: int, seed: int,
                device: torch.device, tracker: Tracker, tag: str, num_workers: int = 0,
                evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
                eval_times: int = 5, checkpoints: TrainCheckpoints | None = None,
                stop: GracefulStop | None = None,
                batch_noise: BatchNoiseFn | None = None, pretrained: bool = False,
                min_steps: int = 0) -> TrainResult:
    """Train `model` for `epochs` (raised to reach `min_steps` steps) and return the weights to
    use next, with per-epoch history.

    With `checkpoints`, the whole training state is saved at every epoch end and at the
    configured interval; with `checkpoints.resume`, training continues from the newest valid
    checkpoint: same epoch and step, same data order, same random state. With `stop`, a signal
    ends training after the current step with a checkpoint, raising `Interrupted`. With
    `batch_noise` (`noise.backend = "torch"`), the datasets deliver clean images and each uint8
    batch is noised on the training device, from a generator seeded by (seed, step, rank).
    `pretrained`: the model starts from pretrained weights, so `cfg.finetune` and
    `cfg.backbone_lr_scale` apply.
    """
    cuda = device.type == "cuda"
    amp, channels_last = cfg.amp and cuda, cfg.channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    world = distributed.world_size() if distributed.active() else 1
    main = not distributed.active() or distributed.is_main_process()
    g = phase_geometry(cfg, len(labeled), None if pseudo is None else len(pseudo), epochs,
                       min_steps, world)
    if g.batch_labeled == 0 or (pseudo is not None and g.batch_pseudo == 0):
        raise TrainingError(f"{tag}: train.batch_size = {cfg.batch_size} is smaller than the "
                            f"{world} ranks; each rank needs at least one image per step")
    b_lab, b_pse, steps_per_epoch, epochs = (g.batch_labeled, g.batch_pseudo, g.steps_per_epoch,
                                             g.epochs)
    total = g.steps
    warmup = int(cfg.warmup_fraction * total)
    if world > 1 and cfg.sync_batchnorm:  # the same parameters, in SyncBatchNorm layers
        if not cuda:
            raise TrainingError("train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm "
                                "has no CPU kernels); set it to false for gloo runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    frozen = pretrained and cfg.finetune == "head"
    if frozen:
        freeze_backbone(model)
    optimizer = build_optimizer(model, cfg, pretrained)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay > 0 else None)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
           if world > 1 else model)  # gradients averaged over the ranks' shares of the batch
    if cfg.compile:  # `model` keeps the plain weights: checkpoints load without compiling
        net = torch.compile(net)
    geometry = dataclasses.asdict(g)
    # progress within the run: restored from a checkpoint when resuming
    run: dict[str, Any] = {"step": 0, "history": [], "sums": {}}
    saved = checkpoints.latest() if checkpoints is not None and checkpoints.resume else None
    if saved is not None:
        path, state = saved
        if state["geometry"] != geometry:
            raise CheckpointError(f"{path}: made for {state['geometry']}, but the config now "
                                  f"gives {geometry}; resume with the saved config, or start "
                                  "the round over with --from-round")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        run = state["run"]
        tracker.log("resume", phase=tag, step=run["step"], checkpoint=str(path))
    step = run["step"]
    lab_stream = _stream(labeled, b_lab, seed, num_workers, cuda, start=step * b_lab)
    pse_stream = (_stream(pseudo, b_pse, seed + 1, num_workers, cuda, start=step * b_pse)
                  if pseudo is not None else None)
    if saved is not None:  # after the streams, whose creation draws from torch's RNG
        rngs = saved[1]["rng"]  # one state per rank
        if len(rngs) != world and main:
            print(f"resume: the checkpoint holds the random state of {len(rngs)} ranks, this run "
                  f"has {world}: data order is the same, dropout randomness is not", flush=True)
        set_rng_state(rngs[min(distributed.rank(), len(rngs) - 1)])

    timing = {"data_wait": 0.0, "evaluate": 0.0, "checkpoint": 0.0}
    before = {"seconds": run.get("seconds", 0.0), **run.get("timing", {})}  # earlier processes'

    def spent() -> dict[str, float]:
        """Training time so far, earlier processes' included: "seconds" and the parts."""
        now = {"seconds": time.perf_counter() - start, **timing}
        return {k: before.get(k, 0.0) + v for k, v in now.items()}

    def save(epoch: int) -> Path:
        """Every rank gives its random state; rank 0 writes."""
        assert checkpoints is not None
        t = time.perf_counter()
        total = spent()
        run["seconds"], run["timing"] = total.pop("seconds"), total
        rngs = distributed.gather(rng_state()) if world > 1 else [rng_state()]
        path = checkpoints.folder / f"step-{run['step']:08d}.ckpt"
        if main:
            path = checkpoints.save(run["step"], epoch, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                "scaler": None,  # bf16 autocast needs no grad scaler
                "rng": rngs, "geometry": geometry, "run": run,
                "data_position": {"labeled": run["step"] * b_lab, "pseudo": run["step"] * b_pse}})
        timing["checkpoint"] += time.perf_counter() - t
        return path

    eval_at = {round(epochs * (i + 1) / max(1, eval_times)) for i in range(eval_times)}
    result = TrainResult(model, total, 0.0, 0.0, run["history"],
                         str(saved[0]) if saved is not None else None)
    start, start_step = time.perf_counter(), step
    train_mode(model, frozen)
    for epoch in range(step // steps_per_epoch, epochs):
        progress = Progress((steps_per_epoch - step % steps_per_epoch) * (b_lab + b_pse) // world,
                            f"{tag} epoch {epoch + 1}/{epochs}", enabled=main)
        epoch_start, seen = time.perf_counter(), 0
        last_log = (epoch_start, 0)  # time and images at the last step line
        for _ in range(step % steps_per_epoch, steps_per_epoch):
            t = time.perf_counter()
            x_lab, y_lab = next(lab_stream)
            x, n_lab = x_lab, len(x_lab)
            if pse_stream is not None:
                x_pse, q_pse = next(pse_stream)
                x = torch.cat([x_lab, x_pse])  # [B_lab + B_pse, C, H, W]
            timing["data_wait"] += time.perf_counter() - t
            if pse_stream is not None:
                q_pse = q_pse.to(device, non_blocking=True)
            x = x.to(device, non_blocking=True)  # uint8 [B, C, H, W]
            if batch_noise is not None:  # counted as data time (host time: on a GPU, launches)
                t = time.perf_counter()
                g = torch.Generator(device).manual_seed(
                    (seed * 1_000_003 + step) * 4099 + distributed.rank())
                x = batch_noise(x, g)
                timing["data_wait"] += time.perf_counter() - t
            x = normalize(x, labeled.mean, labeled.std)  # float32 [B, C, H, W]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y_lab = y_lab.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(x)  # [B / world, num_classes], or a (class, dist) pair
                logits = _each(logits, lambda z: z.float())
                if pse_stream is not None:
                    loss, parts = loss_fn(_each(logits, itemgetter(slice(None, n_lab))), y_lab,
                                          _each(logits, itemgetter(slice(n_lab, None))), q_pse)
                else:
                    loss, parts = loss_fn(logits, y_lab)
                loss.backward()  # even when non-finite: under DDP every rank must join
                norm = (nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        if cfg.grad_clip > 0 else  # the norm only (for the NaN check), no rescaling
                        nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                 if p.grad is not None]))
                # under DDP decide on the (all-reduced, identical) norm alone, so ranks agree
                finite = bool(torch.isfinite(norm)) and (world > 1 or bool(torch.isfinite(loss)))
                bad = None if finite else (f"the loss is {loss.item()}" if not torch.isfinite(loss)
                                           else f"the gradient norm is {norm.item()}")
            except torch.OutOfMemoryError as e:
                raise TrainingError(
                    f"{tag}: out of GPU memory at step {step} with {n_lab} labeled + "
                    f"{len(x) - n_lab} pseudo-labeled images per step: lower train.batch_size "
                    f"(now {cfg.batch_size}) or train.unlabeled_ratio (now {cfg.unlabeled_ratio})"
                    + ("" if cfg.amp else ", or turn on train.amp") + f" ({e})") from e
            fused = sum(logits) / 2 if isinstance(logits, tuple) else logits  # as at inference
            run["correct"] = run.get("correct", 0) + int((fused[:n_lab].argmax(1) == y_lab).sum())
            # (under DDP the gradients are all-reduced: a non-finite norm is seen by every rank)
            if bad is not None:
                run["skipped"] = run.get("skipped", 0) + 1
                tracker.log("skipped_step", phase=tag, step=step, epoch=epoch + 1, reason=bad)
                if run["skipped"] > cfg.max_skipped_steps:
                    last = checkpoints.paths()[-1] if checkpoints and checkpoints.paths() else None
                    raise TrainingError(
                        f"{tag}: {bad} at step {step} (epoch {epoch + 1}), "
                        f"{run['skipped']} non-finite steps so far (train.max_skipped_steps = "
                        f"{cfg.max_skipped_steps}); the last good checkpoint is "
                        f"{last or 'none yet'}; lower train.lr, set train.grad_clip, or allow "
                        "skipping with train.max_skipped_steps")
                optimizer.zero_grad(set_to_none=True)  # skipped: the weights stay as they were
                parts = {}
            else:
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
            scheduler.step()
            step = run["step"] = step + 1
            seen += len(x)
            values = {k: float(v) for k, v in parts.items()}
            for k, v in values.items():
                run["sums"][k] = run["sums"].get(k, 0.0) + v
            run["good"] = run.get("good", 0) + bool(values)
            progress.update(len(x), **({"loss": values["total"]} if values else {}))
            if step % cfg.log_every == 0 and values:
                now = time.perf_counter()
                tracker.log("step", phase=tag, step=step, epoch=epoch + 1,
                            lr=scheduler.get_last_lr()[0],
                            images_per_second=(seen - last_log[1]) / (now - last_log[0]),
                            **values)
                last_log = (now, seen)
            # one small all-reduce: a stop seen by any rank, a checkpoint due by rank 0's clock
            stop_now, due = distributed.agree([
                stop is not None and stop.requested,
                main and checkpoints is not None and checkpoints.due(step)])
            if stop_now and step % steps_per_epoch:
                path = save(epoch) if checkpoints is not None else None
                raise Interrupted((stop.signum if stop else None) or 15,
                                  f"{tag}, epoch {epoch + 1}, step {step}", path)
            if due and step % steps_per_epoch:
                save(epoch)
        progress.close()
        seconds = time.perf_counter() - epoch_start
        sums, correct, seen = _over_ranks(run["sums"], run.pop("correct", 0), seen, world)
        record: dict[str, Any] = {"phase": tag, "epoch": epoch + 1, "step": step,
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "images_per_second": seen / seconds,
                                  # on the noised labeled images it trained on (model in train mode)
                                  "labeled_train_accuracy": correct / (steps_per_epoch * b_lab),
                                  "skipped_steps": steps_per_epoch - run.get("good", 0),
                                  # means over the steps that were not skipped
                                  **{k: v / max(1, run.get("good", 0)) for k, v in sums.items()}}
        run["good"] = 0
        run["sums"] = {}
        if evaluate is not None and (epoch + 1) in eval_at:
            t = time.perf_counter()
            metrics = evaluate(ema.module if ema is not None else model)
            timing["evaluate"] += time.perf_counter() - t
            train_mode(model, frozen)
            record.update(metrics)  # e.g. val_top1, val_ece
            if main:
                scores = ", ".join(f"{k.removesuffix('_top1')} top-1 {100 * v:.2f}%"
                                   for k, v in metrics.items() if k.endswith("_top1"))
                print(f"{tag} epoch {epoch + 1}/{epochs}: loss {record['total']:.4f}, {scores}, "
                      f"{record['images_per_second']:.0f} img/s", flush=True)
        tracker.log("epoch", **record)
        run["history"].append(record)
        if checkpoints is not None:
            save(epoch + 1)
        if distributed.agree([stop is not None and stop.requested])[0]:
            raise Interrupted((stop.signum if stop else None) or 15,
                              f"{tag}, end of epoch {epoch + 1}",
                              checkpoints.folder / f"step-{step:08d}.ckpt"
                              if checkpoints is not None else None)
    elapsed, total = time.perf_counter() - start, spent()
    result.seconds, result.seconds_before = total.pop("seconds"), before["seconds"]
    result.timing = {k: round(v, 3) for k, v in total.items()}
    result.images_per_second = (step - start_step) * (b_lab + b_pse) / max(elapsed, 1e-9)
    if ema is not None:
        result.model = ema.module
    return result
