"""Every error the package raises on purpose, in one place. Each message names the file, key or
step at fault and what to do; the command line prints it with exit status 2, no traceback.

    NoisyStudentError
    ├── ConfigError       a configuration was refused (every problem listed at once)
    ├── DataError         data could not be found or read
    ├── RunDirError       the run directory cannot be used as asked
    │   └── CheckpointError   a checkpoint is missing, damaged or made for something else
    ├── SoftLabelError    stored pseudo-labels (their .npz or a soft-label part) damaged
    ├── TrainingError     training cannot go on (non-finite loss, out of memory, sanity gate)
    ├── ArtifactError     a finished run, round or weights file that cannot be used
    └── PredictError      a checkpoint or image file `noisy-student predict` cannot use
"""

from __future__ import annotations


class NoisyStudentError(RuntimeError):
    """The base of the package's own errors."""


class ConfigError(NoisyStudentError, ValueError):
    """A configuration was refused; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


class DataError(NoisyStudentError):
    """Data could not be found or read; the message names what was tried."""


class RunDirError(NoisyStudentError):
    """The run directory cannot be used as asked."""


class CheckpointError(RunDirError):
    """A checkpoint file is missing, truncated, corrupt or made for something else; names it."""


class SoftLabelError(NoisyStudentError):
    """Stored pseudo-labels (a `pseudo_labels.npz` or one of its soft-label parts) missing,
    damaged or not matching their record."""


class TrainingError(NoisyStudentError):
    """Training cannot go on (a non-finite loss, ...); the message names the step."""


class ArtifactError(NoisyStudentError):
    """A run directory, round or weights file that cannot be used; the message says why."""


class PredictError(NoisyStudentError):
    """A checkpoint or image file that cannot be used; the message names it."""
