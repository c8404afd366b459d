"""Speed: the framework against bare PyTorch, each ratio measured in one process, same model,
same batch (see `measure`). Used by tools/benchmark.py."""

from __future__ import annotations

import copy
import dataclasses
import runpy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisy_student.checkpoint import load_json
from noisy_student.config import Config
from noisy_student.data import NoisedDataset, to_tensor, to_uint8
from noisy_student.inference import predict_logits
from noisy_student.loop import run
from noisy_student.losses import build_student_loss
from noisy_student.models import create_model
from noisy_student.noise import build_noise
from noisy_student.noise_batch import BatchNoise
from noisy_student.optim import build_optimizer
from noisy_student.train import TrainData, TrainHooks, train_model

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name: str) -> Config:
    return runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["make_config"]()


Shape = tuple[int, int, int]  # height, width, channels
MNIST_SHAPE: Shape = (28, 28, 1)


def _setup(config: Config, n_images: int, seed: int = 0, shape: Shape = MNIST_SHAPE):
    """Random images of `shape`, their labels, pseudo-targets in the recipe's kind (hard classes
    or one-hot soft rows), the recipe's final student and its loss."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, n_images)
    hard = config.pseudo_label.kind == "hard"
    targets = labels if hard else np.eye(10, dtype=np.float32)[labels]
    torch.manual_seed(seed)
    model = create_model(config.model_for(config.rounds), num_classes=10, in_chans=shape[2],
                         drop_rate=config.model.drop_rate,
                         drop_path_rate=config.model.drop_path_rate)
    loss = build_student_loss(config.loss)
    return images, labels, targets, model, loss


def train_step(config: Config, steps: int, device: torch.device, shape: Shape = MNIST_SHAPE,
               workers: int = 0, repeats: int = 1) -> dict[str, Any]:
    """Seconds per step: `train_model` (DataLoader with `workers`, loss parts, logging; noise
    off) versus a bare loop of forward, loss, backward and SGD step on one in-memory batch of
    the same size; `repeats` such pairs, one after the other, and the figures of the pair with
    the median ratio (with every pair's ratio)."""
    t = config.train
    b_lab, b_pse = t.batch_size, t.batch_size * t.unlabeled_ratio
    images, labels, targets, model, loss = _setup(config, b_pse * steps, shape=shape)
    lab = NoisedDataset(images[:1000], labels[:1000], None, [0.5], [0.25], 0)
    pse = NoisedDataset(images, targets, None, [0.5], [0.25], 1)
    cfg = dataclasses.replace(t, device=device.type, log_every=10**9)
    bare_model = copy.deepcopy(model).to(device)
    warm = NoisedDataset(images[:b_pse * 2], targets[:b_pse * 2], None, [0.5], [0.25], 1)
    train_model(copy.deepcopy(model), loss, cfg, device, TrainData(lab, warm),
                TrainHooks("warm-up", eval_times=0))  # first-call costs (allocator, kernels)
    x = to_tensor(images[:b_lab + b_pse], [0.5], [0.25]).to(device)
    if t.channels_last:
        x, bare_model = x.contiguous(memory_format=torch.channels_last), bare_model.to(
            memory_format=torch.channels_last)
    y = torch.from_numpy(labels[:b_lab]).to(device)
    q = torch.from_numpy(targets[b_lab:b_lab + b_pse]).to(device)
    optimizer = build_optimizer(bare_model, t)
    bare_model.train()
    amp = t.bf16(device.type)

    def bare_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = bare_model(x).float()
        total, _ = loss(logits[:b_lab], y, logits[b_lab:], q)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def pair() -> tuple[int, float, float]:
        """Steps, then seconds per step of the framework and of the bare loop."""
        framework = train_model(copy.deepcopy(model), loss, cfg, device,
                                TrainData(lab, pse, num_workers=workers),
                                TrainHooks("speed", eval_times=0))
        _sync(device)
        start = time.perf_counter()
        for _ in range(framework.steps):
            bare_step()
        _sync(device)
        bare = (time.perf_counter() - start) / framework.steps
        return framework.steps, framework.seconds / framework.steps, bare

    bare_step()  # warm-up
    pairs = sorted((pair() for _ in range(repeats)), key=lambda p: p[1] / p[2])
    n_steps, per_step, bare = pairs[len(pairs) // 2]
    return {"steps": n_steps, "batch": b_lab + b_pse, "framework_s_per_step": per_step,
            "bare_s_per_step": bare, "ratio": per_step / bare,
            "ratios": [p[1] / p[2] for p in pairs],
            "framework_images_per_second": (b_lab + b_pse) / per_step,
            "bare_images_per_second": (b_lab + b_pse) / bare,
            "model": config.model_for(config.rounds)}


def inference(config: Config, n: int, device: torch.device,
              shape: Shape = MNIST_SHAPE) -> dict[str, Any]:
    """Images/s: `predict_logits` on uint8 images versus a bare `model(x)` loop over the same
    images already normalized as tensors, same batch size."""
    images, _, _, model, _ = _setup(config, n, shape=shape)
    model.to(device).eval()
    batch = config.pseudo_label.batch_size
    channels_last = config.train.channels_last
    amp = config.train.bf16(device.type)
    predict_logits(model, images[:batch], [0.5], [0.25], batch, device, amp, channels_last)
    _sync(device)
    start = time.perf_counter()
    predict_logits(model, images, [0.5], [0.25], batch, device, amp, channels_last)
    _sync(device)
    framework = time.perf_counter() - start
    chunks = [to_tensor(images[i:i + batch], [0.5], [0.25]).to(device) for i in range(0, n, batch)]
    if channels_last:
        chunks = [c.contiguous(memory_format=torch.channels_last) for c in chunks]
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for c in chunks:
            model(c).float().cpu()
    _sync(device)
    bare = time.perf_counter() - start
    return {"images": n, "batch": batch, "framework_images_per_second": n / framework,
            "bare_images_per_second": n / bare, "ratio": framework / bare}


def noise_supply(config: Config, n: int, consume_images_per_second: float,
                 steps: int, device: torch.device,
                 workers: tuple[int, ...] = (), shape: Shape = MNIST_SHAPE) -> dict[str, Any]:
    """The noise pipeline's images/s in one process (one worker) against what training
    consumes, and the share of a real (noised) training run spent waiting for data with the
    recipe's workers (and with each count in `workers`); the same for the torch backend
    (`noise_batch.BatchNoise` on whole batches on `device`, no workers), with the share of its
    step time the noise costs against the same training on clean images (each twice,
    alternated; means). Each training run takes at least `steps` steps (over the `n` images
    again as needed)."""
    images, labels, targets, model, loss = _setup(config, n, shape=shape)
    nz = config.noise
    noise = build_noise(nz.enabled, nz.num_ops, nz.magnitude, nz.flip, nz.crop_padding, shape[2])
    data = NoisedDataset(images, labels, noise, [0.5], [0.25], 0)
    start = time.perf_counter()
    for i in range(n):
        data[(0, i)]
    per_worker = n / (time.perf_counter() - start)
    t = config.train
    b_pse = t.batch_size * t.unlabeled_ratio
    pse = NoisedDataset(images, targets, noise, [0.5], [0.25], 1)

    def noised_run(num_workers: int, batch_noise: BatchNoise | None = None,
                   clean: bool = False) -> dict[str, float]:
        lab_, pse_ = data, pse
        if batch_noise is not None or clean:  # clean items (noised as whole batches, if at all)
            lab_ = NoisedDataset(images, labels, None, [0.5], [0.25], 0)
            pse_ = NoisedDataset(pse.images, pse.targets.numpy(), None, [0.5], [0.25], 1)
        result = train_model(copy.deepcopy(model), loss, dataclasses.replace(t, device=device.type),
                             device, TrainData(lab_, pse_, min_steps=steps,  # n may be fewer
                                               num_workers=num_workers, batch_noise=batch_noise),
                             TrainHooks("clean" if clean else "noised", eval_times=0))
        return {"data_wait_fraction": result.timing["data_wait"] / result.seconds,
                "images_per_second": result.images_per_second}

    default = noised_run(config.data.num_workers)
    # the torch backend: the same policy on whole batches, on the training device
    batch_noise = BatchNoise(nz.num_ops, nz.magnitude, nz.flip, nz.crop_padding, shape[2])
    x = to_uint8(images[:t.batch_size + b_pse]).to(device)
    g = torch.Generator(device).manual_seed(0)
    batch_noise(x, g)
    _sync(device)
    start, done = time.perf_counter(), 0
    while done < n:
        batch_noise(x, g)
        done += len(x)
    _sync(device)
    supply = done / (time.perf_counter() - start)
    # what the noise costs the step, as a share of it: on a GPU the host's timers see kernel
    # launches, not the device waiting for data, so the same training without noise says it;
    # noised and clean runs alternate twice, so a drift of the machine falls on both alike
    noised, clean = zip(*[(noised_run(0, batch_noise), noised_run(0, clean=True))
                          for _ in range(2)])
    torch_backend = {"noise_images_per_second": supply,
                     **{k: float(np.mean([r[k] for r in noised])) for k in noised[0]},
                     "clean_images_per_second": float(np.mean([r["images_per_second"]
                                                               for r in clean]))}
    torch_backend["noise_step_share"] = (1 - torch_backend["images_per_second"]
                                         / torch_backend["clean_images_per_second"])
    return {"noise_images_per_second_per_worker": per_worker,
            "train_consumes_images_per_second": consume_images_per_second,
            "supply_over_demand_per_worker": per_worker / consume_images_per_second,
            "workers": config.data.num_workers,
            "data_wait_fraction": default["data_wait_fraction"],
            "noised_train_images_per_second": default["images_per_second"],
            "torch_backend": torch_backend,
            "by_workers": {str(w): noised_run(w) for w in workers}}


def round_split(config: Config, out: Path, existing: Path | None = None) -> dict[str, Any]:
    """Round 0's wall time split into pseudo-labeling, training (less its evaluation and
    checkpoints), evaluation and checkpointing: of the finished run `existing` (made with
    `config`), or of one round run now."""
    if existing is not None:
        out = existing
    else:
        run(config.with_overrides(["rounds=1", f'out="{out}"', 'tracking.mode="disabled"']),
            overwrite=True)
    timing = load_json(out / "round_0" / "metrics.json")["timing"]
    evaluate = timing["train_evaluate"] + timing["final_evaluate"]
    parts = {"pseudo_label": timing["pseudo_label"],
             "train": timing["train"] - timing["train_evaluate"] - timing["train_checkpoint"],
             "evaluate": evaluate, "checkpoint": timing["train_checkpoint"]}
    total = sum(parts.values())
    return {"seconds": parts, "share": {k: v / total for k, v in parts.items()},
            "data_wait_share_of_train": timing["train_data_wait"] / timing["train"],
            "recipe": config.name}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(round_config: Config, work: Path, quick: bool = False,
            round_run: Path | None = None) -> dict[str, Any]:
    """Every speed figure on the CPU (and, when CUDA is there, on the GPU as well); the round
    split comes from `round_run` (a finished run of `round_config`) or one round run now."""
    fashion = _recipe("fashion_mnist")
    # 60 steps (at 30 the step ratio moved about 4% from run to run on 2 cores), the median of
    # three pairs: one pair's ratio ranged 1.004 to 1.135 over ten pairs on 2 cores (2026-12-06)
    steps, n_infer, n_noise = (3, 256, 100) if quick else (60, 10_000, 3000)
    out: dict[str, Any] = {}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        step = train_step(fashion, steps, device, repeats=1 if quick else 3)
        out[device.type] = {
            "train_step": step,
            "inference": inference(fashion, n_infer, device),
            "noise": noise_supply(fashion, n_noise, step["bare_images_per_second"],
                                  max(2, steps // 2), device, () if quick else (0, 1, 2)),
        }
    if torch.cuda.is_available():  # bf16 and channels_last, on and off
        variants = {}
        for amp in (True, False):
            for cl in (True, False):
                cfg = fashion.with_overrides([f"train.amp={str(amp).lower()}",
                                              f"train.channels_last={str(cl).lower()}"])
                variants[f"amp={amp},channels_last={cl}"] = train_step(cfg, steps,
                                                                       torch.device("cuda"))
        out["cuda_variants"] = variants
    # train.amp_cpu: bf16 autocast on the CPU against float32, side by side
    out["cpu_variants"] = {f"amp_cpu={on}": train_step(
        fashion.with_overrides([f"train.amp_cpu={str(on).lower()}"]), steps, torch.device("cpu"))
        for on in (False, True)}
    out["round_split"] = round_split(round_config, work / "speed-round", round_run)
    return out
