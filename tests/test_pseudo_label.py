"""Filtering, balancing and the un-noised teacher."""

import json

import numpy as np
import pytest
import torch

from noisy_student.checkpoint import load_npz, save_npz
from noisy_student.config import PseudoLabelConfig
from noisy_student.errors import ConfigError
from noisy_student.inference import FrozenTeacher
from noisy_student.models import create_model
from noisy_student.pseudo_label import PseudoLabels, make_pseudo_labels, select


def _crafted():
    # 10 images, 3 classes. predicted class and confidence by hand.
    predicted = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 0])
    confidence = np.array([0.9, 0.8, 0.5, 0.2, 0.95, 0.35, 0.6, 0.31, 0.1, 0.7])
    return predicted, confidence


def test_threshold_only():
    predicted, confidence = _crafted()
    kept = select(predicted, confidence, 3, threshold=0.3, balance=False)
    assert kept.tolist() == [0, 1, 2, 4, 5, 6, 7, 9]


def test_balance_caps_most_confident_and_duplicates_short_classes():
    predicted, confidence = _crafted()
    # kept per class: 0 -> [0 (.9), 1 (.8), 9 (.7), 2 (.5)], 1 -> [4, 5], 2 -> [6, 7]
    chosen = select(predicted, confidence, 3, threshold=0.3, balance=True, per_class=3)
    assert chosen.tolist() == [0, 1, 9, 4, 5, 4, 6, 7, 6]
    # default target: mean kept per class = round(8 / 3) = 3
    assert select(predicted, confidence, 3, 0.3, True).tolist() == chosen.tolist()
    # a cap of 5 duplicates whole sets first, then the most confident
    five = select(predicted, confidence, 3, 0.3, True, per_class=5)
    assert five.tolist() == [0, 1, 9, 2, 0, 4, 5, 4, 5, 4, 6, 7, 6, 7, 6]


def test_balance_skips_classes_with_nothing_kept():
    predicted = np.array([0, 0, 1])
    confidence = np.array([0.9, 0.8, 0.1])
    assert select(predicted, confidence, 3, 0.3, True).tolist() == [0, 1]
    assert select(predicted, confidence, 3, 0.95, True).tolist() == []


class _Fixed(torch.nn.Module):
    """Logits chosen by hand for 4 images (input value picks the row)."""

    def __init__(self):
        super().__init__()
        self.rows = torch.tensor([[4.0, 0.0], [0.0, 0.2], [3.0, 1.0], [0.0, 5.0]])

    def forward(self, x):
        idx = x.flatten(1)[:, 0].round().long()
        return self.rows[idx]


def test_make_pseudo_labels_soft_targets_and_stats():
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    cfg = PseudoLabelConfig(kind="soft", threshold=0.6, balance=False)
    pl = make_pseudo_labels(FrozenTeacher(_Fixed()), images, [0.0], [1 / 255], cfg, 2.0, {})
    probs = torch.softmax(_Fixed().rows, 1)
    assert pl.predicted.tolist() == [0, 1, 0, 1]
    assert pl.indices.tolist() == [0, 2, 3]  # image 1 has confidence 0.55 < 0.6
    expected = torch.softmax(_Fixed().rows[[0, 2, 3]] / 2.0, 1).numpy()
    assert pl.soft.parts[0][0].dtype == np.float16  # stored as float16, read as float32
    np.testing.assert_allclose(pl.targets, expected, atol=1e-3)
    np.testing.assert_allclose(pl.confidence, probs.max(1).values[[0, 2, 3]].numpy(), rtol=1e-6)
    stats = pl.stats(np.array([0, 1, 1, 1]))
    assert stats["kept"] == 3 and stats["per_class"] == [2, 1]
    assert stats["accuracy"] == pytest.approx(2 / 3)  # image 2 is wrong
    assert stats["accuracy_all"] == pytest.approx(3 / 4)


