"""Filtering, balancing and the un-noised teacher."""

import numpy as np
import pytest
import torch

from noisy_student.checkpoint import load_npz, save_npz
from noisy_student.config import PseudoLabelConfig
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
    assert pl.targets.dtype == np.float16
    np.testing.assert_allclose(pl.targets.astype(np.float32), expected, atol=1e-3)
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
    for name in ("indices", "targets", "confidence", "predicted"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(TypeError, match="FrozenTeacher"):
        make_pseudo_labels(model, images, [0.5], [0.25], cfg, 1.0, {})


def test_a_class_without_pseudo_labels_is_reported_with_a_threshold_that_helps():
    from noisy_student.pseudo_label import coverage_warning

    predicted = np.array([0, 0, 1, 1, 2])
    confidence = np.array([0.9, 0.8, 0.35, 0.42, 0.1], np.float32)
    keep = np.array([0, 1])  # threshold 0.5: only class 0 survives
    labels = PseudoLabels(keep, predicted[keep], confidence[keep], predicted, confidence,
                          {"num_classes": 4})
    text = coverage_warning(labels, 0.5, ["a", "b", "c", "d"])
    assert "classes ['b', 'c', 'd'] got no pseudo-labels" in text
    assert "kept per class [2, 0, 0, 0]" in text and "predicted per class [2, 2, 1, 0]" in text
    assert "pseudo_label.threshold = 0.10 (now 0.5)" in text  # class c's best is 0.1
    assert "predicts no unlabeled image as ['d']" in text
    everything = PseudoLabels(np.arange(4), predicted[:4], confidence[:4], predicted[:4],
                              confidence[:4], {"num_classes": 2})
    assert coverage_warning(everything, 0.0) is None


def test_top_k_soft_labels_are_compact_and_densify_to_the_renormalized_top_k(tmp_path):
    import torch

    from noisy_student.checkpoint import load_npz, save_npz
    from noisy_student.config import PseudoLabelConfig
    from noisy_student.pseudo_label import labels_from_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    cfg = PseudoLabelConfig(kind="soft", threshold=0.0, balance=False, top_k=2)
    labels = labels_from_logits(logits, cfg, 1.0, {})
    assert labels.targets.shape == (2, 2) and labels.target_classes.dtype == np.int16
    assert labels.target_classes.tolist() == [[0, 1], [3, 2]]
    dense = labels.training_targets()
    np.testing.assert_allclose(dense[0].numpy(), [0.5 / 0.8, 0.3 / 0.8, 0, 0], atol=1e-3)
    np.testing.assert_allclose(dense[1].numpy(), [0, 0, 0.3 / 0.7, 0.4 / 0.7], atol=1e-3)
    save_npz(tmp_path / "p.npz", labels.arrays())
    again = PseudoLabels.from_arrays(load_npz(tmp_path / "p.npz"))
    assert np.array_equal(again.target_classes, labels.target_classes)
    assert again.meta["top_k"] == 2


def test_a_run_with_top_k_soft_labels(tiny_config):
    from noisy_student.loop import run

    summary = run(tiny_config.with_overrides(["rounds=1", "pseudo_label.top_k=3"]))
    assert summary["rounds"][0]["pseudo_labels_kept"] > 0
