import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from noisy_student.config import Config  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads cost more than they give, and CI has 2 cores


def make_tiny_config(out: Path) -> Config:
    """Two rounds on a small slice of digits: seconds on a CPU."""
    return Config.from_dict({
        "name": "tiny", "seed": 0, "rounds": 2, "out": str(out),
        "data": {"source": "digits", "labeled_per_class": 5, "unlabeled_limit": 200,
                 "test_limit": 100},
        "model": {"ladder": ["cnn_tiny", "cnn_tiny", "cnn_small"]},
        "noise": {"crop_padding": 1, "flip": False},
        "pseudo_label": {"threshold": 0.0},
        # a teacher of 12 steps: near chance, past the sanity gate (tests/test_plan.py has it)
        "train": {"teacher_epochs": 3, "epochs": 1, "batch_size": 16, "device": "cpu",
                  "log_every": 2, "sanity_gate": False},
    })


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    return make_tiny_config(tmp_path / "run")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished two-round tiny run, made once per test module (for the tools' tests)."""
    from noisy_student.loop import run

    out = tmp_path_factory.mktemp("tiny") / "run"
    run(make_tiny_config(out))
    return out
