"""Noisy Student on CIFAR-10: 4,000 labels (400 per class), WideResNet-28-2 family.

Needs the internet once: torchvision downloads CIFAR-10 into `data.root` (default ./data).
Meant for a GPU; on a CPU use --set data.unlabeled_limit=... for a quick look.

    python recipes/cifar10.py [--rounds N] [--out DIR] [--set key=value ...]
"""

from noisy_student import (Config, DataConfig, LossConfig, ModelConfig, NoiseConfig,
                           PseudoLabelConfig, TrainConfig, run_recipe)


def make_config() -> Config:
    return Config(
        name="cifar10",
        seed=0,
        rounds=3,
        data=DataConfig(source="cifar10", root="data", labeled_per_class=400, num_workers=4),
        model=ModelConfig(ladder=["wrn_28_2", "wrn_28_2", "wrn_28_4", "wrn_28_4"],
                          drop_rate=0.5, drop_path_rate=0.2),
        noise=NoiseConfig(num_ops=2, magnitude=9, flip=True, crop_padding=4),
        pseudo_label=PseudoLabelConfig(kind="soft", threshold=0.3, balance=True),
        loss=LossConfig(distillation="soft_ce", label_smoothing=0.1),
        train=TrainConfig(optimizer="sgd", lr=0.1, batch_size=64, unlabeled_ratio=4,
                          teacher_epochs=200, epochs=40, ema_decay=0.999),
    )


if __name__ == "__main__":
    run_recipe(make_config())
