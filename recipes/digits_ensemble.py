"""Noisy Student on digits with ensemble teachers (Hinton et al. 2015): from round 1 on, the
pseudo-labels come from the average of the last three models' predicted probabilities (round 0's
teacher, then each round's student), not from the newest student alone.

    python recipes/digits_ensemble.py [--rounds N] [--out DIR] [--set key=value ...]
"""

from dataclasses import replace

from digits import make_config as digits_config

from noisy_student import Config, run_recipe


def make_config() -> Config:
    config = digits_config()
    # soft targets, as Hinton et al.'s ensembles (the digits recipe itself uses hard ones)
    return config.replace(name="digits_ensemble", pseudo_label=replace(
        config.pseudo_label, kind="soft", ensemble=3, ensemble_average="probs"),
        loss=replace(config.loss, distillation="soft_ce"))


if __name__ == "__main__":
    run_recipe(make_config())
