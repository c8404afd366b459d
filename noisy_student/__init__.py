"""noisy-student: Noisy Student self-training for semi-supervised image classification.

Data flow, one module each: data -> noise -> models -> pseudo_label -> losses -> train -> loop
(-> checkpoint, tracking). Recipes build a `Config` and call `run_recipe(config)`.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not go online

from .cli import run_recipe  # noqa: E402
from .config import (Config, ConfigError, DataConfig, LossConfig, ModelConfig,  # noqa: E402
                     NoiseConfig, PseudoLabelConfig, TrainConfig)

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "NoiseConfig",
           "PseudoLabelConfig", "TrainConfig", "run", "run_recipe"]


def run(config: Config, overwrite: bool = False, resume: bool = False) -> dict:
    """Run the whole Noisy Student loop for `config` (see `noisy_student.loop`)."""
    from .loop import run as _run

    return _run(config, overwrite, resume)
