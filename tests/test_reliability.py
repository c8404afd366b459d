"""Faults of data, training and storage: each is named, and nothing that existed is changed."""

import errno
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisy_student.checkpoint import RunDirError, atomic_write
from noisy_student.config import DataConfig
from noisy_student.data import DataError, load_source
from noisy_student.loop import run


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: compared before and after a failure."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _tree(root: Path, size: int = 16) -> DataConfig:
    """Two classes of clean images in labeled/, test/ and unlabeled/."""
    rng = np.random.default_rng(0)
    for split, n in (("labeled", 4), ("test", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.png").write_bytes(
                    _png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    (root / "unlabeled").mkdir()
    for i in range(6):
        (root / "unlabeled" / f"u{i}.png").write_bytes(
            _png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return DataConfig(source="image_folder", labeled_dir=str(root / "labeled"),
                      unlabeled_dir=str(root / "unlabeled"), test_dir=str(root / "test"),
                      image_size=size, channels=3)


def _seed_bad_files(root: Path) -> None:
    good = (root / "labeled" / "cat" / "0.png").read_bytes()
    (root / "labeled" / "cat" / "empty.png").write_bytes(b"")
    (root / "labeled" / "dog" / "text.png").write_text("not an image")
    (root / "unlabeled" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "unlabeled" / "notes.txt").write_text("a note")


def refused(cfg: DataConfig, root: Path) -> str:
    """The DataError message of loading `cfg`; every file under `root` is left as it was."""
    before = snapshot(root)
    with pytest.raises(DataError) as e:
        load_source(cfg)
    assert snapshot(root) == before
    return str(e.value)


def test_bad_files_are_each_named_and_nothing_is_changed(tmp_path):
    cfg = _tree(tmp_path)
    _seed_bad_files(tmp_path)
    message = refused(cfg, tmp_path)
    assert "empty.png: zero bytes" in message
    assert "text.png: not an image" in message
    assert "truncated.png: truncated or corrupt" in message
    assert 'data.on_bad_file = "skip"' in message


def test_skipping_bad_files_reports_counts(tmp_path, capsys):
    cfg = _tree(tmp_path)
    _seed_bad_files(tmp_path)
    source = load_source(DataConfig(**{**cfg.__dict__, "on_bad_file": "skip"}))
    assert (len(source.pool), len(source.test), len(source.unlabeled)) == (8, 6, 6)
    report = source.report
    assert {k: len(v) for k, v in report["bad"].items()} == {
        "empty files": 1, "non-image files": 1, "corrupt images": 1}
    assert any("notes.txt" in line for line in report["ignored"])
    out = capsys.readouterr().out
    assert "(skipped)" in out and "data check: labeled 8, test 6, unlabeled 6 images" in out


def test_mixed_modes_are_converted_and_counted(tmp_path):
    cfg = _tree(tmp_path)
    folder = tmp_path / "unlabeled"
    (folder / "gray.png").write_bytes(_png(np.full((16, 16), 200, np.uint8)))
    (folder / "rgba.png").write_bytes(_png(np.full((16, 16, 4), 100, np.uint8)))
    sixteen = np.full((16, 16), 40000, np.uint16)
    (folder / "deep.png").write_bytes(_png(sixteen))
    Image.new("P", (16, 16), 3).save(folder / "palette.png")
    (folder / "tiny.png").write_bytes(_png(np.zeros((3, 3, 3), np.uint8)))
    source = load_source(cfg)
    converted = source.report["converted"]
    assert converted["L->RGB"] == 1 and converted["RGBA->RGB"] == 1 and converted["P->RGB"] == 1
    assert sum(v for k, v in converted.items() if k.startswith("I")) == 1  # 16-bit
    assert any("tiny.png" in p for p in source.report["upscaled"])
    assert source.unlabeled.images.dtype == np.uint8 and source.unlabeled.images.shape[1:] == \
        (16, 16, 3)
    deep = [i for i, p in enumerate(sorted(folder.iterdir())) if p.name == "deep.png"][0]
    assert source.unlabeled.images[deep].max() == 40000 >> 8  # 16 -> 8 bits by the high byte


def test_class_and_set_problems_are_listed_together(tmp_path):
    cfg = _tree(tmp_path)
    (tmp_path / "labeled" / "bird").mkdir()  # an empty labeled class
    (tmp_path / "test" / "fish").mkdir()  # a test class the labeled set lacks
    (tmp_path / "test" / "fish" / "0.png").write_bytes(
        (tmp_path / "test" / "cat" / "0.png").read_bytes())
    for p in (tmp_path / "unlabeled").iterdir():
        p.unlink()  # no unlabeled images
    message = refused(cfg, tmp_path)
    assert "3 problems" in message
    assert "classes ['fish'] are not in the labeled set" in message
    assert "class 'bird' has no usable labeled images" in message
    assert "no usable unlabeled images" in message


def test_files_shared_between_sets_are_reported_and_unlabeled_copies_left_out(tmp_path,
                                                                              capsys):
    cfg = _tree(tmp_path)
    unlabeled_before = len(load_source(cfg).unlabeled)
    leaked = (tmp_path / "test" / "dog" / "1.png").read_bytes()
    (tmp_path / "unlabeled" / "copy.png").write_bytes(leaked)
    (tmp_path / "unlabeled" / "test-copy.png").write_bytes(
        (tmp_path / "test" / "cat" / "0.png").read_bytes())
    (tmp_path / "labeled" / "dog" / "copy.png").write_bytes(leaked)
    capsys.readouterr()
    source = load_source(cfg)
    warnings = " ".join(source.report["warnings"])
    assert "files of the test set are byte-identical to files of the labeled set" in warnings
    # refused, not warned about: neither copy is in the unlabeled set, each is named
    assert len(source.unlabeled) == unlabeled_before
    assert source.report["counts"]["unlabeled"] == unlabeled_before
    assert sorted(source.report["excluded_copies"]) == [
        f"{tmp_path / 'unlabeled' / 'copy.png'} = {tmp_path / 'labeled' / 'dog' / 'copy.png'}",
        f"{tmp_path / 'unlabeled' / 'test-copy.png'} = {tmp_path / 'test' / 'cat' / '0.png'}"]
    out = capsys.readouterr().out
    assert "2 unlabeled files left out as copies of labeled, validation or test files" in out


def test_a_validation_folder_is_read_and_scored_apart_from_test(tmp_path):
    cfg = _tree(tmp_path)
    rng = np.random.default_rng(1)
    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "val" / cls / f"{i}.png").write_bytes(
                _png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    (tmp_path / "unlabeled" / "val-copy.png").write_bytes(
        (tmp_path / "val" / "dog" / "0.png").read_bytes())
    source = load_source(replace(cfg, val_dir=str(tmp_path / "val")))
    assert source.validation.labels.tolist() == [0, 0, 1]  # classes in the labeled order
    assert source.report["counts"] == {"labeled": 8, "validation": 3, "test": 6, "unlabeled": 6}
    assert [c.split(" = ")[1] for c in source.report["excluded_copies"]] == [
        str(tmp_path / "val" / "dog" / "0.png")]
    with pytest.raises(DataError, match="data.val_dir = .*not a directory"):
        load_source(replace(cfg, val_dir=str(tmp_path / "missing")))


def test_labels_outside_the_class_list_are_refused(tmp_path):
    import gzip
    import struct

    def idx(path, array):
        header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(
            struct.pack(">I", d) for d in array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.arange(20) % 10
    labels[3] = 12  # outside the ten classes
    for prefix, n in (("train", 20), ("t10k", 20)):
        idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[:n])
        idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[:n])
    with pytest.raises(DataError, match=r"labels are outside the 10 classes .*\[12\]"):
        load_source(DataConfig(source="fashion_mnist", root=str(tmp_path), download=False))


def test_a_model_that_cannot_take_the_images_is_refused_before_training(tiny_config):
    from noisy_student.config import ConfigError

    config = tiny_config.with_overrides(['model.ladder=["tv_convnext_tiny"]',
                                         "model.drop_path_rate=0.1"])
    with pytest.raises(ConfigError, match="tv_convnext_tiny' cannot take 8x8 images"):
        run(config)
    assert not config.out_dir.exists()


# ---- storage ----------------------------------------------------------------------------------

def test_a_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old and good")

    def fail(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(RunDirError, match=r"weights.bin: cannot write .*No space left"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old and good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary file left


def test_a_checkpoint_write_failing_mid_run_stops_with_the_file_named(tiny_config, monkeypatch):
    import os

    config = tiny_config.with_overrides(["rounds=1"])
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".ckpt." in name and "round_0" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(name)
        return real_fsync(fd)

    monkeypatch.setattr("os.fsync", fsync)
    with pytest.raises(RunDirError, match=r"round_0/checkpoints/step-\d+\.ckpt: cannot write"):
        run(config)
    monkeypatch.setattr("os.fsync", real_fsync)
    teacher = snapshot(config.out_dir / "teacher")
    assert "DONE" in teacher and not (config.out_dir / "round_0" / "DONE").exists()
    assert not list((config.out_dir / "round_0" / "checkpoints").glob("*.ckpt"))
    run(config, resume=True)  # the finished teacher is kept and used
    assert snapshot(config.out_dir / "teacher") == teacher


def test_a_read_only_output_directory_is_refused_before_any_work(tiny_config, tmp_path):
    probe = Path("/sys/noisy-student-probe")
    try:
        probe.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys: cannot test this here
        probe.rmdir()
        pytest.skip("/sys is writable on this machine")
    config = tiny_config.with_overrides(['out="/sys/noisy-student/run"'])
    with pytest.raises(RunDirError, match="/sys.* not writable"):
        run(config)


def test_the_wandb_key_is_never_written(tiny_config, monkeypatch):
    key = "k" * 40
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = tiny_config.with_overrides(["rounds=1"])
    run(config)
    for path in config.out_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in json.dumps(config.to_dict())


def test_out_of_memory_in_inference_names_the_batch_setting(tiny_config, monkeypatch):
    import torch

    from noisy_student.train import TrainingError

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("noisy_student.loop.predict_logits", oom)
    with pytest.raises(TrainingError, match="inference with train.eval_batch_size = 1024"):
        run(tiny_config)


def test_nan_mid_round_names_the_step_and_the_last_good_checkpoint(tiny_config, monkeypatch):
    import torch

    import noisy_student.loop as loop_module
    from noisy_student.checkpoint import load_checkpoint
    from noisy_student.train import TrainingError

    config = tiny_config.with_overrides(["rounds=1", "checkpoint.every_steps=2",
                                         "train.epochs=2"])
    real_build = loop_module.build_model

    def build(config, rung, splits):
        model = real_build(config, rung, splits)
        if rung == 1:  # round 0's student: NaN from its 4th forward pass on
            calls, forward = [0], model.forward

            def poisoned(x):
                calls[0] += 1
                out = forward(x)
                return out * float("nan") if calls[0] >= 4 and torch.is_grad_enabled() else out

            model.forward = poisoned
        return model

    monkeypatch.setattr(loop_module, "build_model", build)
    with pytest.raises(TrainingError) as e:
        run(config)
    message = str(e.value)
    assert "round 0 student: the loss is nan at step 3" in message
    named = Path(message.split("the last good checkpoint is ")[1].split(";")[0])
    assert named.name == "step-00000002.ckpt" and load_checkpoint(named)[0]["step"] == 2
    before = snapshot(config.out_dir)
    monkeypatch.setattr(loop_module, "build_model", real_build)
    run(config, resume=True)  # continues from that checkpoint
    after = snapshot(config.out_dir)
    assert all(after.get(k) == v for k, v in before.items()
               if k.startswith("teacher/") or k.endswith("pseudo_labels.npz"))


def test_lazy_unlabeled_images_equal_the_eager_ones_and_stay_on_disk(tmp_path, tiny_config):
    from noisy_student.data.image_folder import LazyImages

    cfg = _tree(tmp_path)
    eager = load_source(cfg).unlabeled.images
    lazy = load_source(DataConfig(**{**cfg.__dict__, "lazy_unlabeled": True})).unlabeled.images
    assert isinstance(lazy, LazyImages) and lazy.shape == eager.shape
    assert np.array_equal(lazy[0:len(lazy)], eager) and np.array_equal(lazy[3], eager[3])
    subset = lazy[np.array([4, 1])]
    assert isinstance(subset, LazyImages) and np.array_equal(subset[0:2], eager[[4, 1]])
    config = tiny_config.with_overrides([
        'data.source="image_folder"', f'data.labeled_dir="{tmp_path / "labeled"}"',
        f'data.unlabeled_dir="{tmp_path / "unlabeled"}"', f'data.test_dir="{tmp_path / "test"}"',
        "data.image_size=16", "data.lazy_unlabeled=true", "data.labeled_per_class=4",
        "rounds=1", "train.batch_size=4"])
    summary = run(config)
    assert summary["rounds"][0]["pseudo_labels_kept"] > 0