def test_hard_labels_and_npz_round_trip(tmp_path):
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    cfg = PseudoLabelConfig(kind="hard", threshold=0.0, balance=False)
    pl = make_pseudo_labels(FrozenTeacher(_Fixed()), images, [0.0], [1 / 255], cfg, 1.0,
                            {"teacher": "fixed"})
    assert pl.targets.tolist() == [0, 1, 0, 1] and pl.targets.dtype == np.int64
    save_npz(tmp_path / "pl.npz", pl.arrays())
    back = PseudoLabels.from_arrays(load_npz(tmp_path / "pl.npz"))
    assert back.meta["teacher"] == "fixed" and back.meta["kind"] == "hard"
    for name, array in pl.arrays().items():
        if name != "meta":
            np.testing.assert_array_equal(array, back.arrays()[name])


def test_teacher_is_unnoised_and_stays_frozen():
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_chans=1, drop_rate=0.5, drop_path_rate=0.3)
    model.train()
    teacher = FrozenTeacher(model)
    teacher.train()  # cannot switch it back
    assert not teacher.training and not model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    cfg = PseudoLabelConfig(threshold=0.0, balance=True)
    a = make_pseudo_labels(teacher, images, [0.5], [0.25], cfg, 1.0, {}, progress=None)
    b = make_pseudo_labels(teacher, images, [0.5], [0.25], cfg, 1.0, {}, progress=None)
    for name in ("indices", "targets", "confidence", "predicted", "confidence_all"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(TypeError, match="FrozenTeacher"):
        make_pseudo_labels(model, images, [0.5], [0.25], cfg, 1.0, {})


def test_labeling_on_a_gpu_queues_the_next_batch_before_reading_one_back():
    """`_one_ahead` (CUDA's labeling order): batch k is handed over, and so read back to the
    host, only once batch k + 1 has been launched; every batch comes once, in order."""
    from noisy_student.inference import _one_ahead

    launched = []

    def launch():
        for k in range(3):
            launched.append(k)
            yield k

    handed = [(k, list(launched)) for k in _one_ahead(launch())]
    assert handed == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]
    assert list(_one_ahead(iter([]))) == []


def test_a_class_without_pseudo_labels_is_reported_with_a_threshold_that_helps():
    from noisy_student.pseudo_label import coverage_warning

    predicted = np.array([0, 0, 1, 1, 2])
    confidence = np.array([0.9, 0.8, 0.35, 0.42, 0.1], np.float32)
    keep = np.array([0, 1])  # threshold 0.5: only class 0 survives
    labels = PseudoLabels(keep, predicted, confidence, {"num_classes": 4})
    text = coverage_warning(labels, 0.5, ["a", "b", "c", "d"])
    assert "classes ['b', 'c', 'd'] got no pseudo-labels" in text
    assert "kept per class [2, 0, 0, 0]" in text and "predicted per class [2, 2, 1, 0]" in text
    assert "pseudo_label.threshold = 0.10 (now 0.5)" in text  # class c's best is 0.1
    assert "predicts no unlabeled image as ['d']" in text
    everything = PseudoLabels(np.arange(4), predicted[:4], confidence[:4], {"num_classes": 2})
    assert coverage_warning(everything, 0.0) is None


def test_top_k_soft_labels_are_compact_and_densify_to_the_renormalized_top_k(tmp_path):
    import torch

    from noisy_student.checkpoint import load_npz, save_npz
    from noisy_student.config import PseudoLabelConfig
    from noisy_student.pseudo_label import labels_from_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    cfg = PseudoLabelConfig(kind="soft", threshold=0.0, balance=False, top_k=2)
    labels = labels_from_logits(logits, cfg, 1.0, {})
    probs, classes = labels.soft.parts[0]
    assert probs.shape == (2, 2) and probs.dtype == np.float16 and classes.dtype == np.int16
    assert classes.tolist() == [[0, 1], [3, 2]]
    dense = labels.training_targets()
    np.testing.assert_allclose(dense[0].numpy(), [0.5 / 0.8, 0.3 / 0.8, 0, 0], atol=1e-3)
    np.testing.assert_allclose(dense[1].numpy(), [0, 0, 0.3 / 0.7, 0.4 / 0.7], atol=1e-3)
    save_npz(tmp_path / "p.npz", labels.arrays())
    again = PseudoLabels.from_arrays(load_npz(tmp_path / "p.npz"))
    assert np.array_equal(again.soft.parts[0][1], classes)
    assert np.array_equal(again.targets, labels.targets)
    assert again.meta["top_k"] == 2


