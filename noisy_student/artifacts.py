"""What a finished run left, loaded back: its config, classes and normalization, and the model of
any phase (round 0's teacher, or round k's student) — for the tools in `tools/` and `predict`.

    run = open_run("runs/digits")
    model = run.model("last")          # the newest finished round's student, in eval mode
    splits = run.splits()              # the run's data, re-made from its config and seed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ArtifactError  # noqa: F401 (raised here, importable from here)
from .checkpoint import load_json, load_weights
from .config import Config
from .data import Splits, load_source, make_splits
from .models import create_model
from .run_dir import DONE


@dataclass
class FinishedRun:
    root: Path
    config: Config
    record: dict[str, Any]  # splits.json: classes, mean, std, counts, seed

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def mean(self) -> list[float]:
        return list(self.record["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.record["std"])

    def rounds(self) -> list[int]:
        """The finished rounds (their folder has a DONE manifest), in order."""
        done = [int(p.name.split("_")[1]) for p in self.root.glob("round_*")
                if p.name.split("_")[1].isdigit() and (p / DONE).is_file()]
        return sorted(done)

    def phase(self, which: str | int) -> tuple[int, Path]:
        """`"teacher"` (round 0's labels-only teacher), a round number, or `"last"` (the newest
        finished round's student) -> (ladder rung, weights file)."""
        if which == "teacher":
            path = self.root / "teacher" / "model.safetensors"
            rung = 0
        else:
            rounds = self.rounds()
            k = rounds[-1] if which == "last" and rounds else which
            if which == "last" and not rounds:
                raise ArtifactError(f"{self.root}: no finished round yet (no round_K/{DONE})")
            if not isinstance(k, int) or k not in rounds:
                raise ArtifactError(f"{self.root}: round {which} is not finished; finished "
                                    f"rounds: {rounds or 'none'}")
            path, rung = self.root / f"round_{k}" / "student.safetensors", k + 1
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        return rung, path

    def model(self, which: str | int = "last", device: str | torch.device = "cpu") -> nn.Module:
        """The weights of a phase in its architecture, in eval mode."""
        rung, path = self.phase(which)
        c = self.config
        model = create_model(c.model_for(rung), num_classes=len(self.classes),
                             in_chans=self.channels, drop_rate=c.model.drop_rate,
                             drop_path_rate=c.model.drop_path_rate)
        return load_weights(model, path).to(device).eval()

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images the models were trained on (runs made before splits.json
        recorded it: the data is re-made to find out)."""
        shape = self.record.get("image_shape") or self.splits().test.images.shape[1:]
        return tuple(int(v) for v in shape)  # type: ignore[return-value]

    def splits(self) -> Splits:
        """The run's labeled / unlabeled / test split, re-made from its config and seed."""
        return make_splits(load_source(self.config.data), self.config.data, self.config.seed)


def open_run(path: str | Path) -> FinishedRun:
    """A run directory (or any file or folder inside one: a weights file, a round folder)."""
    path = Path(path).resolve()
    for root in [path, *path.parents]:
        if (root / "config.json").is_file() and (root / "splits.json").is_file():
            record = load_json(root / "splits.json", dict)
            _check_record(root / "splits.json", record)
            return FinishedRun(root, Config.load(root / "config.json"), record)
    raise ArtifactError(f"{path}: not inside a run directory (no config.json and splits.json "
                        "here or above)")


def _check_record(path: Path, record: dict[str, Any]) -> None:
    """What the tools read of splits.json: class names, and a mean and std per channel."""
    classes, mean, std = record.get("classes"), record.get("mean"), record.get("std")
    fine = (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
            and len(mean) in (1, 3) and all(isinstance(v, (int, float)) for v in mean + std))
    if not fine:
        raise ArtifactError(f"{path}: damaged (expected classes, and a mean and std per "
                            "channel)")
