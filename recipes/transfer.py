"""Transfer learning + Noisy Student on Fashion-MNIST: every model starts from pretrained weights.

    python recipes/transfer.py --weights FILE [--head-only] [--set key=value ...]

FILE is a `.safetensors` or torch state dict whose backbone matches the ladder (by default
`cnn_medium(stem_stride=2)` throughout: e.g. an earlier Fashion-MNIST run's
`teacher/model.safetensors`); its head is not used. With a torchvision model in the ladder,
`--weights` may instead name torchvision weights (`IMAGENET1K_V1`), and with a timm model
(`--set 'model.ladder=["timm_model(arch=resnet18)"]'`, timm installed) timm weights
(`a1_in1k`, or `default`), downloaded when online.
Models train everything with the backbone at a tenth of the head's learning rate
(discriminative learning rates), or, with `--head-only`, the head alone on a frozen backbone.
"""

import argparse
from dataclasses import replace

from fashion_mnist import make_config as fashion_config

from noisy_student import Config, run_recipe


def make_config() -> Config:
    config = fashion_config()
    return config.replace(  # every model starts from the weights: no warm start from a teacher
        name="transfer", rounds=2,
        model=replace(config.model, pretrained_for="all", student_init="scratch"),
        train=replace(config.train, teacher_epochs=30, epochs=4),
    )  # finetune and backbone_lr_scale are set with the weights, in `configure`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="pretrained weights: a file, or a torchvision / timm weights name")
    parser.add_argument("--head-only", action="store_true",
                        help="freeze the backbone (weights and batch-norm statistics)")


def configure(config: Config, args: argparse.Namespace) -> Config:
    train = replace(config.train, finetune="head") if args.head_only else replace(
        config.train, finetune="all", backbone_lr_scale=0.1)
    return config.replace(model=replace(config.model, pretrained=args.weights), train=train)


if __name__ == "__main__":
    run_recipe(make_config(), add_arguments=add_arguments, configure=configure)
