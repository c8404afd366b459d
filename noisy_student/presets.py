"""Choices made for the user's data: the automatic model ladder and the named presets.

This module is the one home of both tables. `model.ladder = ["auto"]` is settled by
`auto_ladder` from the image size, the number of labeled images and the device when a run
starts (and saved, as chosen, in the run's config.json). A preset is a named set of `--set`
overrides for a common case; `recipes/image_folder.py --preset NAME` applies one before the
command line's own `--set`s, which win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Config
from .data.image_folder import IMAGE_EXTENSIONS

AUTO = ["auto"]


@dataclass(frozen=True)
class LadderChoice:
    ladder: list[str]
    reason: str


# (largest image side, device, fewest labeled images or 0) -> ladder; the first row that fits
AUTO_LADDERS: list[tuple[int, str, int, list[str]]] = [
    (20, "cpu", 0, ["cnn_small"] * 3),
    (48, "cpu", 0, ["cnn_medium(stem_stride=2)"] * 3),
    (128, "cpu", 0, ["cnn_large(stem_stride=2)"] * 3),
    (10**6, "cpu", 0, ["tv_resnet18"] * 3),
    (20, "cuda", 0, ["cnn_medium", "cnn_medium", "cnn_large"]),
    (48, "cuda", 0, ["wrn_28_2", "wrn_28_2", "wrn_28_4"]),
    (128, "cuda", 0, ["resnet18", "resnet18", "resnet34"]),
    (10**6, "cuda", 10_000, ["tv_resnet50"] * 3),
    (10**6, "cuda", 0, ["tv_resnet18", "tv_resnet18", "tv_resnet34"]),
]


def auto_ladder(image_size: int, device: str, n_labeled: int | None) -> LadderChoice:
    """The ladder for `image_size` x `image_size` images on `device` ("cpu" or "cuda"): small
    CNNs for small images on a CPU (a step must take milliseconds there), wide ResNets and
    growing students on a GPU, ImageNet-style ResNets for large images (ResNet-50 only from
    10,000 labeled images on: fewer overfit it)."""
    n = n_labeled or 0
    for size, dev, fewest, ladder in AUTO_LADDERS:
        if image_size <= size and device == dev and n >= fewest:
            labeled = "" if n_labeled is None else f", {n_labeled:,} labeled images"
            return LadderChoice(list(ladder), f"{image_size}x{image_size} images on "
                                f"{'a GPU' if dev == 'cuda' else 'a CPU'}{labeled}")
    raise AssertionError("AUTO_LADDERS has a catch-all row per device")


def count_images(folder: str | None) -> int | None:
    """Image files under `folder` (by suffix, without decoding them); None without a folder."""
    if not folder or not Path(folder).is_dir():
        return None
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def settle_ladder(config: Config, device: str, saved: Config | None = None) -> tuple[Config, str]:
    """`config` with an "auto" ladder replaced by its choice, and a line saying why ("" when the
    ladder was named). `saved` (the run's config.json, resuming) keeps the choice made then."""
    if config.model.ladder != AUTO:
        return config, ""
    if saved is not None and saved.model.ladder != AUTO:
        choice = LadderChoice(saved.model.ladder, "as chosen when the run started")
    else:
        choice = auto_ladder(config.data.image_size if config.data.source == "image_folder"
                             else _source_size(config.data.source), device,
                             count_images(config.data.labeled_dir))
    settled = config.replace(model=replace(config.model, ladder=choice.ladder))
    return settled, f"model.ladder auto: {choice.ladder} ({choice.reason})"


def saved_config(config: Config, start: Any) -> Config | None:
    """The config a resumed or restarted run was made with (its choices stand), if readable."""
    if not (start.resume or start.from_round is not None):
        return None
    path = Path(start.from_run or config.out_dir) / "config.json"
    try:
        return Config.load(path)
    except (OSError, ValueError):
        return None  # the run directory's checks say what is wrong with it


def _source_size(source: str) -> int:
    return {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}[source]


@dataclass(frozen=True)
class Preset:
    name: str
    for_what: str
    overrides: dict[str, Any]


PRESETS = {p.name: p for p in [
    Preset("cpu-small", "small images (up to 48 px) on a CPU, a run in minutes to an hour", {
        "model.ladder": ["cnn_medium(stem_stride=2)"] * 3,
        "noise.crop_padding": 2,
        "train.teacher_min_steps": 2000, "train.min_steps": 1000,
        "train.device": "cpu", "data.num_workers": 1, "rounds": 2}),
    Preset("cifar-gpu", "CIFAR-like 32 px images on a GPU", {
        "data.image_size": 32, "model.ladder": ["wrn_28_2", "wrn_28_2", "wrn_28_4"],
        "noise.crop_padding": 4, "noise.backend": "torch",
        "train.teacher_min_steps": 20000, "train.min_steps": 20000,
        "train.device": "cuda", "train.batch_size": 64, "train.unlabeled_ratio": 7,
        "rounds": 3}),
    Preset("imagenet-gpu", "ImageNet-like photos at 224 px on a GPU", {
        "data.image_size": 224, "model.ladder": ["tv_resnet50"] * 3,
        "noise.crop_padding": 16, "noise.backend": "torch",
        "train.teacher_min_steps": 30000, "train.min_steps": 30000,
        "train.device": "cuda", "train.batch_size": 128, "train.unlabeled_ratio": 3,
        "train.lr": 0.2, "rounds": 2}),
]}


def preset_overrides(name: str) -> list[str]:
    """A preset as `--set` strings (values as JSON)."""
    return [f"{k}={json.dumps(v)}" for k, v in PRESETS[name].overrides.items()]


def ladders_markdown() -> str:
    """The automatic ladder's table in docs/your_images.md (a test keeps the two the same)."""
    lines = ["| largest image side | device | labeled images | ladder |", "|---|---|---|---|"]
    for size, device, fewest, ladder in AUTO_LADDERS:
        side = "any" if size >= 10**6 else f"up to {size} px"
        labeled = f"{fewest:,} or more" if fewest else "any"
        lines.append(f"| {side} | {device} | {labeled} | `{' / '.join(ladder)}` |")
    return "\n".join(lines)


def presets_markdown() -> str:
    """The presets table of docs/your_images.md (a test keeps the two the same)."""
    lines = ["| preset | for | sets |", "|---|---|---|"]
    for p in PRESETS.values():
        sets = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in p.overrides.items())
        lines.append(f"| `{p.name}` | {p.for_what} | {sets} |")
    return "\n".join(lines)
