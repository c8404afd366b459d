"""Image sources: each returns in-memory uint8 images with their labels and class names.

Offline sources: scikit-learn's bundled `digits`, Fashion-MNIST from Debian's
`dataset-fashion-mnist` package (or any directory of the four idx files), MNIST idx files, a
user's `image_folder`. CIFAR-10 uses torchvision's download (online users only).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError  # noqa: F401 (raised here, importable from here)
from ..config import DataConfig
from .image_folder import IMAGE_EXTENSIONS, FolderReader, LazyImages

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "NOISY_STUDENT_FASHION_MNIST"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class ImageSet:
    """Images `uint8 [N, H, W, C]` with labels `int64 [N]` (None when unknown)."""

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> ImageSet:
        labels = None if self.labels is None else self.labels[indices]
        return ImageSet(self.images[indices], labels, self.classes)


@dataclass
class Source:
    """A training pool (labeled and unlabeled images are drawn from it) and a test set.

    `test` is None when the source has no official test split (a share of the pool is then held
    out). image_folder sources come pre-split: `unlabeled` is given, `pool` is the labeled set
    and `validation` the user's validation folder (None without one).
    """

    pool: ImageSet
    test: ImageSet | None
    unlabeled: ImageSet | None = None
    validation: ImageSet | None = None
    report: dict | None = None  # image_folder: what the checking pass found


def load_source(cfg: DataConfig) -> Source:
    loaders = {"digits": _digits, "fashion_mnist": _fashion_mnist, "mnist": _mnist,
               "cifar10": _cifar10, "image_folder": _image_folder}
    source = loaders[cfg.source](cfg)
    for name, images in (("training", source.pool), ("test", source.test)):
        if images is not None and images.labels is not None and len(images.labels):
            bad = images.labels[(images.labels < 0) | (images.labels >= len(images.classes))]
            if len(bad):
                raise DataError(f"{cfg.source}: {len(bad)} {name} labels are outside the "
                                f"{len(images.classes)} classes {images.classes} (e.g. "
                                f"{sorted(set(bad.tolist()))[:5]}); the label file does not "
                                "match the data set")
    return source


def _digits(cfg: DataConfig) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()  # 1,797 8x8 images, values 0..16
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Source(ImageSet(images, d.target.astype(np.int64), [str(c) for c in range(10)]), None)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated idx file ({body.size} bytes for shape {shape})")
    return body.reshape(shape).copy()  # writable, independent of the file buffer


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_pair(directory: Path) -> Source | None:
    """Load the four idx files from `directory`, or None when any is missing."""
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(directory, s) for s in stems]
    if any(p is None for p in paths):
        return None
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    return Source(ImageSet(xtr[..., None], ytr.astype(np.int64), []),
                  ImageSet(xte[..., None], yte.astype(np.int64), []))


def _mnist_like(cfg: DataConfig, name: str, env: str, system_dir: str | None,
                classes: list[str], tv_class: str) -> Source:
    tried: list[str] = []
    candidates = [("data.root", cfg.root), (f"${env}", os.environ.get(env)),
                  ("system package", system_dir)]
    for label, directory in candidates:
        if not directory:
            continue
        for d in (Path(directory), Path(directory) / name, Path(directory) / tv_class / "raw"):
            source = _idx_pair(d)
            if source is not None:
                source.pool.classes = source.test.classes = classes  # type: ignore[union-attr]
                return source
        tried.append(f"{label}: {directory} (no idx files)")
    if cfg.download:
        import torchvision

        root = Path(cfg.root or "data")
        try:
            getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
            getattr(torchvision.datasets, tv_class)(str(root), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - any download failure ends in the error below
            tried.append(f"torchvision download into {root}: {type(e).__name__}: {e}")
        else:
            return _mnist_like(replace(cfg, root=str(root), download=False), name, env, None,
                               classes, tv_class)
    else:
        tried.append("torchvision download: off (data.download = false)")
    hint = ("; on Debian/Ubuntu: apt-get install -y dataset-fashion-mnist"
            if name == "fashion-mnist" else "")
    raise DataError(f"{name} not found. Tried:\n  - " + "\n  - ".join(tried) +
                    f"\nSet data.root or ${env} to a directory holding the four idx files{hint}.")


def _fashion_mnist(cfg: DataConfig) -> Source:
    return _mnist_like(cfg, "fashion-mnist", FASHION_MNIST_ENV, FASHION_MNIST_SYSTEM_DIR,
                       FASHION_MNIST_CLASSES, "FashionMNIST")


def _mnist(cfg: DataConfig) -> Source:
    return _mnist_like(cfg, "mnist", "NOISY_STUDENT_MNIST", None,
                       [str(c) for c in range(10)], "MNIST")


def _cifar10(cfg: DataConfig) -> Source:
    import torchvision

    root = cfg.root or "data"
    try:
        train = torchvision.datasets.CIFAR10(root, train=True, download=cfg.download)
        test = torchvision.datasets.CIFAR10(root, train=False, download=cfg.download)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"CIFAR-10 not available in {root!r} ({type(e).__name__}: {e}); it is "
                        "downloaded by torchvision when online (data.download = true)") from e
    return Source(ImageSet(train.data, np.asarray(train.targets, np.int64), train.classes),
                  ImageSet(test.data, np.asarray(test.targets, np.int64), test.classes))


def _image_folder(cfg: DataConfig) -> Source:
    """labeled/<class>/, test/<class>/, unlabeled/: read in one checking pass (image_folder.py)."""
    reader = FolderReader(cfg.image_size, cfg.channels, cfg.on_bad_file == "skip",
                          cfg.max_image_pixels)
    report, errors = reader.report, reader.report.errors
    dirs = _folder_dirs(cfg)
    scored = [name for name in ("validation", "test") if name in dirs]
    classes = _folder_classes(dirs, scored, report)
    sets = {name: _labeled_set(reader, dirs[name], name, classes, cfg)
            for name in ("labeled", *scored)}
    unlabeled = _unlabeled_set(reader, dirs["unlabeled"], classes, cfg)
    if not len(unlabeled):
        errors.append(f"{dirs['unlabeled']}: no usable unlabeled images (Noisy Student needs "
                      f"them; extensions {', '.join(IMAGE_EXTENSIONS)})")
    if not sets["test"].images.size and not errors:
        errors.append(f"{dirs['test']}: no test images")
    reader.finish()
    for warning in report.warnings:
        print(f"data warning: {warning}", flush=True)
    if errors:
        raise DataError(f"{len(errors)} problem{'s' * (len(errors) != 1)} in the image "
                        "folders:\n  - " + "\n  - ".join(errors))
    print(report.summary(), flush=True)
    return Source(sets["labeled"], sets["test"], unlabeled, sets.get("validation"),
                  report=report.to_dict())


def _folder_dirs(cfg: DataConfig) -> dict[str, Path]:
    """The set folders (the unlabeled list file in place of a folder), each checked to exist."""
    dirs = {"labeled": Path(cfg.labeled_dir or ""), "test": Path(cfg.test_dir or ""),
            "unlabeled": Path(cfg.unlabeled_dir or cfg.unlabeled_list or "")}
    if cfg.val_dir:
        dirs["validation"] = Path(cfg.val_dir)
    for name, d in dirs.items():
        if name == "unlabeled" and cfg.unlabeled_list:
            continue
        if not d.is_dir():
            key = "val_dir" if name == "validation" else f"{name}_dir"
            raise DataError(f"data.{key} = {str(d)!r}: not a directory")
    return dirs


def _folder_classes(dirs: dict[str, Path], scored: list[str], report: Any) -> list[str]:
    """The classes: the labeled folder's sub-folders; a scored set's other classes are errors."""
    labeled = dirs["labeled"]
    classes = sorted(p.name for p in labeled.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{labeled}: no class sub-folders (expected labeled/<class>/...)")
    stray = [p for p in labeled.iterdir() if p.is_file() and not p.name.startswith(".")]
    if stray:
        report.warnings.append(f"{len(stray)} file{'s' * (len(stray) != 1)} directly in "
                               f"{labeled} (not in a class folder) ignored, e.g. {stray[0]}")
    for name in scored:
        unknown = sorted({p.name for p in dirs[name].iterdir() if p.is_dir()} - set(classes))
        if unknown:
            report.errors.append(f"{dirs[name]}: classes {unknown} are not in the labeled set "
                                 f"{classes} (add labeled images for them, or remove them from "
                                 f"the {name} set)")
    return classes


def _labeled_set(reader: FolderReader, root: Path, name: str, classes: list[str],
                 cfg: DataConfig) -> ImageSet:
    """A set with one sub-folder per class: the images that read, with their labels."""
    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        arrays = reader.read(reader.files(folder, name), name) if folder.is_dir() else []
        good = [a for a in arrays if a is not None]
        images += good
        labels += [label] * len(good)
        if not good and name == "labeled":
            reader.report.errors.append(f"{folder}: class {cls!r} has no usable labeled images "
                                        "(add some, or remove the folder)")
        elif not good:
            reader.report.warnings.append(f"{folder}: class {cls!r} has no {name} images; its "
                                          f"{name} accuracy is not measured")
    reader.report.counts[name] = len(images)
    return ImageSet(_stack(images, cfg), np.asarray(labels, np.int64), classes)


def _unlabeled_set(reader: FolderReader, where: Path, classes: list[str],
                   cfg: DataConfig) -> ImageSet:
    """The unlabeled images that read, from a folder or a list file; with lazy_unlabeled,
    checked in batches now and decoded again when used (memory stays flat)."""
    if cfg.unlabeled_list:
        try:
            lines = where.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"data.unlabeled_list = {cfg.unlabeled_list!r}: cannot read it "
                            f"({e})") from e
        paths = reader.listed(lines, where)
    else:
        paths = reader.files(where, "unlabeled")
    if cfg.lazy_unlabeled:
        good: list[str] = []
        for start in range(0, len(paths), 1024):
            chunk = paths[start:start + 1024]
            good += [str(p) for p, a in zip(chunk, reader.read(chunk, "unlabeled"), strict=True)
                     if a is not None]
        reader.report.counts["unlabeled"] = len(good)
        return ImageSet(LazyImages(good, cfg.image_size, cfg.channels, cfg.max_image_pixels),
                        None, classes)
    arrays = [a for a in reader.read(paths, "unlabeled") if a is not None]
    reader.report.counts["unlabeled"] = len(arrays)
    return ImageSet(_stack(arrays, cfg), None, classes)


def _stack(images: list[np.ndarray], cfg: DataConfig) -> np.ndarray:
    if images:
        return np.stack(images)
    return np.zeros((0, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)
