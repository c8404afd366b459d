"""tools/make_folders.py: a built-in split written as image folders reads back, through the
image_folder source, as the same images with the same labels, and the folder run's command
names them."""

import json
import runpy
import shlex
import subprocess
import sys
from pathlib import Path


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