def test_a_run_with_top_k_soft_labels(tiny_config):
    """Round 0's labels, recomputed from its saved teacher: threshold 0 keeps every image, the
    balance rule gives each predicted class round(mean count) items, its most confident first,
    and each item's soft label is the teacher's top 3 probabilities renormalized."""
    from noisy_student.checkpoint import load_weights
    from noisy_student.data import load_source, make_splits
    from noisy_student.ladder import build_model
    from noisy_student.loop import run

    config = tiny_config.with_overrides(["rounds=1", "pseudo_label.top_k=3"])
    summary = run(config)
    splits = make_splits(load_source(config.data), config.data, config.seed)
    teacher = load_weights(build_model(config, 0, splits),
                           config.out_dir / "teacher" / "model.safetensors").eval()
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    x = (torch.from_numpy(splits.unlabeled.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        probs = teacher(x).softmax(1).numpy()  # temperature 1
    predicted, confidence = probs.argmax(1), probs.max(1)
    counts = np.bincount(predicted, minlength=splits.num_classes)
    target = round(counts.sum() / (counts > 0).sum())  # threshold 0.0: every image passes
    labels = PseudoLabels.load(config.out_dir / "round_0" / "pseudo_labels.npz")
    assert np.array_equal(labels.predicted, predicted)
    np.testing.assert_allclose(labels.confidence_all, confidence, rtol=1e-5)
    assert summary["rounds"][0]["pseudo_labels_kept"] == len(labels) == target * (counts > 0).sum()
    kept = np.bincount(predicted[labels.indices], minlength=splits.num_classes)
    assert kept.tolist() == [target if n else 0 for n in counts]
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(predicted == c)
        chosen = np.unique(labels.indices[predicted[labels.indices] == c])
        if counts[c] >= target:  # capped: its `target` most confident images, once each
            left = np.setdiff1d(members, chosen)
            assert len(chosen) == target
            assert not len(left) or confidence[chosen].min() >= confidence[left].max()
        else:  # short: every image, duplicated
            assert chosen.tolist() == members.tolist()
    top = np.sort(probs, 1)[:, -3:].sum(1, keepdims=True)
    dense = np.where(probs >= np.sort(probs, 1)[:, -3:-2], probs / top, 0.0)
    targets = labels.training_targets()
    rows = np.stack([targets[i].numpy() for i in range(len(labels))])
    np.testing.assert_allclose(rows, dense[labels.indices], atol=2e-3)  # stored as float16


def _teacher_and_images(n=50, classes=6, seed=0):
    torch.manual_seed(seed)
    teacher = FrozenTeacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, classes)))
    images = np.random.default_rng(seed).integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    return teacher, images


