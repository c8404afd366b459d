"""Metrics that always land in the run directory (metrics.jsonl), and progress display.

Progress is a tqdm bar on a terminal and plain log lines otherwise (CI logs, files).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class JsonlTracker:
    """Appends one JSON object per line: {"time", "event", ...}. Lines are flushed at once."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1) if path is not None else None

    def log(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields})
                             + "\n")

    def close(self) -> None:
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
