"""Noisy Student on your own images.

    python recipes/image_folder.py --labeled DIR --unlabeled DIR --test DIR [--image-size 64]
    python recipes/image_folder.py --labeled DIR --unlabeled-list FILE --test DIR [--val DIR]

`--labeled` and `--test` hold one sub-folder per class (the same class names); `--unlabeled`
holds images in any layout, or `--unlabeled-list` names them, one path per line (relative to
the list file's folder). `--val` (optional, one sub-folder per class) is the validation set:
every phase is scored on it beside test, and choices should be made on it, not on test. For
sets larger than memory add `--set data.lazy_unlabeled=true`. Images are converted to RGB (or
grayscale with --set data.channels=1) and resized to --image-size.
"""

import argparse
from dataclasses import replace

from noisy_student import (Config, DataConfig, ModelConfig, NoiseConfig, TrainConfig,
                           run_recipe)


def make_config() -> Config:
    return Config(
        name="image_folder",
        rounds=3,
        data=DataConfig(source="image_folder", labeled_dir="labeled", unlabeled_dir="unlabeled",
                        test_dir="test", image_size=32, channels=3, labeled_per_class=1,
                        num_workers=2),
        model=ModelConfig(ladder=["resnet18", "resnet18", "resnet34"]),
        noise=NoiseConfig(num_ops=2, magnitude=9, flip=True, crop_padding=4),
        train=TrainConfig(teacher_epochs=100, epochs=20),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labeled", required=True, help="folder with one sub-folder per class")
    unlabeled = parser.add_mutually_exclusive_group(required=True)
    unlabeled.add_argument("--unlabeled", help="folder of unlabeled images")
    unlabeled.add_argument("--unlabeled-list", help="text file of unlabeled image paths")
    parser.add_argument("--test", required=True, help="folder with one sub-folder per class")
    parser.add_argument("--val", help="validation folder, one sub-folder per class (optional)")
    parser.add_argument("--image-size", type=int, help="resize images to this square size")


def configure(config: Config, args: argparse.Namespace) -> Config:
    data = dict(labeled_dir=args.labeled, unlabeled_dir=args.unlabeled,
                unlabeled_list=args.unlabeled_list, test_dir=args.test, val_dir=args.val)
    if args.image_size is not None:
        data["image_size"] = args.image_size
    return config.replace(data=replace(config.data, **data))


if __name__ == "__main__":
    run_recipe(make_config(), add_arguments=add_arguments, configure=configure)
