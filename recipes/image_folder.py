"""Noisy Student on your own images.

    python recipes/image_folder.py --labeled DIR --unlabeled DIR --test DIR [--image-size 64]
    python recipes/image_folder.py --labeled DIR --unlabeled-list FILE --test DIR [--val DIR]

`--labeled` and `--test` hold one sub-folder per class (the same class names); `--unlabeled`
holds images in any layout, or `--unlabeled-list` names them, one path per line (relative to
the list file's folder). `--val` (optional, one sub-folder per class) is the validation set:
every phase is scored on it beside test, and choices should be made on it, not on test. For
sets larger than memory add `--set data.lazy_unlabeled=true`. Images are converted to RGB (or
grayscale with --set data.channels=1) and resized to --image-size.

Defaults meant to fit any folder without tuning: the models chosen for the image size, the
number of labeled images and the device; training lengths in optimizer steps, not epochs over
a set of unknown size; no horizontal flip unless `--mirror-symmetric`; a plan with a time
estimate before the work; a stop after round 0's teacher when it cannot teach (`--force` goes
on). `--preset NAME` sets a common case (docs/your_images.md).
"""

import argparse
from dataclasses import replace

from noisy_student import (Config, DataConfig, LossConfig, ModelConfig, NoiseConfig,
                           PseudoLabelConfig, TrainConfig, run_recipe)
from noisy_student.presets import PRESETS, preset_overrides


def make_config() -> Config:
    return Config(
        name="image_folder",
        rounds=2,
        data=DataConfig(source="image_folder", labeled_dir="labeled", unlabeled_dir="unlabeled",
                        test_dir="test", image_size=32, channels=3, num_workers=1),
        # ["auto"]: chosen from the image size, the labeled images and the device (presets.py)
        model=ModelConfig(ladder=["auto"]),
        # no flip unless the classes are mirror-symmetric (--mirror-symmetric); the crop padding
        # follows the image size (configure)
        noise=NoiseConfig(num_ops=2, magnitude=9, flip=False, crop_padding=2),
        pseudo_label=PseudoLabelConfig(kind="hard", threshold=0.3, balance=True),
        loss=LossConfig(distillation="hard", label_smoothing=0.1),
        # lengths in optimizer steps whatever the folder's size (as the Fashion-MNIST recipe's
        # 150 teacher epochs of 16 steps and 8 student epochs of 302), more on larger folders
        train=TrainConfig(lr=0.05, batch_size=64, unlabeled_ratio=3, teacher_epochs=30,
                          teacher_min_steps=2400, epochs=8, min_steps=2400),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labeled", required=True, help="folder with one sub-folder per class")
    unlabeled = parser.add_mutually_exclusive_group(required=True)
    unlabeled.add_argument("--unlabeled", help="folder of unlabeled images")
    unlabeled.add_argument("--unlabeled-list", help="text file of unlabeled image paths")
    parser.add_argument("--test", required=True, help="folder with one sub-folder per class")
    parser.add_argument("--val", help="validation folder, one sub-folder per class (optional)")
    parser.add_argument("--image-size", type=int, help="resize images to this square size")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="settings for a common case (docs/your_images.md); --set wins")
    parser.add_argument("--mirror-symmetric", action="store_true",
                        help="the classes do not change when an image is mirrored (photos of "
                             "objects, not characters): turns on horizontal flips")


def configure(config: Config, args: argparse.Namespace) -> Config:
    preset = preset_overrides(args.preset) if args.preset else []
    config = config.with_overrides(preset)
    data = dict(labeled_dir=args.labeled, unlabeled_dir=args.unlabeled,
                unlabeled_list=args.unlabeled_list, test_dir=args.test, val_dir=args.val)
    if args.image_size is not None:
        data["image_size"] = args.image_size
    noise = {"flip": True} if args.mirror_symmetric else {}
    if not any(o.startswith("noise.crop_padding=") for o in preset):
        noise["crop_padding"] = max(1, data.get("image_size", config.data.image_size) // 14)
    return config.replace(data=replace(config.data, **data),
                          noise=replace(config.noise, **noise))


if __name__ == "__main__":
    run_recipe(make_config(), add_arguments=add_arguments, configure=configure)