@pytest.mark.parametrize("top_k", [None, 3])
def test_parts_written_while_labeling_equal_labeling_in_memory(tmp_path, top_k):
    """Two ranks' parts (written batch by batch, memory-mapped back) give the labels of one
    in-memory pass: same classes, confidences, kept items and soft rows."""
    from noisy_student.pseudo_label import SOFT_DIR, label_part, merge_parts

    teacher, images = _teacher_and_images()
    cfg = PseudoLabelConfig(kind="soft", threshold=0.2, balance=True, top_k=top_k, batch_size=7)
    whole = make_pseudo_labels(teacher, images, [0.5], [0.25], cfg, 2.0, {})
    parts = [label_part(teacher, images[a:b], [0.5], [0.25], cfg, 2.0,
                        tmp_path / SOFT_DIR / f"part-{r:05d}-of-00002")
             for r, (a, b) in enumerate([(0, 23), (23, 50)])]
    (tmp_path / SOFT_DIR / "part-00005-of-00009.probs.npy").write_bytes(b"stale")
    merged = merge_parts(parts, tmp_path, cfg, 2.0, {"round": 0}, remove_stale=True)
    assert not (tmp_path / SOFT_DIR / "part-00005-of-00009.probs.npy").exists()
    assert np.array_equal(merged.predicted, whole.predicted)
    assert np.array_equal(merged.indices, whole.indices)
    np.testing.assert_allclose(merged.confidence_all, whole.confidence_all, rtol=1e-6)
    np.testing.assert_allclose(merged.targets, whole.targets, atol=1e-6)
    from noisy_student.soft_labels import FileRows

    assert isinstance(merged.soft.parts[0][0], FileRows)  # read row by row, not loaded
    save_npz(tmp_path / "pseudo_labels.npz", merged.arrays())
    assert set(load_npz(tmp_path / "pseudo_labels.npz")) == {
        "indices", "predicted", "confidence_all", "meta"}  # the soft rows stay in the parts
    back = PseudoLabels.load(tmp_path / "pseudo_labels.npz")
    item = back.training_targets()
    assert len(item) == len(merged) and torch.equal(item[5], torch.from_numpy(merged.targets[5]))
    width = top_k or 6  # bytes per image on disk: 2 per float16 (+ 2 per int16 class)
    size = sum(f.stat().st_size - 128 for f in (tmp_path / SOFT_DIR).glob("*.npy"))
    assert size == 50 * width * (2 if top_k is None else 4)


def test_a_damaged_or_missing_part_is_named(tmp_path):
    from noisy_student.pseudo_label import SOFT_DIR, label_part, merge_parts
    from noisy_student.soft_labels import SoftLabelError

    teacher, images = _teacher_and_images()
    cfg = PseudoLabelConfig(kind="soft", threshold=0.0, balance=False)
    part = label_part(teacher, images, [0.5], [0.25], cfg, 1.0,
                      tmp_path / SOFT_DIR / "part-00000-of-00001")
    save_npz(tmp_path / "pl.npz", merge_parts([part], tmp_path, cfg, 1.0, {}).arrays())
    f = tmp_path / SOFT_DIR / "part-00000-of-00001.probs.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(SoftLabelError, match="part-00000-of-00001.probs.npy: sha256 differs"):
        PseudoLabels.load(tmp_path / "pl.npz")
    f.unlink()
    with pytest.raises(SoftLabelError, match="part-00000-of-00001.probs.npy: cannot read"):
        PseudoLabels.load(tmp_path / "pl.npz")


def test_hard_labels_write_no_parts(tmp_path):
    from noisy_student.pseudo_label import label_part

    teacher, images = _teacher_and_images()
    cfg = PseudoLabelConfig(kind="hard", threshold=0.0, balance=False)
    part = label_part(teacher, images, [0.5], [0.25], cfg, 1.0, tmp_path / "soft" / "part")
    assert part.soft_part is None and not (tmp_path / "soft").exists()
    assert part.predicted.dtype == np.int64 and len(part.confidence) == 50


def test_ensemble_averages_probabilities_or_logits_by_hand():
    from noisy_student.inference import Ensemble

    class Fixed(torch.nn.Module):
        def __init__(self, z):
            super().__init__()
            self.z = torch.tensor([z])

        def forward(self, x):
            return self.z.expand(len(x), -1)

    za, zb = [2.0, 0.0, -1.0], [0.0, 1.0, 0.5]
    x = torch.zeros(2, 1)
    mean_p = (torch.softmax(torch.tensor(za), 0) + torch.softmax(torch.tensor(zb), 0)) / 2
    probs = Ensemble([Fixed(za), Fixed(zb)], "probs")(x)
    assert torch.allclose(probs.softmax(-1), mean_p.expand(2, -1), atol=1e-6)
    logits = Ensemble([Fixed(za), Fixed(zb)], "logits")(x)
    assert torch.allclose(logits, torch.tensor([[1.0, 0.5, -0.25]] * 2))
    with pytest.raises(ValueError, match="'probs' or 'logits'"):
        Ensemble([Fixed(za)], "votes")


