"""A generalist teacher plus specialists on confusable classes (Hinton et al. 2015, sec. 5).

1. `confusable_groups`: the generalist's predicted probabilities P [n, C] on unlabeled (held-out)
   images; k-means on the columns of their covariance cov(P) [C, C] groups classes the
   generalist confuses. Groups of 2+ classes get a specialist.
2. `train_specialist`: a copy of the generalist's backbone with a new head over the group's
   classes plus a "dustbin" class (every other class), fine-tuned on the labeled images, half
   of each batch from the group (as in the paper, enriched for its classes).
3. `combine`: for image k, the active specialists A_k are those whose group holds one of the
   generalist's `top` classes; the full distribution q minimizes

       KL(p_g || q) + sum_{m in A_k} KL(p_m || q_m)

   where q_m is q over group m's classes plus a dustbin with q's mass outside the group. Solved
   by gradient descent on log q (the gradient is written out in `combine`).

`SpecialistTeacher` wraps it all as one module whose logits are log q, so pseudo-labeling,
ensembles and evaluation treat it like any teacher.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config
from .data import NoisedDataset, Splits
from .inference import predict_logits
from .losses import build_student_loss
from .noise import Noise
from .tracking import Tracker
from .train import TrainData, TrainHooks, train_model


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """Cluster ids `int [n]` of `points [n, d]`: k-means++ seeding, then Lloyd's iterations."""
    rng = np.random.default_rng(seed)
    k = min(k, len(points))
    centers = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(points), 1 / len(points))
        centers.append(points[rng.choice(len(points), p=p)])
    centers = np.stack(centers)
    for _ in range(iterations):
        ids = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([points[ids == j].mean(0) if (ids == j).any() else centers[j]
                          for j in range(k)])
        if np.allclose(moved, centers):
            break
        centers = moved
    return ids


def confusable_groups(probs: np.ndarray, num_groups: int, seed: int = 0) -> list[list[int]]:
    """Groups (of 2+ classes) of the classes whose predicted probabilities co-vary: k-means on
    the columns of cov(probs [n, C])."""
    cov = np.cov(probs.astype(np.float64), rowvar=False)  # [C, C]
    ids = kmeans(cov, num_groups, seed)
    groups = [np.flatnonzero(ids == j).tolist() for j in range(ids.max() + 1)]
    return sorted((g for g in groups if len(g) >= 2), key=lambda g: g[0])


def combine(p_g: torch.Tensor, specialists: list[tuple[list[int], torch.Tensor]], top: int = 1,
            steps: int = 300, lr: float = 1.0) -> torch.Tensor:
    """q [n, C] minimizing KL(p_g || q) + sum over active m of KL(p_m || q_m) (module docstring).

    `specialists`: (group, p_m [n, |group| + 1], the dustbin last). With L = -sum_c a_c log q_c -
    sum_m d_m log R_m (a_c: the targets' mass on class c, d_m: specialist m's dustbin mass,
    R_m = sum of q outside group m, T = 1 + #active), the gradient in z = log q is
    dL/dz_j = T q_j - a_j - q_j sum_m d_m [j not in group m] / R_m.
    """
    n, c = p_g.shape
    if not specialists:
        return p_g
    top_classes = p_g.topk(min(top, c), dim=1).indices  # [n, top]
    a, d = p_g.clone().double(), []
    outside = torch.ones(len(specialists), c, dtype=torch.float64)  # [M, C]: 1 off the group
    active = torch.zeros(n, len(specialists), dtype=torch.float64)
    for m, (group, p_m) in enumerate(specialists):
        g = torch.tensor(group)
        outside[m, g] = 0
        active[:, m] = torch.isin(top_classes, g).any(1).double()
        a[:, g] += active[:, m:m + 1] * p_m[:, :-1].double()
        d.append(active[:, m] * p_m[:, -1].double())
    d = torch.stack(d, 1)  # [n, M]
    total = 1 + active.sum(1, keepdim=True)  # [n, 1]
    z = p_g.double().clamp_min(1e-12).log()
    for _ in range(steps):
        q = z.softmax(1)
        rest = (q @ outside.T).clamp_min(1e-12)  # [n, M]
        grad = total * q - a - q * ((d / rest) @ outside)
        z = z - lr * grad / total
    return z.softmax(1).to(p_g.dtype)


