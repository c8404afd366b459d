"""Data sources and the image_folder recipe."""

import gzip
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisy_student.config import Config, DataConfig
from noisy_student.data import DataError, NoisedDataset, load_source, make_splits, normalize
from noisy_student.data.sources import FASHION_MNIST_SYSTEM_DIR, read_idx

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_from_a_given_root_and_clear_error(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 50)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    src = load_source(DataConfig(source="fashion_mnist", root=str(tmp_path)))
    assert src.pool.images.shape == (300, 28, 28, 1) and len(src.test) == 50
    assert src.pool.classes[0] == "T-shirt/top"
    splits = make_splits(src, DataConfig(source="fashion_mnist", labeled_per_class=3), 0)
    assert splits.record["counts"] == {"labeled": 30, "unlabeled": 240, "test": 50,
                                       "validation": 30}
    # nothing anywhere, downloads off: the error names every place tried
    monkeypatch.setenv("NOISY_STUDENT_FASHION_MNIST", str(tmp_path / "env"))
    monkeypatch.setattr("noisy_student.data.sources.FASHION_MNIST_SYSTEM_DIR",
                        str(tmp_path / "sys"))
    with pytest.raises(DataError) as e:
        load_source(DataConfig(source="fashion_mnist", root=str(tmp_path / "none"),
                               download=False))
    text = str(e.value)
    assert "data.root" in text and "$NOISY_STUDENT_FASHION_MNIST" in text
    assert "system package" in text and "torchvision download" in text


@pytest.mark.skipif(not Path(FASHION_MNIST_SYSTEM_DIR).is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package_split():
    cfg = DataConfig(source="fashion_mnist", labeled_per_class=100, download=False)
    splits = make_splits(load_source(cfg), cfg, 0)
    assert splits.record["counts"] == {"labeled": 1000, "unlabeled": 58000, "test": 10000,
                                       "validation": 1000}
    assert np.bincount(splits.labeled.labels).tolist() == [100] * 10
    assert np.bincount(splits.validation.labels).tolist() == [100] * 10


def test_validation_is_carved_from_the_pool_class_balanced_and_disjoint():
    cfg = DataConfig(source="digits", labeled_per_class=10, test_fraction=0.3)
    splits = make_splits(load_source(cfg), cfg, 3)
    r = splits.record
    sets = {k: set(r[k]) for k in ("labeled", "validation", "unlabeled", "test")}
    assert sum(len(v) for v in sets.values()) == len(set().union(*sets.values())) == 1797
    assert np.bincount(splits.validation.labels).tolist() == [10] * 10  # as many as labeled
    assert r["counts"]["validation"] == 100 and list(splits.scored()) == ["val", "test"]
    # the labeled set is the same with or without a validation set; the rest is unlabeled
    off = replace(cfg, val_per_class=0)
    without = make_splits(load_source(off), off, 3)
    assert without.validation is None and list(without.scored()) == ["test"]
    assert without.record["labeled"] == r["labeled"] and without.record["test"] == r["test"]
    assert sorted(without.record["unlabeled"]) == sorted(r["unlabeled"] + r["validation"])
    wide = replace(cfg, val_per_class=25)
    assert len(make_splits(load_source(wide), wide, 3).validation) == 250
    with pytest.raises(DataError, match="fewer than data.val_per_class = 200"):
        make_splits(load_source(cfg), replace(cfg, val_per_class=200), 3)


def test_unlabeled_copies_of_test_or_labeled_images_are_left_out(capsys):
    from noisy_student.data.sources import ImageSet, Source

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
    images[20:40] = images[20]  # class 1: twenty copies of one image
    labels = np.repeat(np.arange(3), 20)
    test = ImageSet(images[:20].copy(), labels[:20].copy(), ["a", "b", "c"])  # class 0's images
    source = Source(ImageSet(images, labels, ["a", "b", "c"]), test)
    cfg = DataConfig(source="digits", labeled_per_class=2)
    splits = make_splits(source, cfg, 0)
    left_out = splits.record["leaks_excluded"]
    # class 0: its 16 unlabeled images are test images; class 1: its 16 copy a labeled image
    assert sorted(left_out["test"]) == sorted(set(range(20)) - set(splits.record["labeled"])
                                              - set(splits.record["validation"]))
    assert len(left_out["test"]) == 16 and len(left_out["labeled"]) == 16
    assert all(20 <= i < 40 for i in left_out["labeled"])
    assert sorted(splits.record["unlabeled"]) == sorted(
        set(range(40, 60)) - set(splits.record["labeled"]) - set(splits.record["validation"]))
    assert "16 identical to test images" in capsys.readouterr().out


def test_an_unlabeled_copy_of_a_validation_image_is_left_out(capsys):
    """The split depends on labels and seed, not pixels: copy a validation image over one
    unlabeled image and the same split leaves that one out, named as a validation copy."""
    from noisy_student.data.sources import ImageSet, Source

    images = np.random.default_rng(1).integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 20)
    test = ImageSet(images[:5] // 2, labels[:5].copy(), ["a", "b", "c"])  # copies nothing
    cfg = DataConfig(source="digits", labeled_per_class=2)
    before = make_splits(Source(ImageSet(images, labels, ["a", "b", "c"]), test), cfg, 0)
    v, u = before.record["validation"][0], before.record["unlabeled"][3]
    assert before.record["leaks_excluded"] == {}
    images[u] = images[v]
    after = make_splits(Source(ImageSet(images, labels, ["a", "b", "c"]), test), cfg, 0)
    assert after.record["leaks_excluded"] == {"validation": [u]}
    assert after.record["unlabeled"] == [i for i in before.record["unlabeled"] if i != u]
    assert after.record["validation"] == before.record["validation"]
    assert "1 identical to validation images" in capsys.readouterr().out


def test_noised_dataset_is_a_function_of_seed_pass_and_index():
    from noisy_student.noise import build_noise

    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    ds = NoisedDataset(images, np.arange(4), build_noise(True, 2, 9, True, 1, 1), [0.5], [0.5],
                       seed=1)
    a, b = ds[(0, 2)][0], ds[(0, 2)][0]
    assert a.shape == (1, 8, 8) and (a == b).all()
    assert not all((ds[(p, 2)][0] == a).all() for p in range(1, 6))
    plain = NoisedDataset(images, np.arange(4), None, [0.2], [0.5], seed=1)
    x = plain[3][0]  # uint8 [C, H, W]: the training step normalizes whole batches
    assert x.dtype == torch.uint8 and (x.numpy()[0] == images[3, :, :, 0]).all()
    batch = normalize(torch.stack([x, plain[1][0]]), plain.mean, plain.std)
    assert batch.dtype == torch.float32 and batch.shape == (2, 1, 8, 8)
    assert np.allclose(batch[0, 0].numpy(), (images[3, :, :, 0] / 255 - 0.2) / 0.5, atol=1e-6)


def test_two_views_pair_a_weak_and_a_strong_view_of_one_image():
    """A view pair: the weak view as its own NoisedDataset makes it (here no noise: the image
    itself), the strong one from the next seed; the pair depends only on (seed, pass, index)."""
    from noisy_student.data import TwoViews
    from noisy_student.noise import build_noise

    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    strong = build_noise(True, 2, 9, True, 1, 1)
    views = TwoViews(images, None, strong, [0.5], [0.5], seed=3)
    pair, unknown = views[(1, 2)]
    assert pair.shape == (2, 1, 8, 8) and pair.dtype == torch.uint8 and int(unknown) == -1
    assert (pair[0, 0].numpy() == images[2, :, :, 0]).all()
    alone = NoisedDataset(images, np.arange(4), strong, [0.5], [0.5], seed=4)
    assert (pair[1] == alone[(1, 2)][0]).all() and (views[(1, 2)][0] == pair).all()
    assert len(views) == 4


def _image_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("labeled", 4), ("test", 3), ("val", 2)):
        for c, name in enumerate(["cat", "dog"]):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 100, (20, 24, 3)) + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    (root / "unlabeled" / "batch1").mkdir(parents=True)
    for i in range(12):
        pixels = rng.integers(0, 220, (18, 18, 3)).astype(np.uint8)
        Image.fromarray(pixels).convert("L" if i % 2 else "RGB").save(
            root / "unlabeled" / "batch1" / f"{i}.jpg")


