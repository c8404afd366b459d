"""Losses. Each is a small module whose docstring carries its formula and whose forward returns
`(total, parts)`, so that every part can be logged.

Notation: z_s student logits, z_t teacher logits, T temperature, q = softmax(z_t / T) the
teacher's soft pseudo-labels (computed once, offline, by `pseudo_label`), y true labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig

Parts = dict[str, torch.Tensor]


class LabelSmoothingCE(nn.Module):
    """CE(z_s, y_eps), y_eps = (1 - eps) * onehot(y) + eps / C  (Szegedy et al. 2016)."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        return loss, {"ce": loss.detach()}


class KDLoss(nn.Module):
    """Hinton et al. 2015: KL(q || softmax(z_s / T)) * T^2, averaged over the batch.

    The T^2 keeps gradient magnitudes independent of T: without it,
    dL/dz_s = (softmax(z_s / T) - q) / T per sample.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, soft_targets: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        T = self.temperature
        log_p = F.log_softmax(logits.float() / T, dim=-1)  # [B, C]
        kl = F.kl_div(log_p, soft_targets.float(), reduction="batchmean")
        loss = kl * T * T
        return loss, {"kd": loss.detach()}


class SoftTargetCE(nn.Module):
    """Noisy Student's soft pseudo-label loss: mean_b sum_c -q_bc log softmax(z_s)_bc."""

    def forward(self, logits: torch.Tensor, soft_targets: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        loss = torch.sum(-soft_targets.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return loss, {"soft_ce": loss.detach()}


class HardDistillation(nn.Module):
    """DeiT's hard distillation on pseudo-labeled images: CE(z_s, y_t), y_t = argmax q.

    With smoothing eps (DeiT, Touvron et al. 2021, sec. 5.2): the teacher's class gets 1 - eps
    and the other C - 1 classes share eps, then CE(z_s, smoothed) = -sum_c t_c log softmax(z_s)_c.
    Targets may be soft rows `[B, C]` (their argmax is taken) or class ids `[B]`. With the
    labeled CE weighted 0.5 and this weighted 0.5 (see `StudentLoss`), the total is DeiT's
    0.5 * CE(z_s, y) + 0.5 * CE(z_s, argmax z_t).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        hard = targets.argmax(dim=-1) if targets.ndim == 2 else targets  # [B]
        log_p = F.log_softmax(logits.float(), dim=-1)  # [B, C]
        if self.smoothing:
            c, eps = logits.shape[-1], self.smoothing
            target = torch.full_like(log_p, eps / (c - 1)).scatter_(1, hard[:, None], 1 - eps)
            loss = -(target * log_p).sum(-1).mean()
        else:
            loss = F.nll_loss(log_p, hard)
        return loss, {"hard_distill": loss.detach()}


class Consistency(nn.Module):
    """FixMatch's unlabeled term (Sohn et al. 2020) for round 0's teacher:
    (1 / B) sum_b 1[max q_b >= tau] CE(z_s(strong view b), argmax q_b), where q_b is the model's
    own un-noised prediction on the weak view of the same image (no gradient). Logged with the
    share of the B images above the threshold (`mask`)."""

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, logits: torch.Tensor, weak_probs: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        confidence, target = weak_probs.max(dim=-1)  # [B], [B]
        mask = (confidence >= self.threshold).float()
        loss = (F.cross_entropy(logits.float(), target, reduction="none") * mask).mean()
        return loss, {"consistency": loss.detach(), "mask": mask.mean()}


Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # one head, or (class, distillation)


class StudentLoss(nn.Module):
    """total = labeled_weight * CE_eps(z_s[labeled], y) + pseudo_weight * D(z_s[pseudo], q).

    D is one of `KDLoss`, `SoftTargetCE`, `HardDistillation`. Without pseudo-labeled images
    (round 0's teacher) the total is the labeled term alone, or with train.teacher_consistency
    D = `Consistency` on the strong views, q its own predictions on the weak ones.

    A student with a distillation token (DeiT) gives logit pairs (z_cls, z_dist): the class head
    learns from the labels and the distillation head from the teacher,

        total = labeled_weight * CE_eps(z_cls[labeled], y) + pseudo_weight * D(z_dist[pseudo], q)

    (with hard distillation and weights 0.5 / 0.5, DeiT's 0.5 CE(z_cls, y) + 0.5 CE(z_dist, y_t));
    without pseudo-labeled images both heads learn from the labels. `heads_cosine`, the mean
    cosine similarity of the two heads' logits, is logged with the parts (not a loss term).
    """

    def __init__(self, labeled: nn.Module, pseudo: nn.Module | None,
                 labeled_weight: float = 1.0, pseudo_weight: float = 1.0) -> None:
        super().__init__()
        self.labeled, self.pseudo = labeled, pseudo
        self.labeled_weight, self.pseudo_weight = labeled_weight, pseudo_weight

    def forward(self, labeled_logits: Logits, labels: torch.Tensor,
                pseudo_logits: Logits | None = None,
                pseudo_targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Parts]:
        pair = isinstance(labeled_logits, tuple)
        z_cls = labeled_logits[0] if pair else labeled_logits
        sup, parts = self.labeled(z_cls, labels)
        parts = {f"labeled_{k}": v for k, v in parts.items()}
        total = self.labeled_weight * sup
        with_pseudo = self.pseudo is not None and pseudo_logits is not None
        if pair and not with_pseudo:  # no teacher yet: the distillation head learns the labels
            sup_dist, dist_parts = self.labeled(labeled_logits[1], labels)
            parts.update({f"labeled_dist_{k}": v for k, v in dist_parts.items()})
            total = total + self.labeled_weight * sup_dist
        if with_pseudo:
            z_dist = pseudo_logits[1] if pair else pseudo_logits
            distill, pseudo_parts = self.pseudo(z_dist, pseudo_targets)
            parts.update({f"pseudo_{k}": v for k, v in pseudo_parts.items()})
            total = total + self.pseudo_weight * distill
        if pair:
            both = [torch.cat([z, p]) if with_pseudo else z
                    for z, p in zip(labeled_logits, pseudo_logits or labeled_logits)]
            parts["heads_cosine"] = F.cosine_similarity(*both, dim=-1).mean().detach()
        parts["total"] = total.detach()
        return total, parts


def build_student_loss(cfg: LossConfig, with_pseudo: bool = True,
                       consistency: float | None = None) -> StudentLoss:
    """The loss a round's student (or, with_pseudo=False, round 0's teacher) trains with;
    `consistency`: round 0's teacher also learns from unlabeled view pairs, with this threshold
    (weighted by pseudo_weight)."""
    pseudo: nn.Module | None = None
    if consistency is not None:
        pseudo = Consistency(consistency)
    elif with_pseudo:
        pseudo = {"kd": lambda: KDLoss(cfg.temperature), "soft_ce": SoftTargetCE,
                  "hard": lambda: HardDistillation(cfg.distill_smoothing)}[cfg.distillation]()
    return StudentLoss(LabelSmoothingCE(cfg.label_smoothing), pseudo, cfg.labeled_weight,
                       cfg.pseudo_weight)
