"""Noisy Student on digits with specialists (Hinton et al. 2015, sec. 5): each round, k-means on
the covariance of the generalist teacher's predictions on the unlabeled images finds groups of
classes it confuses; a specialist per group (the teacher fine-tuned on the labeled images, over
the group's classes plus a dustbin) joins it, and the pseudo-labels are the distribution that
agrees best with the generalist and the active specialists. Each round's metrics.json reports the
groups and the teacher's test top-1 with and without its specialists.

    python recipes/digits_specialists.py [--rounds N] [--out DIR] [--set key=value ...]
"""

from dataclasses import replace

from digits import make_config as digits_config

from noisy_student import Config, run_recipe


def make_config() -> Config:
    config = digits_config()
    # soft targets, as Hinton et al.'s specialists (the digits recipe itself uses hard ones)
    return config.replace(name="digits_specialists", pseudo_label=replace(
        config.pseudo_label, kind="soft", specialists=4, specialist_epochs=30),
        loss=replace(config.loss, distillation="soft_ce"))


if __name__ == "__main__":
    run_recipe(make_config())
