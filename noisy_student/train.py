"""Train one model (round 0's teacher or a round's student): optimizer, schedule, EMA, AMP, steps.

Each step draws `batch_size` noised labeled images and, for a student, `unlabeled_ratio *
batch_size` noised pseudo-labeled images; both go through the model in one forward pass (shared
batch-norm statistics, as in the official implementation). An epoch is one pass over the
pseudo-labeled items (students) or over the labeled images (round 0's teacher).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler

from .config import TrainConfig
from .data import NoisedDataset
from .losses import StudentLoss
from .tracking import JsonlTracker, Progress


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
    (seed, pass, index) in any worker, and the stream is a pure function of the seed.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
            for i in torch.randperm(self.n, generator=g).tolist():
                yield p, i
            p += 1


def _stream(dataset: NoisedDataset, batch_size: int, seed: int, workers: int,
            pin: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=batch_size, sampler=StreamSampler(len(dataset), seed),
                        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    return iter(loader)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (nesterov when momentum > 0) or AdamW; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@dataclass
class TrainResult:
    model: nn.Module  # the weights to evaluate and to teach with: the EMA when it is on
    steps: int
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


def train_model(model: nn.Module, loss_fn: StudentLoss, labeled: NoisedDataset,
                pseudo: NoisedDataset | None, cfg: TrainConfig, epochs: int, seed: int,
                device: torch.device, tracker: JsonlTracker, tag: str, num_workers: int = 0,
                evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
                eval_times: int = 5) -> TrainResult:
    """Train `model` for `epochs` and return the weights to use next, with per-epoch history."""
    cuda = device.type == "cuda"
    amp, channels_last = cfg.amp and cuda, cfg.channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    b_lab = min(cfg.batch_size, len(labeled))
    b_pse = cfg.batch_size * cfg.unlabeled_ratio
    if pseudo is not None:
        b_pse = min(b_pse, len(pseudo))
        steps_per_epoch = math.ceil(len(pseudo) / b_pse)
    else:
        steps_per_epoch = math.ceil(len(labeled) / b_lab)
    total = epochs * steps_per_epoch
    warmup = int(cfg.warmup_fraction * total)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay > 0 else None)
    lab_stream = _stream(labeled, b_lab, seed, num_workers, cuda)
    pse_stream = _stream(pseudo, b_pse, seed + 1, num_workers, cuda) if pseudo is not None else None
    eval_at = {round(epochs * (i + 1) / max(1, eval_times)) for i in range(eval_times)}
    result = TrainResult(model, total, 0.0, 0.0)
    start, step = time.perf_counter(), 0
    model.train()
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        seen = 0
        progress = Progress(steps_per_epoch * (b_lab + (b_pse if pseudo is not None else 0)),
                            f"{tag} epoch {epoch + 1}/{epochs}")
        epoch_start = time.perf_counter()
        for _ in range(steps_per_epoch):
            x_lab, y_lab = next(lab_stream)
            x, n_lab = x_lab, len(x_lab)
            if pse_stream is not None:
                x_pse, q_pse = next(pse_stream)
                x = torch.cat([x_lab, x_pse])  # [B_lab + B_pse, C, H, W]
                q_pse = q_pse.to(device, non_blocking=True)
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y_lab = y_lab.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)  # [B, num_classes]
            logits = logits.float()
            if pse_stream is not None:
                loss, parts = loss_fn(logits[:n_lab], y_lab, logits[n_lab:], q_pse)
            else:
                loss, parts = loss_fn(logits, y_lab)
            if not torch.isfinite(loss):
                raise TrainingError(f"{tag}: loss is {loss.item()} at step {step} (epoch "
                                    f"{epoch + 1}); lower train.lr or set train.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            seen += len(x)
            values = {k: float(v) for k, v in parts.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            progress.update(len(x), loss=values["total"])
            if step % cfg.log_every == 0:
                tracker.log("step", phase=tag, step=step, epoch=epoch + 1,
                            lr=scheduler.get_last_lr()[0], **values)
        progress.close()
        seconds = time.perf_counter() - epoch_start
        record: dict[str, Any] = {"phase": tag, "epoch": epoch + 1, "step": step,
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "images_per_second": seen / seconds,
                                  **{k: v / steps_per_epoch for k, v in sums.items()}}
        if evaluate is not None and (epoch + 1) in eval_at:
            current = ema.module if ema is not None else model
            metrics = evaluate(current)
            model.train()
            record.update(test_top1=metrics["top1"], test_ece=metrics["ece"])
            print(f"{tag} epoch {epoch + 1}/{epochs}: loss {record['total']:.4f}, test top-1 "
                  f"{100 * metrics['top1']:.2f}%, {record['images_per_second']:.0f} img/s",
                  flush=True)
        tracker.log("epoch", **record)
        result.history.append(record)
    result.seconds = time.perf_counter() - start
    result.images_per_second = total * (b_lab + (b_pse if pseudo is not None else 0)) / result.seconds
    if ema is not None:
        result.model = ema.module
    return result