def test_flip_average_averages_the_two_views_probabilities_by_hand():
    from noisy_student.inference import ViewAverage

    class LeftColumn(torch.nn.Module):  # logits = [x[..., 0], -x[..., 0]] summed over rows
        def forward(self, x):
            a = x[:, 0, :, 0].sum(-1)
            return torch.stack([a, -a], -1)

    x = torch.tensor([[[[1.0, 0.0, 3.0]]]])  # one image 1x1x3: left column 1, mirrored 3
    p = ViewAverage(LeftColumn())(x).softmax(-1)
    expected = (torch.softmax(torch.tensor([1.0, -1.0]), 0)
                + torch.softmax(torch.tensor([3.0, -3.0]), 0)) / 2
    assert torch.allclose(p[0], expected, atol=1e-6)


def test_shift_average_averages_five_reflect_padded_views_by_hand():
    from noisy_student.inference import ViewAverage

    class Centre(torch.nn.Module):  # logits = [c, 0], c the centre pixel of a 3x3 image
        def forward(self, x):
            c = x[:, 0, 1, 1]
            return torch.stack([c, torch.zeros_like(c)], -1)

    x = torch.arange(9.0).view(1, 1, 3, 3)  # rows 0 1 2 / 3 4 5 / 6 7 8
    # moved one pixel (reflect padding) the centre sees 4's neighbours: 1, 7, 3, 5
    assert [v[0, 0, 1, 1].item() for v in ViewAverage(Centre(), False, 1).views(x)] == [
        4, 5, 3, 7, 1]
    p = ViewAverage(Centre(), flip=False, shift=1)(x).softmax(-1)[0, 0]
    expected = sum(torch.sigmoid(torch.tensor(c)) for c in [4.0, 5, 3, 7, 1]) / 5
    assert torch.allclose(p, expected)
    assert len(list(ViewAverage(Centre(), flip=True, shift=1).views(x))) == 10


def test_a_run_whose_teachers_average_over_shifted_views(tiny_config):
    from noisy_student.loop import run

    summary = run(tiny_config.with_overrides(["pseudo_label.shift_average=2",
                                              'model.ladder=["cnn_tiny"]']))
    assert summary["rounds"][0]["teacher"] == "cnn_tiny, averaged over 5 views (shifts of 2 px)"


def test_flip_average_needs_mirror_symmetric_classes(tiny_config):
    with pytest.raises(ConfigError, match="noise.flip = true"):
        tiny_config.with_overrides(["pseudo_label.flip_average=true", "noise.flip=false"])


def test_a_run_whose_teachers_average_over_mirror_images(tiny_config):
    from noisy_student.loop import run

    summary = run(tiny_config.with_overrides(["pseudo_label.flip_average=true", "noise.flip=true",
                                              'model.ladder=["cnn_tiny"]']))
    name = summary["rounds"][0]["teacher"]
    assert name == "cnn_tiny, flip-averaged"
    meta = PseudoLabels.load(tiny_config.out_dir / "round_0" / "pseudo_labels.npz").meta
    assert meta["teacher"] == name


def test_a_run_whose_teachers_are_ensembles_of_the_last_models(tiny_config):
    from noisy_student.loop import run

    summary = run(tiny_config.with_overrides(["pseudo_label.ensemble=2", "rounds=3",
                                              'model.ladder=["cnn_tiny"]']))
    names = [r["teacher"] for r in summary["rounds"]]
    assert names == ["cnn_tiny", "ensemble(cnn_tiny, cnn_tiny)", "ensemble(cnn_tiny, cnn_tiny)"]
    out = tiny_config.out_dir
    meta = PseudoLabels.load(out / "round_1" / "pseudo_labels.npz").meta
    round0 = json.loads((out / "round_0" / "metrics.json").read_text())
    assert meta["teacher_sha256"] != round0["student_sha256"]  # the ensemble, not one model
    assert meta["teacher"] == names[1]