class SpecialistTeacher(nn.Module):
    """Generalist + specialists as one teacher: logits log q (see `combine`)."""

    def __init__(self, generalist: nn.Module, specialists: list[tuple[list[int], nn.Module]],
                 top: int = 1) -> None:
        super().__init__()
        self.generalist, self.top = generalist, top
        self.groups = [g for g, _ in specialists]
        self.specialists = nn.ModuleList([s for _, s in specialists])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_g = self.generalist(x).float().softmax(-1)
        outs = [(g, s(x).float().softmax(-1).cpu())
                for g, s in zip(self.groups, self.specialists, strict=True)]
        with torch.inference_mode(False):  # tensors made under inference mode: plain copies
            q = combine(p_g.cpu().clone(), [(g, p.clone()) for g, p in outs], self.top)
        return q.clamp_min(1e-12).log().to(x.device)


def specialist_dataset(splits: Splits, group: list[int], noise: Noise | None,
                       seed: int) -> NoisedDataset:
    """The labeled images with targets: group class -> its position, others -> dustbin
    (= len(group)); the group's images are repeated so they fill about half of every epoch."""
    labels = splits.labeled.labels
    position = {c: i for i, c in enumerate(group)}
    targets = np.array([position.get(int(y), len(group)) for y in labels], np.int64)
    inside = np.flatnonzero(targets < len(group))
    copies = max(1, round((len(labels) - len(inside)) / max(1, len(inside))))
    index = np.concatenate([np.arange(len(labels)), np.tile(inside, copies - 1)])
    return NoisedDataset(splits.labeled.images, targets[index], noise, splits.mean, splits.std,
                         seed, index=index)


def _group_head(head: nn.Linear, group: list[int]) -> nn.Linear:
    """A head over `group` + dustbin, starting from the generalist's rows for the group."""
    new = nn.Linear(head.in_features, len(group) + 1).to(head.weight.device)
    with torch.no_grad():
        new.weight[:-1] = head.weight[group]
        new.bias[:-1] = head.bias[group]
    return new


def train_specialist(generalist: nn.Module, group: list[int], config: Config, splits: Splits,
                     noise: Noise | None, batch_noise: Any, device: torch.device,
                     tracker: Tracker, tag: str, seed: int) -> nn.Module:
    """The generalist's copy with a head over `group` + dustbin, fine-tuned on the labeled set."""
    model = copy.deepcopy(generalist)
    model.head = _group_head(model.head, group)
    if getattr(model, "head_dist", None) is not None:  # a distillation-token model: both heads
        model.head_dist = _group_head(model.head_dist, group)
    model.requires_grad_(True)
    c = config
    loss = build_student_loss(replace(c.loss, labeled_weight=1.0, pseudo_weight=0.0),
                              with_pseudo=False)
    data = specialist_dataset(splits, group, noise, seed)
    return train_model(model, loss, c.train, device,
                       TrainData(data, epochs=c.pseudo_label.specialist_epochs, seed=seed,
                                 num_workers=c.data.num_workers, batch_noise=batch_noise),
                       TrainHooks(tag, tracker, eval_times=0)).model


def make_specialists(generalist: nn.Module, config: Config, splits: Splits,
                     noise: Noise | None, batch_noise: Any, device: torch.device,
                     tracker: Tracker, k: int) -> tuple[nn.Module, dict[str, Any]]:
    """Round k's generalist -> (SpecialistTeacher, report); the generalist alone when no group
    of confusable classes is found."""
    c = config.pseudo_label
    probs = predict_logits(generalist, splits.unlabeled.images, splits.mean, splits.std,
                           c.batch_size, device).softmax(-1).numpy()
    groups = confusable_groups(probs, c.specialists, seed=config.seed + k)
    report: dict[str, Any] = {"round": k, "groups": groups, "specialists": len(groups)}
    if not groups:
        return generalist, report
    specialists = [(g, train_specialist(generalist, g, config, splits, noise, batch_noise,
                                        device, tracker, f"round {k} specialist {i}",
                                        seed=config.seed * 1000 + 100 * k + i))
                   for i, g in enumerate(groups)]
    for _, s in specialists:
        s.eval()
    return SpecialistTeacher(generalist, specialists).eval(), report
