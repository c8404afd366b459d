"""Benchmark runs named by what they are, and the provenance of every figure.

A benchmark job (the recipe's loop, a baseline, an ablation variant) is identified by a
fingerprint of what it runs: its resolved config without `out`, files it loads named by their
sha256, its own settings, and the package code that runs it (the git tree of `noisy_student/`,
with a hash of any uncommitted change to it). It lives in `<work>/<dataset>/<kind>-seed<N>-<fp>`
and writes `result.json` there when it finishes. A finished job is reused, an unfinished one
resumed; a changed config or package makes another directory. No rule decides by hand whether an
old result still holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from noisy_student.checkpoint import load_json, save_json
from noisy_student.config import Config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "noisy_student"
FIGURE_CODE = (PACKAGE, "tools", "recipes", "pyproject.toml")  # what a figure depends on


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


@lru_cache(maxsize=1)
def package_code() -> str:
    """The package's code as one name: its git tree at HEAD, plus a hash of the uncommitted
    change to it ("unknown" outside a git checkout)."""
    tree = _git("rev-parse", f"HEAD:{PACKAGE}") or "unknown"
    change = _git("diff", "HEAD", "--", PACKAGE)
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", PACKAGE)
    if not change and not untracked:
        return tree
    extra = change + "".join((ROOT / p).read_text(errors="replace")
                             for p in untracked.splitlines())
    return f"{tree}+dirty-{hashlib.sha256(extra.encode()).hexdigest()[:12]}"


@lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """The code this process runs, as it was when first asked (benchmark.py asks at start):
    commit, whether the code that makes figures (FIGURE_CODE) had uncommitted changes, and the
    package code."""
    return {"commit": _git("rev-parse", "HEAD") or None,
            # uncommitted changes to what makes figures (tests and docs do not)
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                               *FIGURE_CODE)),
            "package_code": package_code()}


def provenance() -> dict[str, Any]:
    """What made a figure: the code (`code_state`), versions and machine. No path of the
    machine."""
    import albumentations
    import numpy
    import torch
    import torchvision

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {**code_state(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                         "albumentations": albumentations.__version__},
            "machine": {"cpu": cpu, "cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                        else None, "platform": platform.platform()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def identity(config: Config) -> dict[str, Any]:
    """A config as a job's identity: without `out`, a loaded teacher named by its sha256."""
    data = config.to_dict()
    data.pop("out")
    path = config.model.teacher_checkpoint
    if path:
        data["model"]["teacher_checkpoint"] = "sha256:" + _file_sha256(path)
    return data


def fingerprint(what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


@lru_cache(maxsize=64)
def _file_sha256(path: str) -> str:
    from noisy_student.checkpoint import file_sha256

    return file_sha256(Path(path))


@dataclass(frozen=True)
class Job:
    """One benchmark run: where it lives follows from what it is."""

    work: Path
    dataset: str
    kind: str  # noisy_student, labels_only, supervised, ablation name
    seed: int
    what: str  # json of the identity (a string, so that the dataclass stays hashable)

    @classmethod
    def of(cls, work: Path, dataset: str, kind: str, seed: int, **what: Any) -> Job:
        return cls(work, dataset, kind, seed, json.dumps(what, sort_keys=True))

    @property
    def fingerprint(self) -> str:
        return fingerprint({"kind": self.kind, "what": json.loads(self.what),
                            "package": package_code()})

    @property
    def folder(self) -> Path:
        name = self.kind.replace(" ", "_")
        return self.work / self.dataset / f"{name}-seed{self.seed}-{self.fingerprint}"

    def result(self) -> dict[str, Any] | None:
        """The finished job's figures, or None when it has not finished."""
        path = self.folder / "result.json"
        return load_json(path) if path.is_file() else None

    def reused(self) -> dict[str, Any] | None:
        """`result()`, saying so when there is one."""
        done = self.result()
        if done is not None:
            print(f"{self.kind} seed {self.seed}: finished earlier, reused from "
                  f"{done['run_dir']}", flush=True)
        return done

    def finish(self, figures: dict[str, Any]) -> dict[str, Any]:
        """Save the job's figures with their provenance; returns what was saved."""
        result = {**figures, "fingerprint": self.fingerprint,  # run_dir: under the work folder
                  "run_dir": str(self.folder.relative_to(self.work)), "provenance": provenance()}
        save_json(self.folder / "result.json", result)
        return result

