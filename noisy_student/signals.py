"""Graceful stops: SIGINT / SIGTERM finish the current step, then the run checkpoints and exits.

While a `GracefulStop` is active the first SIGINT or SIGTERM only sets a flag. Training looks at
it after every optimizer step (it writes a checkpoint, then raises `Interrupted`); pseudo-labeling
looks at it between batches (nothing to save: it restarts on resume). A second signal stops the
process at once, as if no handler were installed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal; `checkpoint` is the file written for it (None: none needed)."""

    def __init__(self, signum: int, where: str, checkpoint: Path | None = None) -> None:
        self.signum, self.where, self.checkpoint = signum, where, checkpoint
        saved = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} during {where}{saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


class GracefulStop:
    """Context manager that turns the first SIGINT / SIGTERM into a request to stop cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> GracefulStop:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # handlers: main thread only
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker (Ctrl-C reaches the whole group): the main
            # process finishes the step, and shuts the workers down when it exits
        if self.signum is not None:  # the second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step, then writing a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, where: str) -> None:
        """Raise `Interrupted` if a stop was requested (for phases with nothing to save)."""
        if self.signum is not None:
            raise Interrupted(self.signum, where)
