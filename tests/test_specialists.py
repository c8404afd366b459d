"""Specialists (Hinton et al. 2015): confusable groups, the combination formula, the loop."""

import json

import numpy as np
import pytest
import torch

from noisy_student.specialists import combine, confusable_groups, kmeans, specialist_dataset


def _objective(q, p_g, group, p_m):
    """KL(p_g || q) + KL(p_m || q_m) up to constants: the cross-entropies."""
    rest = [c for c in range(len(q)) if c not in group]
    q_m = torch.cat([q[group], q[rest].sum(0, keepdim=True)])
    return -(p_g * q.log()).sum() - (p_m * q_m.log()).sum()


def test_one_active_specialist_matches_the_closed_form():
    """One specialist on {0, 1}: q_c = (p_g,c + p_m,c) / 2 inside the group; outside it, the
    mass (P_g,rest + p_m,dustbin) / 2 shared in proportion to p_g."""
    p_g = torch.tensor([[0.40, 0.30, 0.20, 0.10]])
    p_m = torch.tensor([[0.60, 0.10, 0.30]])  # classes 0, 1, then the dustbin
    q = combine(p_g, [([0, 1], p_m)], top=1, steps=2000)[0]
    rest_mass = (0.30 + 0.30) / 2
    expected = torch.tensor([(0.40 + 0.60) / 2, (0.30 + 0.10) / 2,
                             rest_mass * 0.20 / 0.30, rest_mass * 0.10 / 0.30])
    assert torch.allclose(q, expected, atol=1e-5)
    assert abs(q.sum().item() - 1) < 1e-6
    for _ in range(20):  # and it is the minimum: random nearby points are worse
        other = (q.log() + 0.05 * torch.randn(4)).softmax(0)
        assert _objective(other, p_g[0], [0, 1], p_m[0]) > _objective(q, p_g[0], [0, 1], p_m[0])


def test_a_specialist_is_active_only_on_images_whose_top_class_is_in_its_group():
    p_g = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.5, 0.3, 0.1, 0.1]])
    p_m = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    q = combine(p_g, [([0, 1], p_m)])
    assert torch.allclose(q[0], p_g[0], atol=1e-6)  # top class 2: no specialist, q = p_g
    assert not torch.allclose(q[1], p_g[1], atol=1e-3)  # top class 0: the specialist speaks
    assert torch.equal(combine(p_g, []), p_g)


def test_confusable_groups_from_the_covariance_of_predictions():
    """Six classes; the generalist mixes up 0 with 1 and 2 with 3, and is sure of 4 and 5."""
    rng = np.random.default_rng(0)
    partner, rows = {0: 1, 1: 0, 2: 3, 3: 2}, []
    for c in range(6):
        for _ in range(200):
            p = np.full(6, 0.02)
            share = rng.uniform(0.4, 1.0) if c in partner else 1.0
            p[c] += 0.9 * share
            if c in partner:
                p[partner[c]] += 0.9 * (1 - share)
            rows.append(p)
    for seed in range(3):
        assert confusable_groups(np.array(rows), 4, seed=seed) == [[0, 1], [2, 3]]
    ids = kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, seed=1)
    assert ids[0] == ids[1] != ids[2] == ids[3]


def test_specialist_data_maps_other_classes_to_the_dustbin_and_balances(tiny_config):
    from noisy_student.data import load_source, make_splits

    splits = make_splits(load_source(tiny_config.data), tiny_config.data, 0)
    data = specialist_dataset(splits, [3, 5], None, seed=0)
    targets = data.targets.numpy()
    labels = splits.labeled.labels[data.index]
    assert (targets[labels == 3] == 0).all() and (targets[labels == 5] == 1).all()
    assert (targets[(labels != 3) & (labels != 5)] == 2).all()
    inside = (targets < 2).mean()
    assert 0.4 <= inside <= 0.6  # about half of every epoch is the group's classes


def test_a_round_with_specialists_reports_them(tiny_config, monkeypatch):
    """The report's top-1s are those of the generalist and of the teacher the loop made from
    it, recomputed here on the test images."""
    from noisy_student import teachers
    from noisy_student.data import load_source, make_splits
    from noisy_student.loop import run

    made = []  # the teacher with specialists the loop built (its weights are not saved)
    make = teachers.make_specialists

    def keep(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(teachers, "make_specialists", keep)
    config = tiny_config.with_overrides(["rounds=1", "pseudo_label.specialists=3",
                                         "pseudo_label.specialist_epochs=2"])
    summary = run(config)
    metrics = json.loads((config.out_dir / "round_0" / "metrics.json").read_text())
    report = metrics["specialists"]
    assert report["specialists"] == len(report["groups"]) > 0
    (teacher, _), = made
    assert teacher.groups == report["groups"] and len(teacher.specialists) == len(teacher.groups)
    splits = make_splits(load_source(config.data), config.data, config.seed)
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    x = (torch.from_numpy(splits.test.images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    labels = torch.from_numpy(splits.test.labels)
    with torch.no_grad():
        combined = (teacher(x).argmax(1) == labels).float().mean().item()
        alone = (teacher.generalist(x).argmax(1) == labels).float().mean().item()
    assert report["combined_top1"] == pytest.approx(combined)
    assert report["generalist_top1"] == pytest.approx(alone) == summary["teacher"]["top1"]
    assert summary["rounds"][0]["teacher"].endswith("specialists")
    assert summary["rounds"][0]["teacher_top1"] == report["combined_top1"]
