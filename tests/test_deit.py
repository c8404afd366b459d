"""DeiT's distillation token: two heads in training, their mean in eval, each head its loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from noisy_student.config import LossConfig
from noisy_student.losses import build_student_loss
from noisy_student.models import create_model
from noisy_student.train import late_fusion

DEIT_HARD = LossConfig(distillation="hard", label_smoothing=0.0, labeled_weight=0.5,
                       pseudo_weight=0.5)


def test_two_heads_in_training_and_their_mean_in_eval():
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled(patch_size=2)", num_classes=5, in_chans=1,
                         drop_rate=0.0, drop_path_rate=0.0)
    x = torch.randn(3, 1, 8, 8)
    cls, dist = model.train()(x)
    assert cls.shape == dist.shape == (3, 5) and not torch.allclose(cls, dist)
    fused = model.eval()(x)
    assert torch.allclose(fused, (cls + dist) / 2, atol=1e-6)  # no noise on: the same heads
    # what training scores its labeled images by: the same late fusion
    assert torch.allclose(late_fusion((cls, dist)), fused, atol=1e-6)
    plain = create_model("vit_tiny(patch_size=2)", num_classes=5, in_chans=1).train()
    assert plain(x).shape == (3, 5)  # without the token: one head
    assert late_fusion(plain(x)).shape == (3, 5)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 5)  # another grid: resized positions


def test_class_head_learns_the_labels_and_distillation_head_the_teacher():
    z_cls = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.1]])
    z_dist = torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.0, 1.5]])
    y = torch.tensor([0, 1])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = build_student_loss(DEIT_HARD)
    total, parts = loss((z_cls[:1], z_dist[:1]), y[:1], (z_cls[1:], z_dist[1:]), q[1:])
    # DeiT: 0.5 CE(z_cls, y) on the labeled image + 0.5 CE(z_dist, argmax q) on the pseudo one
    expected = 0.5 * F.cross_entropy(z_cls[:1], y[:1]) + 0.5 * F.cross_entropy(z_dist[1:],
                                                                                torch.tensor([2]))
    assert math.isclose(total.item(), expected.item(), rel_tol=1e-6)
    cos = F.cosine_similarity(z_cls, z_dist, dim=-1).mean()
    assert math.isclose(parts["heads_cosine"].item(), cos.item(), rel_tol=1e-6)
    teacher_phase = build_student_loss(LossConfig(distillation="hard", label_smoothing=0.0),
                                       with_pseudo=False)
    total, parts = teacher_phase((z_cls, z_dist), y)  # no teacher yet: both heads on labels
    expected = F.cross_entropy(z_cls, y) + F.cross_entropy(z_dist, y)
    assert math.isclose(total.item(), expected.item(), rel_tol=1e-6)
    assert {"labeled_ce", "labeled_dist_ce", "heads_cosine", "total"} == set(parts)


def test_a_round_with_a_distillation_token_student(tiny_config, monkeypatch):
    """The logged `heads_cosine` of the student's epoch is the mean over its steps of the
    cosine of the two heads' logits, recomputed here from the logits each step produced."""
    import json

    from noisy_student.loop import run
    from noisy_student.losses import StudentLoss

    heads = []  # per training step of a two-head model: (class head, distillation head) logits
    forward = StudentLoss.forward

    def spy(self, labeled_logits, labels, pseudo_logits=None, pseudo_targets=None):
        if isinstance(labeled_logits, tuple):
            rows = [labeled_logits] + ([pseudo_logits] if pseudo_logits is not None else [])
            heads.append([torch.cat([r[h] for r in rows]).detach().clone() for h in (0, 1)])
        return forward(self, labeled_logits, labels, pseudo_logits, pseudo_targets)

    monkeypatch.setattr(StudentLoss, "forward", spy)
    config = tiny_config.with_overrides([
        'model.ladder=["cnn_tiny", "deit_tiny_distilled(patch_size=2)"]', "rounds=1",
        'pseudo_label.kind="hard"', 'loss.distillation="hard"', "loss.distill_smoothing=0.1"])
    summary = run(config)
    assert summary["rounds"][0]["student"] == "deit_tiny_distilled(patch_size=2)"
    history = json.loads((config.out_dir / "round_0" / "metrics.json").read_text())["train"]
    assert len(history) == 1 and history[0]["skipped_steps"] == 0  # train.epochs = 1
    assert len(heads) == history[0]["step"] > 0  # the cnn_tiny teacher has one head
    by_hand = [((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item() for a, b in heads]
    assert history[0]["heads_cosine"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    assert "pseudo_hard_distill" in history[0]
