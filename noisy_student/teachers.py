"""A round's teacher beyond one model: an ensemble of the last models (Hinton et al. 2015), a
generalist with specialists (`specialists.py`), either of them averaged over fixed views of each
image (mirrored, shifted). Each gives `(module, name, sha256)`: the sha256 of a composite
teacher hashes its members' identities, so its pseudo-labels can be reused."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint import load_weights, weights_sha256
from .config import Config
from .data import Splits
from .inference import Ensemble, ViewAverage
from .ladder import build_model
from .noise import Noise
from .run_dir import RunDir
from .specialists import make_specialists
from .tracking import Tracker


@dataclass
class Teacher:
    """A model that teaches a round: its name, its weights' sha256 (which names the pseudo-labels
    it makes) and its scores (test top1, top5, ece; val_top1, val_ece with a validation set)."""

    model: nn.Module | None
    name: str
    sha256: str
    scores: dict[str, float]

    def release(self) -> None:
        """Drop the model once it has labeled (its memory goes before the student is built)."""
        self.model = None


def combined_sha256(shas: list[str]) -> str:
    return hashlib.sha256("".join(shas).encode()).hexdigest()


def ensemble_of_last(config: Config, run_dir: RunDir, splits: Splits, device: torch.device,
                     k: int, newest: nn.Module, name: str,
                     sha: str) -> tuple[nn.Module, str, str] | None:
    """Round k's teacher `newest` averaged with the models before it (round 0's teacher, then
    each round's student, loaded from `run_dir`), `pseudo_label.ensemble` in all; None in round
    0, where there is nothing to add."""
    older = [(0, run_dir.teacher / "model.safetensors")] + [
        (j + 1, run_dir.round(j) / "student.safetensors") for j in range(k - 1)]
    older = older[max(0, len(older) - (config.pseudo_label.ensemble - 1)):] if k else []
    if not older:
        return None
    members = [load_weights(build_model(config, rung, splits), path).to(device)
               for rung, path in older]
    names = [config.model_for(rung) for rung, _ in older] + [name]
    shas = [weights_sha256(m.state_dict()) for m in members] + [sha]
    return (Ensemble([*members, newest], config.pseudo_label.ensemble_average),
            f"ensemble({', '.join(names)})", combined_sha256(shas))


def with_specialists(config: Config, splits: Splits, noise: Noise | None, batch_noise: Any,
                     device: torch.device, tracker: Tracker, k: int, generalist: nn.Module,
                     name: str, sha: str) -> tuple[nn.Module, str, str, dict[str, Any]]:
    """Round k's generalist plus specialists on its confusable classes, and the report (groups,
    count); the generalist itself when no group was found."""
    teacher, report = make_specialists(generalist, config, splits, noise, batch_noise, device,
                                       tracker, k)
    if teacher is generalist:
        return generalist, name, sha, report
    shas = [sha] + [weights_sha256(s.state_dict()) for s in teacher.specialists]
    return teacher, f"{name} + {report['specialists']} specialists", combined_sha256(shas), report


def view_averaged(model: nn.Module, name: str, sha: str, flip: bool,
                  shift: int) -> tuple[nn.Module, str, str]:
    """The teacher averaged over fixed views of each image: its mirror image
    (`pseudo_label.flip_average`), shifts of a few pixels (`pseudo_label.shift_average`)."""
    if not shift:
        return ViewAverage(model), f"{name}, flip-averaged", combined_sha256([sha, "flip"])
    views = ViewAverage(model, flip, shift)
    n = 5 * (1 + flip)
    return (views, f"{name}, averaged over {n} views (shifts of {shift} px"
            f"{', mirrored' if flip else ''})", combined_sha256([sha, f"views {flip} {shift}"]))