def test_image_folder_recipe_runs(tmp_path):
    _image_tree(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "recipes" / "image_folder.py"),
           "--labeled", str(tmp_path / "labeled"), "--unlabeled", str(tmp_path / "unlabeled"),
           "--test", str(tmp_path / "test"), "--val", str(tmp_path / "val"),
           "--image-size", "16", "--rounds", "1",
           "--out", str(out), "--set", 'model.ladder=["cnn_tiny"]',
           "--set", "train.teacher_epochs=1", "--set", "train.epochs=1",
           "--set", "train.teacher_min_steps=0", "--set", "train.min_steps=0",
           "--set", "train.sanity_gate=false",
           "--set", "train.batch_size=4", "--set", "pseudo_label.threshold=0",
           "--set", "data.num_workers=0", "--set", "train.device=\"cpu\""]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "round_0" / "DONE").is_file()
    import json
    splits = json.loads((out / "splits.json").read_text())
    assert splits["counts"] == {"labeled": 8, "unlabeled": 12, "test": 6, "validation": 4}
    assert splits["classes"] == ["cat", "dog"]
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["val"]["n"] == 4 and metrics["test"]["n"] == 6


def test_image_folder_errors_name_the_cause(tmp_path):
    _image_tree(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    (tmp_path / "test" / "bird" / "x.png").write_bytes(b"")
    cfg = DataConfig(source="image_folder", labeled_dir=str(tmp_path / "labeled"),
                     unlabeled_dir=str(tmp_path / "unlabeled"), test_dir=str(tmp_path / "test"))
    with pytest.raises(DataError, match=r"classes \['bird'\] are not in the labeled set"):
        load_source(cfg)


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (its IHDR patched, CRC fixed)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_an_image_bomb_is_a_bad_file_named_before_it_is_decoded(tmp_path):
    _image_tree(tmp_path)
    bomb = tmp_path / "unlabeled" / "bomb.png"
    bomb.write_bytes(_png_declaring(20000, 20000))
    cfg = DataConfig(source="image_folder", labeled_dir=str(tmp_path / "labeled"),
                     unlabeled_dir=str(tmp_path / "unlabeled"), test_dir=str(tmp_path / "test"))
    with pytest.raises(DataError, match=r"(?s)1 oversized image:.*bomb.png: 20000 x 20000 "
                                        r"pixels, over data.max_image_pixels = 50,000,000"):
        load_source(cfg)
    skipped = load_source(replace(cfg, on_bad_file="skip"))
    assert len(skipped.unlabeled) == 12  # the bomb left out, the rest read
    assert list(skipped.report["bad"]) == ["oversized images"]
    # the limit is a setting: 24 x 20 = 480 pixels is over 400, so every labeled image is refused
    with pytest.raises(DataError, match=r"labeled/cat/0.png: 24 x 20 pixels, over data.max_"
                                        r"image_pixels = 400"):
        load_source(replace(cfg, max_image_pixels=400))


def test_unlabeled_list_file_reads_the_listed_images(tmp_path):
    """A list file names the unlabeled images (relative to its folder, or absolute); the
    result equals reading the folder; missing paths are named with their line."""
    from noisy_student.config import ConfigError

    _image_tree(tmp_path)
    folder = DataConfig(source="image_folder", labeled_dir=str(tmp_path / "labeled"),
                        unlabeled_dir=str(tmp_path / "unlabeled"), test_dir=str(tmp_path / "test"),
                        image_size=16)
    files = sorted((tmp_path / "unlabeled").rglob("*.jpg"))
    listing = tmp_path / "lists" / "unlabeled.txt"
    listing.parent.mkdir()
    listing.write_text("# every unlabeled image\n\n" + "\n".join(
        [str(f) for f in files[:6]] + [f"../unlabeled/batch1/{f.name}" for f in files[6:]]))
    listed = replace(folder, unlabeled_dir=None, unlabeled_list=str(listing))
    a, b = load_source(folder), load_source(listed)
    assert np.array_equal(a.unlabeled.images, b.unlabeled.images)
    lazy = load_source(replace(listed, lazy_unlabeled=True))
    assert np.array_equal(lazy.unlabeled.images[0:12], a.unlabeled.images)
    listing.write_text(listing.read_text() + "\nnot/there.png\n")
    with pytest.raises(DataError,
                       match=r"(?s)1 missing file:.*lists/not/there.png \(.*unlabeled.txt line 15\)"):
        load_source(listed)
    with pytest.raises(DataError, match="data.unlabeled_list = .*nope.txt.*cannot read"):
        load_source(replace(listed, unlabeled_list=str(tmp_path / "nope.txt")))
    with pytest.raises(ConfigError, match="one of data.unlabeled_dir .* not both"):
        Config.from_dict({"data": {**folder.__dict__, "unlabeled_list": str(listing)}})


def test_a_batch_of_clean_items_is_one_gather_equal_to_collating_them_one_by_one():
    """`__getitems__` (the DataLoader's batch request) of un-noised in-memory items gives the
    batch item-by-item collation gives, hard or soft targets, images repeated by the index; a
    noised dataset still goes item by item (each item's noise from its own key)."""
    from torch.utils.data import DataLoader, default_collate

    from noisy_student.data.datasets import collate

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 5, 6, 3), dtype=np.uint8)
    keys = [(1, 3), (0, 7), (2, 7), (1, 49), (0, 0)]
    for targets in (np.arange(50) % 4, rng.random((50, 4)).astype(np.float32)):
        data = NoisedDataset(images, targets, None, [0.5] * 3, [0.25] * 3, 0,
                             index=rng.integers(0, 50, 50))
        x, y = data.__getitems__(keys)
        x_items, y_items = default_collate([data[k] for k in keys])
        assert x.shape == (5, 3, 5, 6) and x.is_contiguous() and torch.equal(x, x_items)
        assert y.dtype == y_items.dtype and torch.equal(y, y_items)
        loader = DataLoader(data, batch_size=5, sampler=keys, collate_fn=collate)
        assert all(torch.equal(a, b) for a, b in zip(next(iter(loader)), (x, y)))
    noised = NoisedDataset(images, np.arange(50) % 4, lambda im, g: 255 - im, [0.5] * 3,
                           [0.25] * 3, 0)
    items = noised.__getitems__(keys)
    assert isinstance(items, list) and len(items) == 5
    assert torch.equal(items[0][0], torch.from_numpy(255 - images[3]).permute(2, 0, 1))
