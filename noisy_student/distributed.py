"""The one place that knows about process ranks (torchrun sets RANK / WORLD_SIZE)."""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank: 0 when not launched by torchrun."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the process that talks to wandb and writes shared files."""
    return rank() == 0
