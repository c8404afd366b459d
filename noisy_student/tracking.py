"""Metrics that always land in the run directory (metrics.jsonl), optionally wandb, and progress.

Progress is a tqdm bar on a terminal and plain log lines otherwise (CI logs, files).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .wandb_logger import WandbLogger


class Tracker:
    """Every event becomes a line of metrics.jsonl ({"time", "event", ...}, flushed at once);
    with a `WandbLogger`, it also goes to the wandb run of the current phase."""

    def __init__(self, path: Path | None, wandb: WandbLogger | None = None) -> None:
        self.path, self.wandb = path, wandb
        self._file = open(path, "a", buffering=1) if path is not None else None

    def log(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields})
                             + "\n")
        if self.wandb is not None:
            self.wandb.log(event, fields)

    # phases and extras: no-ops without wandb
    def start_phase(self, key: str, name: str, job_type: str, info: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.start(key, name, job_type, info)

    def end_phase(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code)

    def samples(self, k: int, images: Any, labels: Any, hidden: Any) -> None:
        if self.wandb is not None:
            self.wandb.samples(k, images, labels, hidden)

    def artifact(self, k: int, files: list[Path], metadata: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.artifact(k, files, metadata)

    def close(self, exit_code: int = 0) -> None:
        self.end_phase(exit_code)
        if self._file is not None:
            self._file.close()
            self._file = None


class Progress:
    """A progress bar over `total` units with a live postfix, or log lines when not a TTY."""

    def __init__(self, total: int, desc: str, unit: str = "img", log_every_s: float = 15.0,
                 enabled: bool = True) -> None:
        self.interactive = enabled and sys.stderr.isatty()
        self.enabled, self.desc, self.total, self.unit = enabled, desc, total, unit
        self.done, self.start, self.last_log = 0, time.perf_counter(), time.perf_counter()
        self.log_every_s, self.postfix = log_every_s, ""
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False,
                        dynamic_ncols=True) if self.interactive else None

    def update(self, n: int, **postfix: float) -> None:
        self.done += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(self.postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self.last_log >= self.log_every_s:
            self.last_log = time.perf_counter()
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} "
                  f"({self.rate:.0f} {self.unit}/s) {self.postfix}", file=sys.stderr, flush=True)

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
