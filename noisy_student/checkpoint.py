"""The run directory and its files, every one written atomically (temp file, fsync, os.replace).

runs/<name>/
  config.json  splits.json  summary.json  metrics.jsonl
  teacher/  model.safetensors  metrics.json  DONE        round 0's labels-only teacher
  round_K/  pseudo_labels.npz  student.safetensors  metrics.json  DONE
A folder without DONE is incomplete; DONE is written last and lists the folder's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

DONE = "DONE"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors; returns `weights_sha256` of it (the weights' identity)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, save(state, metadata=metadata))
    return weights_sha256(state)


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes): stable where file bytes are not
    (safetensors writes its metadata map in a varying order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load safetensors weights into `model` (no pickle); names the file when it cannot."""
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise RunDirError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunDirError(f"{path}: weights do not fit model {type(model).__name__}: {e}") from e
    return model


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class RunDir:
    """Paths and completion markers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def check_free(self, overwrite: bool = False) -> None:
        """Refuse a directory that already holds a run unless `overwrite`."""
        if self.root.exists() and any(self.root.iterdir()) and not overwrite:
            raise RunDirError(f"{self.root} already holds a run; choose another --out, or pass "
                              "--overwrite to write into it")

    def create(self, overwrite: bool = False) -> None:
        """Make the directory (see `check_free`)."""
        self.check_free(overwrite)
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise RunDirError(f"{self.root} is not writable")

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def round(self, k: int) -> Path:
        return self.root / f"round_{k}"

    def is_done(self, folder: Path) -> bool:
        return (folder / DONE).is_file()

    def mark_done(self, folder: Path) -> None:
        """Write DONE last, listing the folder's files with their sizes and sha256."""
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(folder.iterdir()) if p.name != DONE and not p.name.startswith(".")}
        save_json(folder / DONE, {"files": files})

    def verify(self, folder: Path) -> None:
        """Check a finished folder against its DONE manifest; names the first bad file."""
        for name, expected in load_json(folder / DONE)["files"].items():
            path = folder / name
            if not path.is_file():
                raise RunDirError(f"{path}: listed in {folder / DONE} but missing")
            if path.stat().st_size != expected["bytes"]:
                raise RunDirError(f"{path}: {path.stat().st_size} bytes, its DONE manifest says "
                                  f"{expected['bytes']} (truncated or changed)")
            if _sha256(path) != expected["sha256"]:
                raise RunDirError(f"{path}: sha256 differs from its DONE manifest (corrupt or "
                                  "changed)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
