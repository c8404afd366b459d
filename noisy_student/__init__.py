"""noisy-student: Noisy Student self-training for semi-supervised image classification.

Data flow, one module each: data -> noise -> models -> pseudo_label -> losses -> train -> loop
(-> checkpoint, tracking). Recipes build a `Config` and call `run_recipe(config)`.
"""

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not go online

from .cli import run_recipe  # noqa: E402
from .config import (CheckpointConfig, Config, ConfigError, DataConfig,  # noqa: E402
                     LossConfig, ModelConfig, NoiseConfig, PseudoLabelConfig, TrackingConfig,
                     TrainConfig)

__version__ = "0.1.0"

__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "LossConfig",
           "ModelConfig", "NoiseConfig", "PseudoLabelConfig", "TrackingConfig", "TrainConfig",
           "run", "run_recipe"]


def run(config: Config, **start: Any) -> dict:
    """Run the whole Noisy Student loop for `config`; `start` takes the keywords of
    `noisy_student.loop.run` (overwrite, resume, from_round, teacher, from_run,
    allow_config_change)."""
    from .loop import run as _run

    return _run(config, **start)
