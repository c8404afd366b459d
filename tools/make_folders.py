"""A built-in data set's split, written out as image folders for `recipes/image_folder.py`.

    python tools/make_folders.py fashion_mnist --seed 100 --out runs/folders/fashion_mnist
    python tools/make_folders.py digits --seed 100 --out runs/folders/digits

The split is the one the data set's recipe makes with that seed (`recipes/<name>.py`, its
`data` settings, the same labeled, validation, unlabeled and test images), so a run of the
image_folder recipe on the folders can be compared image for image with the recipe's own run.
Writes, under --out, `labeled/`, `val/` and `test/` (a sub-folder per class, named
`NN-<class name>` so that their sorted order is the data set's class order), `unlabeled/` (PNG
files, no labels) and `folders.json` (the counts, the seed and the command that runs
image_folder on them). A folder that is not empty is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from noisy_student.data import load_source, make_splits  # noqa: E402
from noisy_student.data.sources import DataError, ImageSet  # noqa: E402


def class_folder(index: int, name: str) -> str:
    """`NN-name`, the name made safe for a file system (`T-shirt/top` -> `00-T-shirt-top`)."""
    return f"{index:02d}-" + (re.sub(r"[^\w.-]+", "-", name).strip("-.") or "class")


def write_set(images: ImageSet, folder: Path, by_class: bool) -> int:
    """One PNG per image, in a sub-folder per class when `by_class`; returns the count."""
    for i, image in enumerate(images.images):
        where = folder
        if by_class:
            label = int(images.labels[i])
            where = folder / class_folder(label, images.classes[label])
        where.mkdir(parents=True, exist_ok=True)
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(np.ascontiguousarray(pixels)).save(where / f"{i:06d}.png")
    return len(images)


def make_folders(name: str, seed: int, out: Path) -> dict:
    config = runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["make_config"]()
    splits = make_splits(load_source(config.data), config.data, seed)
    sets = {"labeled": (splits.labeled, True), "val": (splits.validation, True),
            "unlabeled": (splits.unlabeled, False), "test": (splits.test, True)}
    counts = {where: write_set(images, out / where, by_class)
              for where, (images, by_class) in sets.items() if images is not None}
    size, _, channels = splits.labeled.images.shape[1:]
    command = ["python", "recipes/image_folder.py", *(f"--{k}={out / k}" for k in counts),
               f"--image-size={size}", "--set", f"data.channels={channels}"]
    record = {"source": name, "seed": seed, "counts": counts, "image_size": int(size),
              "channels": int(channels), "classes": splits.labeled.classes,
              "run": shlex.join(command)}
    (out / "folders.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=["digits", "fashion_mnist"], help="the data set (and recipe)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (the recipe's --seed)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"make_folders: {out} is not an empty folder; choose another --out",
              file=sys.stderr)
        return 2
    try:
        record = make_folders(args.source, args.seed, out)
    except DataError as e:
        print(f"make_folders: {e}", file=sys.stderr)
        return 2
    print(f"{args.source} seed {args.seed}: "
          + ", ".join(f"{n} {k}" for k, n in record["counts"].items()) + f" images in {out}\n"
          f"run: {record['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
