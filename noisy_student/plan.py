"""The plan printed before any work: what will run, and about how long it will take here.

One row per phase (round 0's teacher, each round's student): its model, optimizer steps and
images per step, from `train.phase_geometry`, and an estimate of its minutes from a few timed
training steps of each model on this machine, plus the noise of its images (per image, in the
DataLoader workers, or per batch) and its evaluations. A student's pseudo-labeled set is not
known before its teacher labels: the plan assumes every unlabeled image is kept, so a student's
estimate is an upper bound when the threshold keeps fewer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .config import Config
from .data import Splits
from .ladder import build_model
from .train import phase_geometry


@dataclass(frozen=True)
class PhasePlan:
    phase: str
    model: str
    params: int
    steps: int
    labeled_per_step: int
    pseudo_per_step: int
    minutes: float  # estimated: training steps, noise, pseudo-labeling and evaluations


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call of `fn`, after one untimed call (allocations, kernel choice)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def step_seconds(model: nn.Module, batch: int, shape: tuple[int, int, int],
                 num_classes: int, device: torch.device, repeats: int = 2,
                 bf16: bool = False) -> float:
    """Seconds of one training step's forward and backward pass on a random batch (the
    optimizer's update, a small part, is left out: no optimizer runs outside training), under
    bf16 autocast when training uses it."""
    model.to(device).train()
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)  # logits, or a (class, distillation) pair
        sum(nn.functional.cross_entropy(z, y) for z in (out if isinstance(out, tuple)
                                                      else (out,))).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return _timed(step, repeats)


def make_plan(config: Config, splits: Splits, sizes: list[int], device: torch.device,
              noise_seconds: float) -> list[PhasePlan]:
    """Every phase of the run; `noise_seconds`: the input noise of one image."""
    c, s = config, splits
    shape = (s.channels, *s.labeled.images.shape[1:3])
    scored = sum(len(images) for images in s.scored().values())
    plans, step, infer = [], {}, {}
    for rung in range(c.rounds + 1):
        student = rung > 0
        views = not student and c.train.teacher_consistency  # + weak views, forward only
        g = phase_geometry(c.train, len(s.labeled), len(s.unlabeled) if student else None,
                           c.train.epochs if student else c.train.teacher_epochs,
                           c.train.min_steps if student else c.train.teacher_min_steps,
                           n_unlabeled=len(s.unlabeled) if views else None)
        batch, name = g.batch_labeled + g.batch_pseudo, c.model_for(rung)
        if (name, batch) not in step:
            step[name, batch] = step_seconds(build_model(c, rung, s), batch, shape,
                                             s.num_classes, device,
                                             bf16=c.train.bf16(device.type))
        infer[name] = step[name, batch] / batch / 3  # a forward pass: about a third
        weak = g.batch_pseudo if views else 0
        noise = noise_seconds * (batch + weak)
        train = step[name, batch] + weak * infer[name]
        per_step = (max(train, noise / c.data.num_workers) if c.data.num_workers
                    else train + noise)
        labeling = len(s.unlabeled) * infer[c.model_for(rung - 1)] if student else 0.0
        seconds = g.steps * per_step + 6 * scored * infer[name] + labeling
        plans.append(PhasePlan(f"round {rung - 1} student" if student else "teacher", name,
                               sizes[rung], g.steps, g.batch_labeled, g.batch_pseudo,
                               round(seconds / 60, 1)))
    return plans


def noise_seconds_per_image(splits: Splits, noise: Any, batch_noise: Any,
                            device: torch.device, n: int = 64) -> float:
    """The student's input noise of one image: per image (albumentations) or per batch (torch)."""
    images = splits.unlabeled.images[:n] if len(splits.unlabeled) else splits.labeled.images[:n]
    if batch_noise is not None:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
        g = torch.Generator(device).manual_seed(0)
        return _timed(lambda: batch_noise(x, g), 2) / len(images)
    if noise is None:
        return 0.0
    rng = np.random.default_rng(0)
    return _timed(lambda: [noise(image, rng) for image in images], 1) / len(images)


def format_plan(plans: list[PhasePlan], device: torch.device, notes: list[str]) -> str:
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' * (n != 1)}" if device.type == "cpu" else ""
    rounds = len(plans) - 1
    lines = [f"plan: {rounds} round{'s' * (rounds != 1)} on {device.type}{threads}",
             *(f"  {n}" for n in notes),
             f"  {'phase':<17} {'model':<28} {'params':>9} {'steps':>7} {'images/step':>12} "
             f"{'minutes':>8}"]
    for p in plans:
        per_step = (f"{p.labeled_per_step}+{p.pseudo_per_step}" if p.pseudo_per_step
                    else str(p.labeled_per_step))
        lines.append(f"  {p.phase:<17} {p.model:<28} {p.params:>9,} {p.steps:>7,} "
                     f"{per_step:>12} {p.minutes:>8.1f}")
    total = sum(p.minutes for p in plans)
    lines.append(f"  about {total:.{0 if total >= 10 else 1}f} minutes in all (from timed steps "
                 "on this machine; the students' assume every unlabeled image is kept)")
    return "\n".join(lines)


def plan_record(plans: list[PhasePlan]) -> dict[str, Any]:
    return {"phases": [asdict(p) for p in plans],
            "minutes": round(sum(p.minutes for p in plans), 1)}
