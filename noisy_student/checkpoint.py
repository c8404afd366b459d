"""Files of a run, each written atomically (temp file, flush + fsync, `os.replace`).

Weights are safetensors; pseudo-labels `.npz` (read without pickle); training state a `.ckpt`:

    NOISY-STUDENT-CKPT\\n                          magic line
    {"format": 1, "bytes": n, "sha256": ..., ...}  header: one JSON line (step, epoch, context)
    <n bytes>                                     torch.save of plain containers and tensors

so a truncated or damaged file is caught by its length and sha256 before anything is parsed, and
the payload is read with `torch.load(weights_only=True)`: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save

from .errors import CheckpointError, RunDirError  # noqa: F401 (raised here, importable from here)
from .models.weights import grow as grow_into

CKPT_MAGIC = b"NOISY-STUDENT-CKPT\n"
CKPT_FORMAT = 1


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part.

    A failure (disk full, I/O error, read-only path) leaves the previous file as it was and
    raises `RunDirError` naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RunDirError(f"{path}: cannot write ({e.strerror or e}); the previous version of "
                          "the file, if any, is intact; fix the cause (free space?) and continue "
                          "with --resume") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: Path, shape: type | None = None) -> Any:
    """A JSON file of the run; `RunDirError` naming it when it cannot be read, is not UTF-8
    JSON, or (with `shape`) its top level is not of that type."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise RunDirError(f"{path}: cannot read it ({e.strerror or e})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: damaged, not JSON ({e})") from e
    if shape is not None and not isinstance(data, shape):
        raise RunDirError(f"{path}: damaged, expected a JSON {shape.__name__}, found "
                          f"{type(data).__name__}")
    return data


def _digest(items: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    digest = hashlib.sha256()
    for name, dtype, shape, data in items:
        digest.update(f"{name}|{dtype}|{shape}|".encode())
        digest.update(data)
    return digest.hexdigest()


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes): stable where file bytes are not
    (safetensors writes its metadata map in a varying order)."""
    tensors = {k: state[k].detach().cpu().contiguous() for k in sorted(state)}
    return _digest((k, str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy()
                    .tobytes()) for k, t in tensors.items())


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The same identity for numpy arrays (pseudo-labels)."""
    return _digest((k, str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes())
                   for k, a in sorted(arrays.items()))


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors; returns `weights_sha256` of it (the weights' identity)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, save(state, metadata=metadata))
    return weights_sha256(state)


def load_weights(model: torch.nn.Module, path: Path, grow: bool = False) -> torch.nn.Module:
    """Load weights into `model` from safetensors, or from a `.ckpt` (its EMA weights when it has
    them, else its model weights). No pickle; names the file when it cannot. `grow`: `model` may
    be a deeper network of the same family, which starts as the weights' one (`models.weights.
    grow`)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        _, state = load_checkpoint(path)
        state = model_weights(state)
    else:
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
            raise RunDirError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    try:
        if grow:
            grow_into(model, state)
        else:
            model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise RunDirError(f"{path}: weights do not fit model {type(model).__name__}: {e}") from e
    return model


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---- training-state checkpoints ---------------------------------------------------------------

def save_checkpoint(path: Path, state: dict[str, Any], info: dict[str, Any]) -> None:
    """Write `state` (plain containers and tensors) with a header of `info`, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = {"format": CKPT_FORMAT, "bytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest(), **info}
    atomic_write(path, CKPT_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, state) of a `.ckpt`; `CheckpointError` naming the file and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from e
    if not data.startswith(CKPT_MAGIC):
        raise CheckpointError(f"{path}: not a noisy-student checkpoint (no {CKPT_MAGIC[:-1]!r} "
                              "line)")
    end = data.find(b"\n", len(CKPT_MAGIC))
    try:
        header = json.loads(data[len(CKPT_MAGIC):end])
        expected_bytes, expected_sha = int(header["bytes"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint header ({e})") from e
    if header.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {header.get('format')!r}; this version "
                              f"reads format {CKPT_FORMAT}")
    payload = data[end + 1:] if end >= 0 else b""
    if len(payload) != expected_bytes:
        raise CheckpointError(f"{path}: truncated checkpoint: {len(payload)} bytes of state, its "
                              f"header says {expected_bytes}")
    if hashlib.sha256(payload).hexdigest() != expected_sha:
        raise CheckpointError(f"{path}: corrupt checkpoint: sha256 of its state differs from "
                              "its header")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler raises many types; all mean "bad file"
        raise CheckpointError(f"{path}: cannot load checkpoint state ({type(e).__name__}: "
                              f"{e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: damaged checkpoint state (not a mapping)")
    return header, state


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint would teach with: its EMA's when it has one, else the model's."""
    ema = state.get("ema")
    if ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return state["model"]


class TrainCheckpoints:
    """The checkpoints of one training phase in `folder` (`step-00000123.ckpt`).

    `context` names what is trained (phase, teacher and pseudo-label identities); a checkpoint
    made for another context is refused on resume rather than silently mixed in.
    """

    def __init__(self, folder: Path, context: dict[str, Any], keep: int = 2,
                 every_steps: int = 0, every_minutes: float = 0.0, resume: bool = False) -> None:
        self.folder, self.context, self.keep, self.resume = Path(folder), context, keep, resume
        self.every_steps, self.every_seconds = every_steps, 60.0 * every_minutes
        self.last_save, self.last_step = time.monotonic(), -1

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return sorted(self.folder.glob("step-*.ckpt"))

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self.last_save >= self.every_seconds

    def save(self, step: int, epoch: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step`, then keep only the newest `keep`."""
        path = self.folder / f"step-{step:08d}.ckpt"
        if step != self.last_step or not path.is_file():
            save_checkpoint(path, state, {"step": step, "epoch": epoch, "context": self.context})
        self.last_save, self.last_step = time.monotonic(), step
        self.prune(self.keep)
        return path

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` checkpoints; drop temporary files of torn writes."""
        for old in self.paths()[:-keep]:
            old.unlink()
        for torn in self.folder.glob(".step-*.ckpt.*.tmp"):  # one writer per run: not in use
            torn.unlink(missing_ok=True)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid checkpoint (damaged ones are skipped and reported), or None."""
        damaged = []
        for path in reversed(self.paths()):
            try:
                header, state = load_checkpoint(path)
                if not (type(header.get("step")) is int and type(header.get("epoch")) is int):
                    raise CheckpointError(f"{path}: damaged checkpoint header (no step or epoch)")
            except CheckpointError as e:
                damaged.append(str(e))
                print(f"resume: skipping {e}", flush=True)
                continue
            if header.get("context") != self.context:
                raise CheckpointError(
                    f"{path}: made for {header.get('context')}, but this phase is "
                    f"{self.context}; move {self.folder} aside to start the phase over")
            print(f"resume: continuing from {path} (step {header['step']}, "
                  f"{header['epoch']} epochs complete)", flush=True)
            return path, state
        if damaged:
            raise CheckpointError("no valid checkpoint is left:\n  " + "\n  ".join(damaged)
                                  + f"\nmove {self.folder} aside to start the phase over")
        return None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
