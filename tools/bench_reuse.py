"""Which earlier benchmark results are the same experiment, and may be kept instead of run again.

Configs are compared as today's `Config` reads them (`normalized`): keys added since a run take
their defaults, which keep the old behaviour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from noisy_student.checkpoint import load_json
from noisy_student.config import Config, ConfigError


def normalized(config: dict[str, Any]) -> dict[str, Any] | None:
    """A stored config as today's `Config` reads it (keys added since then take their defaults,
    which keep the old behaviour), or `None` when it no longer loads."""
    try:
        return json.loads(Config.from_dict(config).to_json())
    except ConfigError:
        return None


def same_except(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """Whether two stored configs, both still loadable, are equal but for `key`."""
    a, b = normalized(a), normalized(b)
    return a is not None and b is not None and {**a, key: None} == {**b, key: None}


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two configs make the same run, wherever it is (a moved run directory's config
    names its old place)."""
    return same_except(a, b, "out")


def same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two seeds' configs differ in the seed alone."""
    return same_except(a, b, "seed")


def baseline_settings(config: Config) -> dict[str, Any]:
    """What a baseline depends on besides its data and steps: the recipe's config without the
    teacher's side (earlier rungs of the ladder, pseudo-labels, epochs of the loop)."""
    c = normalized(config.to_dict())
    c["model"]["ladder"] = [config.model_for(config.rounds)]
    train = {k: v for k, v in c["train"].items() if k not in ("teacher_epochs", "epochs")}
    return {"model": c["model"], "noise": c["noise"], "data": c["data"], "loss": c["loss"],
            "train": train, "seed": c["seed"]}


def plan(images: int, steps: int, batch: int) -> tuple[int, int]:
    """(batch, epochs) of a baseline of about `steps` steps of `batch` over `images`."""
    batch = min(batch, images)
    return batch, max(1, round(steps / math.ceil(images / batch)))


def earlier_baseline(older: list[dict[str, Any]], key: str, config: Config, images: int,
                     steps: int, batch: int) -> dict[str, Any] | None:
    """Baseline `key` of the first of `older` (this seed's earlier results) that made the same
    experiment: same settings (`baseline_settings`), images, batch and epochs. The teacher's
    side of the recipe may have changed since: a baseline does not use it."""
    b, epochs = plan(images, steps, batch)
    for old in older:
        if normalized(old["command"]) is None:
            continue
        was = old[key]
        if (baseline_settings(Config.from_dict(old["command"])) == baseline_settings(config)
                and (was["images"], was["batch"], was["steps"])
                == (images, b, epochs * math.ceil(images / b))):
            return {**was, "kept": True}
    return None


def quality_run(earlier: dict[str, Any], config: Config,
                prefer: int | None = None) -> dict[str, Any] | None:
    """A loop of the quality benchmark for `config` (seed aside) from `earlier` results (one data
    set's) whose run directory still holds that run (its teacher, and its own config.json equal
    to the one stored): the ablations' recipe row and teacher, not trained again. Seed `prefer`
    first (the one earlier variants were made with), then the lowest; the row names its seed."""
    for s in sorted(earlier.get("seeds", []), key=lambda s: (s["seed"] != prefer, s["seed"])):
        ns, run_dir = s["noisy_student"], Path(s["noisy_student"]["run_dir"])
        if not same_recipe(s["command"], config.to_dict()):
            continue
        if (run_dir / "teacher" / "model.safetensors").is_file() and same_run(
                load_json(run_dir / "config.json"), s["command"]):
            return {**ns, "seed": s["seed"]}
    return None
