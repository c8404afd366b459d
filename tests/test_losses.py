"""Losses against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from noisy_student.config import LossConfig
from noisy_student.losses import (Consistency, HardDistillation, KDLoss, LabelSmoothingCE,
                                  SoftTargetCE, StudentLoss, build_student_loss)

DEIT_HARD = LossConfig(distillation="hard", label_smoothing=0.0, labeled_weight=0.5,
                       pseudo_weight=0.5)


def _softmax(z, T=1.0):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_equals_hand_computation():
    z_s, z_t, T = [1.0, 2.0, 0.5], [0.2, -1.0, 3.0], 2.0
    q, p = _softmax(z_t, T), _softmax(z_s, T)
    expected = T * T * sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))
    loss, parts = KDLoss(T)(torch.tensor([z_s]), torch.tensor([q]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert math.isclose(parts["kd"].item(), expected, rel_tol=1e-5)


def test_kd_gradient_is_p_minus_q_over_T_before_T2():
    torch.manual_seed(0)
    T = 3.0
    z_s = torch.randn(4, 5, requires_grad=True)
    q = torch.softmax(torch.randn(4, 5) / T, dim=1)
    loss, _ = KDLoss(T)(z_s, q)
    loss.backward()
    p = torch.softmax(z_s.detach() / T, dim=1)
    # batchmean divides by B; the T^2 factor multiplies (p - q) / T
    expected = (p - q) / T * T * T / 4
    assert torch.allclose(z_s.grad, expected, atol=1e-6)


def test_soft_target_ce_and_its_hard_limit():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]])
    q = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    expected = -(q * torch.log_softmax(z, 1)).sum(1).mean()
    assert torch.allclose(SoftTargetCE()(z, q)[0], expected)
    onehot = torch.eye(3)[torch.tensor([0, 2])]
    assert torch.allclose(SoftTargetCE()(z, onehot)[0], F.cross_entropy(z, torch.tensor([0, 2])))


def test_hard_distillation_is_ce_on_teacher_argmax():
    z_s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -0.5, 2.0]])
    q = torch.tensor([[0.1, 0.3, 0.6], [0.8, 0.1, 0.1]])  # argmax: 2, 0
    loss, parts = HardDistillation()(z_s, q)
    by_hand = -(math.log(_softmax([1.0, 2.0, 0.0])[2]) + math.log(_softmax([0.5, -0.5, 2.0])[0])) / 2
    assert math.isclose(loss.item(), by_hand, rel_tol=1e-6)
    assert torch.allclose(HardDistillation()(z_s, torch.tensor([2, 0]))[0], loss)


def test_hard_distillation_with_smoothing_by_hand():
    """DeiT: the teacher's class gets 1 - eps, the other C - 1 classes eps / (C - 1) each."""
    z, eps = [1.0, 0.0, -1.0, 0.5], 0.1
    logp = [math.log(v) for v in _softmax(z)]
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])  # the teacher's class: 3
    target = [eps / 3, eps / 3, eps / 3, 1 - eps]
    expected = -sum(t * lp for t, lp in zip(target, logp))
    loss, _ = HardDistillation(eps)(torch.tensor([z]), q)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    built = build_student_loss(LossConfig(distillation="hard", label_smoothing=0.0,
                                          labeled_weight=0.0, distill_smoothing=eps))
    assert math.isclose(built(torch.tensor([z]), torch.tensor([0]), torch.tensor([z]), q)[0].item(),
                        expected, rel_tol=1e-6)
    from noisy_student.config import Config, ConfigError

    with pytest.raises(ConfigError, match="distill_smoothing .* needs loss.distillation = 'hard'"):
        Config.from_dict({"loss": {"distillation": "kd", "distill_smoothing": 0.1}})


def test_deit_hard_distillation_total():
    """0.5 * CE(z_s, y) + 0.5 * CE(z_s, argmax z_t) through StudentLoss."""
    z_lab, y = torch.tensor([[0.3, 1.2, -0.4]]), torch.tensor([1])
    z_pse, q = torch.tensor([[2.0, 0.1, 0.0]]), torch.tensor([[0.2, 0.5, 0.3]])
    loss = build_student_loss(DEIT_HARD)
    total, parts = loss(z_lab, y, z_pse, q)
    expected = 0.5 * -math.log(_softmax([0.3, 1.2, -0.4])[1]) + 0.5 * -math.log(_softmax([2.0, 0.1, 0.0])[1])
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    assert set(parts) == {"labeled_ce", "pseudo_hard_distill", "total"}


def test_label_smoothing_by_hand():
    z, eps = [1.0, 0.0, -1.0, 0.5], 0.1
    logp = [math.log(v) for v in _softmax(z)]
    target = [eps / 4] * 4
    target[2] += 1 - eps
    expected = -sum(t * lp for t, lp in zip(target, logp))
    loss, parts = LabelSmoothingCE(eps)(torch.tensor([z]), torch.tensor([2]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_student_loss_weights_and_parts():
    torch.manual_seed(1)
    z_l, y = torch.randn(3, 4), torch.tensor([0, 1, 3])
    z_u, q = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), 1)
    loss = StudentLoss(LabelSmoothingCE(0.0), KDLoss(2.0), labeled_weight=0.3, pseudo_weight=2.0)
    total, parts = loss(z_l, y, z_u, q)
    assert torch.allclose(total, 0.3 * parts["labeled_ce"] + 2.0 * parts["pseudo_kd"])
    assert torch.allclose(parts["total"], total)
    kd = LossConfig(distillation="kd", temperature=2.0, label_smoothing=0.0)
    only_labeled, parts = build_student_loss(kd, with_pseudo=False)(z_l, y)
    assert set(parts) == {"labeled_ce", "total"}
    assert torch.allclose(only_labeled, F.cross_entropy(z_l, y))


def test_consistency_by_hand():
    """FixMatch's term: the first view's own prediction (0.96) passes the 0.95 threshold, its
    strong view's logits (0, 0) cost CE = ln 2 against class 0; the second (0.6) is masked.
    Mean over both images: ln 2 / 2, half of them kept. In the teacher's total it is weighted
    by pseudo_weight."""
    weak = torch.tensor([[0.96, 0.04], [0.6, 0.4]])
    strong = torch.tensor([[0.0, 0.0], [5.0, 0.0]], requires_grad=True)
    loss, parts = Consistency(0.95)(strong, weak)
    assert loss.item() == pytest.approx(math.log(2) / 2)
    assert parts["mask"].item() == 0.5
    loss.backward()  # d/dz of CE(z, 0) / 2 for the kept row: (softmax(z) - onehot(0)) / 2
    assert torch.allclose(strong.grad, torch.tensor([[-0.25, 0.25], [0.0, 0.0]]))
    teacher = build_student_loss(LossConfig(label_smoothing=0.0, pseudo_weight=2.0),
                                 with_pseudo=False, consistency=0.95)
    total, parts = teacher(torch.zeros(1, 2), torch.tensor([1]), strong, weak)
    assert total.item() == pytest.approx(math.log(2) + 2 * math.log(2) / 2)
    assert set(parts) >= {"labeled_ce", "pseudo_consistency", "pseudo_mask"}
