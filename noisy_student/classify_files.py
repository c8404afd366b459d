"""`noisy-student predict`: a finished run's model on image files, top-k classes per file.

    noisy-student predict runs/digits img1.png img2.png --top-k 3
    noisy-student predict runs/digits/round_1/student.safetensors img.png --json

Each file is read like the run's data (`image_folder.read_image`: converted to the run's
channels, resized to its image size), normalized with the run's mean and std, and classified by
the model of the chosen phase in eval mode.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NoisyStudentError, PredictError  # noqa: F401 (PredictError raised here)
from .artifacts import FinishedRun, open_run
from .data import to_tensor
from .data.image_folder import BadFile, read_image


@dataclass
class Prediction:
    file: str
    top: list[tuple[int, str, float]]  # (class index, class name, probability), best first

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "top_k": [{"index": i, "class": name, "probability": p}
                                             for i, name, p in self.top]}


def input_size(run: FinishedRun) -> int:
    """The side of the square images the run's models were trained on."""
    return run.image_shape[0]


def resolve(checkpoint: str | Path) -> tuple[FinishedRun, str | int]:
    """A run directory (its last finished round), a round or teacher folder, or a weights file
    inside a run -> (run, phase)."""
    path = Path(checkpoint)
    if not path.exists():
        raise PredictError(f"{checkpoint}: no such file or directory")
    run = open_run(path)
    path = path.resolve()
    if path == run.root:
        return run, "last"
    folder = path if path.is_dir() else path.parent
    match = re.fullmatch(r"round_(\d+)", folder.name)
    which: str | int | None = None
    if folder.parent == run.root and folder.name == "teacher":
        which = "teacher"
    elif folder.parent == run.root and match:
        which = int(match.group(1))
    if which is None or (path.is_file() and path != run.phase(which)[1]):
        raise PredictError(f"{checkpoint}: not a model of the run in {run.root} (give the run "
                           "directory, teacher/model.safetensors or round_K/student.safetensors)")
    run.phase(which)  # raises ArtifactError when that phase is not finished
    return run, which


def read_images(files: list[str], size: int, channels: int) -> np.ndarray:
    """Image files -> uint8 [N, size, size, channels]; a bad file raises `PredictError`."""
    arrays = []
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError as e:
            raise PredictError(f"{name}: cannot be read ({e.strerror})") from e
        try:
            arrays.append(read_image(data, size, channels)[0])
        except BadFile as e:  # PIL's own message names a BytesIO, not the file
            detail = "not an image file" if e.kind == "non-image files" else e.detail
            raise PredictError(f"{name}: {detail}") from e
    return np.stack(arrays)


@torch.no_grad()
def predict(run: FinishedRun, which: str | int, files: list[str], top_k: int = 5,
            batch_size: int = 256) -> list[Prediction]:
    """Top-k classes with probabilities for each file, in order."""
    images = read_images(files, input_size(run), run.channels)  # [N, H, W, C]
    model = run.model(which)
    probs = torch.cat([model(to_tensor(images[i:i + batch_size], run.mean, run.std)).softmax(1)
                       for i in range(0, len(images), batch_size)])  # [N, num_classes]
    p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)  # [N, k]
    names = run.classes
    return [Prediction(f, [(int(i), names[int(i)], float(q)) for i, q in zip(ii, pp)])
            for f, ii, pp in zip(files, idx.tolist(), p.tolist())]


def main(args: argparse.Namespace) -> str | None:
    """Print the predictions; returns an error message (exit status 2) or None."""
    if args.top_k < 1:
        return f"--top-k must be at least 1, not {args.top_k}"
    try:
        run, which = resolve(args.checkpoint)
        results = predict(run, which, list(args.images), args.top_k)
    except NoisyStudentError as e:
        return str(e)
    rung, weights = run.phase(which)
    phase = "teacher" if which == "teacher" else f"round {rung - 1}"
    if args.json:
        print(json.dumps({"run": str(run.root), "phase": phase, "weights": str(weights),
                          "predictions": [r.to_dict() for r in results]}, indent=2))
        return None
    print(f"{run.root} ({phase}: {run.config.model_for(rung)})")
    width = max(len(name) for name in run.classes)
    for r in results:
        print(r.file)
        for rank, (_, name, prob) in enumerate(r.top, 1):
            print(f"  {rank}. {name:<{width}}  {prob:.4f}")
    return None
