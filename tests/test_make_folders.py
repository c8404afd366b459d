"""tools/make_folders.py: a built-in split written as image folders reads back, through the
image_folder source, as the same images with the same labels, and the folder run's command
names them."""

import json
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from noisy_student.config import DataConfig
from noisy_student.data import load_source, make_splits

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_folders.py"


def _rows(images, labels):
    """The set's images with their labels, in a canonical order (folders read in name order)."""
    keys = [(-1 if labels is None else int(y), x.tobytes()) for x, y in
            zip(images, labels if labels is not None else [None] * len(images))]
    return sorted(keys)


def test_digits_folders_read_back_as_the_recipes_split(tmp_path):
    out = tmp_path / "folders"
    done = subprocess.run([sys.executable, str(TOOL), "digits", "--seed", "3", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = runpy.run_path(str(ROOT / "recipes" / "digits.py"))["make_config"]()
    splits = make_splits(load_source(config.data), config.data, 3)
    record = json.loads((out / "folders.json").read_text())
    assert record["counts"] == {"labeled": len(splits.labeled), "val": len(splits.validation),
                                "unlabeled": len(splits.unlabeled), "test": len(splits.test)}
    assert record["classes"] == splits.labeled.classes
    folder = load_source(DataConfig(source="image_folder", labeled_dir=str(out / "labeled"),
                                    unlabeled_dir=str(out / "unlabeled"),
                                    test_dir=str(out / "test"), val_dir=str(out / "val"),
                                    image_size=8, channels=1))
    for ours, theirs in ((folder.pool, splits.labeled), (folder.validation, splits.validation),
                         (folder.test, splits.test)):
        assert _rows(ours.images, ours.labels) == _rows(theirs.images, theirs.labels)
    # unlabeled: the same images (copies of labeled, val or test ones were left out already)
    assert _rows(folder.unlabeled.images, None) == _rows(splits.unlabeled.images, None)
    assert sorted(p.name for p in (out / "test").iterdir())[:2] == ["00-0", "01-1"]
    command = shlex.split(record["run"])
    assert command[:2] == ["python", "recipes/image_folder.py"]
    assert f"--labeled={out / 'labeled'}" in command and "data.channels=1" in command


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(TOOL), "digits", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_class_folder_names_keep_the_order_and_are_safe():
    class_folder = runpy.run_path(str(TOOL))["class_folder"]
    assert class_folder(0, "T-shirt/top") == "00-T-shirt-top"
    assert class_folder(9, "Ankle boot") == "09-Ankle-boot"
    assert class_folder(10, "..") == "10-class"
    names = [class_folder(i, n) for i, n in enumerate(["b", "a", "c"] * 4)]
    assert sorted(names) == names


def test_mnist_5k_is_split_per_class_into_disjoint_folders(tmp_path):
    # 10 classes x 145 rows, each image different: per class 20 + 20 + 100 and 5 unlabeled
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1450, 784))
    labels = np.repeat(np.arange(10), 145)
    csv = tmp_path / "mnist_5k.csv.gz"
    np.savetxt(csv, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    out = tmp_path / "folders"
    done = subprocess.run([sys.executable, str(TOOL), "mnist_5k", "--csv", str(csv), "--seed",
                           "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "folders.json").read_text())
    assert record["counts"] == {"labeled": 200, "val": 200, "test": 1000, "unlabeled": 50}
    seen = {}
    for where in ("labeled", "val", "test"):
        for path in (out / where).rglob("*.png"):
            label = int(path.parent.name.split("-")[1])
            row = np.asarray(Image.open(path)).reshape(-1)
            match = np.flatnonzero((pixels == row).all(1))
            assert len(match) == 1 and labels[match[0]] == label, path
            seen[int(match[0])] = where
    for path in (out / "unlabeled").rglob("*.png"):
        match = np.flatnonzero((pixels == np.asarray(Image.open(path)).reshape(-1)).all(1))
        assert len(match) == 1 and int(match[0]) not in seen
        seen[int(match[0])] = "unlabeled"
    assert len(seen) == 1450  # every row in exactly one folder


def test_mnist_5k_without_its_file_names_the_cause(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "mnist_5k", "--csv",
                           str(tmp_path / "none.csv.gz"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "none.csv.gz" in done.stderr
    assert "Traceback" not in done.stderr
