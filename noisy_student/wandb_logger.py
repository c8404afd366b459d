"""Weights & Biases: one wandb run per phase (round 0's teacher, each round), all in one group.

Optional, and it fails soft: any error from wandb (import, init, log, finish) becomes one
warning and tracking stops for the rest of the process; training goes on, and metrics.jsonl
keeps everything. The run ids live in `<run dir>/wandb.json`, so --resume and --from-round
continue the same wandb runs (`resume="allow"`), and a branch (--out elsewhere) gets new ones.

Charts: `train/*` against `train/step` (every loss part, lr), `epoch/*` against `epoch`
(mean loss parts, throughput, test top-1 / ECE), and `round/*`, `pseudo_labels/*` against
`round`, so one chart across the group shows accuracy versus round. The framework's own
counters are the x axes, so rows logged again after a resume are kept, not dropped.
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import numpy as np

from .checkpoint import RunDirError, load_json, save_json
from .config import TrackingConfig
from .pseudo_label import PseudoLabels, confidence_extremes

# event of metrics.jsonl -> (wandb key prefix, the field that is its x axis)
AXES = {"step": ("train/", "step"), "epoch": ("epoch/", "epoch"),
        "pseudo_labels": ("pseudo_labels/", "round"), "round": ("round/", "round")}
X_AXIS_NAME = {"step": "train/step", "epoch": "epoch", "pseudo_labels": "round", "round": "round"}


def _new_id() -> str:
    """A wandb run id: 8 lowercase letters and digits."""
    return uuid.uuid4().hex[:8]


def _default_base_url() -> str:
    """The server wandb talks to by default (it differs between wandb versions)."""
    try:
        import wandb

        return str(wandb.Settings().base_url)
    except Exception:  # noqa: BLE001 - no usable wandb: the classic host
        return "https://api.wandb.ai"


def logged_in(env: Mapping[str, str] = os.environ) -> bool:
    """Whether wandb would find credentials (API key variables, or a netrc entry for its host),
    read without touching the network."""
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or _default_base_url()).hostname
    path = env.get("NETRC") or os.path.join(env.get("HOME", "~"), ".netrc")
    try:
        return netrc.netrc(os.path.expanduser(path)).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(configured: str, env: Mapping[str, str] = os.environ) -> str:
    """WANDB_MODE wins; else the configured mode; `auto` is online when logged in, else offline."""
    forced = env.get("WANDB_MODE", "").strip().lower()
    if forced:
        return {"dryrun": "offline", "run": "online"}.get(forced, forced)
    if configured != "auto":
        return configured
    return "online" if logged_in(env) else "offline"


def wandb_row(event: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """The wandb row of one metrics.jsonl event: numbers under the event's prefix, with its x
    axis; None for events without a chart."""
    if event not in AXES:
        return None
    prefix, axis = AXES[event]
    row: dict[str, Any] = {X_AXIS_NAME[event]: fields[axis]}
    for key, value in fields.items():
        if key == axis or key == "time" or value is None or isinstance(value, (str, bool)):
            continue
        if isinstance(value, (list, tuple)):  # per-class counts
            row.update({f"{prefix}{key}/{i}": v for i, v in enumerate(value)})
        elif isinstance(value, (int, float)):
            row[prefix + key] = value
    return row


class WandbLogger:
    """The wandb side of a `tracking.Tracker` (see the module docstring)."""

    def __init__(self, cfg: TrackingConfig, experiment: str, run_dir: Path,
                 config: dict[str, Any], mode: str) -> None:
        self.cfg, self.mode, self.run_dir, self.config = cfg, mode, Path(run_dir), config
        self.base = cfg.run_name or experiment
        self.ids_path = self.run_dir / "wandb.json"
        self.run: Any = None
        self.failed = self.announced = False

    # every call into wandb goes through here
    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never cost a training run
            self.failed = True
            warnings.warn(f"wandb: {what} failed ({type(e).__name__}: {e}); tracking is off for "
                          "the rest of this run; training goes on and metrics.jsonl has every "
                          "metric", RuntimeWarning, stacklevel=2)
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001, S110 - already failing; the warning is out
                    pass
            return None

    def _ids(self) -> dict[str, Any]:
        """The wandb group and run ids of this run (wandb.json); a damaged file is replaced:
        the phases it named start new wandb runs, in a new group."""
        try:
            ids = load_json(self.ids_path, dict) if self.ids_path.is_file() else {}
        except RunDirError as e:
            warnings.warn(f"wandb: {e}; starting new wandb runs", RuntimeWarning, stacklevel=2)
            ids = {}
        if not isinstance(ids.get("runs", {}), dict):
            ids = {}
        ids.setdefault("group", f"{self.base}-{_new_id()[:6]}")
        ids.setdefault("runs", {})
        return ids

    def start(self, key: str, name: str, job_type: str, info: dict[str, Any]) -> None:
        """Start (or continue, when `key` has an id already) the wandb run of one phase."""
        self._guard("wandb.init", self._start, key, name, job_type, info)

    def _start(self, key: str, name: str, job_type: str, info: dict[str, Any]) -> None:
        import wandb

        ids = self._ids()
        run_id = ids["runs"].setdefault(key, _new_id())
        save_json(self.ids_path, ids)  # before init: a crash during init keeps the id
        self.run = wandb.init(
            project=self.cfg.project, entity=self.cfg.entity, group=ids["group"],
            job_type=job_type, name=f"{self.base}/{name}", tags=list(self.cfg.tags),
            config={**self.config, **info}, id=run_id, resume="allow", dir=str(self.run_dir),
            mode=self.mode, reinit="finish_previous",
            settings=wandb.Settings(init_timeout=self.cfg.init_timeout, console="off",
                                    silent=True))
        for x in sorted(set(X_AXIS_NAME.values())):
            self.run.define_metric(x, hidden=False)
        for event, (prefix, _) in AXES.items():
            self.run.define_metric(f"{prefix}*", step_metric=X_AXIS_NAME[event])
        if not self.announced:
            self.announced = True
            print(f"wandb: {self.mode} run {run_id} in group {ids['group']}"
                  + (f"; upload later with: wandb beta sync {self.run_dir / 'wandb'}"
                     if self.mode == "offline" else ""), file=sys.stderr, flush=True)

    def log(self, event: str, fields: Mapping[str, Any]) -> None:
        row = wandb_row(event, fields)
        if self.run is not None and row is not None:
            self._guard("wandb.log", self.run.log, row)
        if self.run is not None and event in ("teacher", "round"):
            summary = {k: v for k, v in fields.items() if isinstance(v, (int, float, str))}
            self._guard("wandb summary", self.run.summary.update, summary)

    def samples(self, k: int, images: np.ndarray, labels: PseudoLabels,
                hidden: np.ndarray | None) -> None:
        """A table of the most and least confident unlabeled images per class, with the
        teacher's label and confidence (and the hidden true label when known)."""
        if self.run is not None and self.cfg.samples_per_class > 0:
            self._guard("wandb table", self._samples, k, images, labels, hidden)

    def _samples(self, k: int, images: np.ndarray, labels: PseudoLabels,
                 hidden: np.ndarray | None) -> None:
        import wandb

        kept = set(labels.indices.tolist())
        table = wandb.Table(columns=["image", "teacher_label", "confidence", "extreme", "kept",
                                     "true_label", "index"])
        for i, c, conf, which in confidence_extremes(labels.predicted, labels.confidence_all,
                                                     labels.num_classes,
                                                     self.cfg.samples_per_class):
            true = int(hidden[i]) if hidden is not None and len(hidden) > i else None
            table.add_data(wandb.Image(images[i]), c, conf, which, i in kept, true, i)
        self.run.log({"round": k, "pseudo_labels/samples": table})

    def artifact(self, k: int, files: list[Path], metadata: dict[str, Any]) -> None:
        """Upload round k's files (student weights, pseudo-labels) as artifact
        `<group>-round-<k>` when tracking.upload_checkpoints."""
        if self.run is not None and self.cfg.upload_checkpoints:
            self._guard("wandb artifact", self._artifact, k, files, metadata)

    def _artifact(self, k: int, files: list[Path], metadata: dict[str, Any]) -> None:
        import wandb

        art = wandb.Artifact(f"{self.run.group}-round-{k}", type="model",
                             metadata={"round": k, **metadata})
        for path in files:  # a folder (soft-label parts) keeps its name inside the artifact
            if path.is_dir():
                art.add_dir(str(path), name=path.name)
            elif path.is_file():
                art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is not None:
            self._guard("wandb.finish", run.finish, exit_code=exit_code)
