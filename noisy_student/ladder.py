"""The model ladder: the model of each rung (round 0's teacher, then each round's student),
built with the configured model noise and pretrained weights, and checked before any work."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import Config, ConfigError
from .data import Splits
from .models import count_params, create_model, parse_model_spec
from .models.weights import grow, load_backbone_weights


def starts_pretrained(config: Config, rung: int) -> bool:
    """Whether rung `rung`'s model starts from `model.pretrained` (transfer learning)."""
    m = config.model
    return m.pretrained is not None and (m.pretrained_for == "all" or rung == 0)


def build_model(config: Config, rung: int, splits: Splits) -> nn.Module:
    """The model of ladder rung `rung`, seeded by (seed, rung), with the configured model noise;
    its backbone from `model.pretrained` when that applies to the rung."""
    torch.manual_seed(config.seed * 1000 + rung)
    name, weights = config.model_for(rung), config.model.pretrained
    extra = {}
    if starts_pretrained(config, rung) and not Path(weights).is_file():
        family = parse_model_spec(name)[0]
        if not (family.startswith("tv_") or family == "timm_model"):
            raise ValueError(f"model.pretrained = {weights!r} is not a file, and {name} takes "
                             "no weights name (torchvision weights names work for tv_* models, "
                             "timm ones for timm_model)")
        extra["pretrained"] = weights  # a torchvision / timm weights name: downloaded when online
    model = create_model(name, num_classes=splits.num_classes, in_chans=splits.channels,
                         drop_rate=config.model.drop_rate,
                         drop_path_rate=config.model.drop_path_rate, **extra)
    if starts_pretrained(config, rung) and not extra:
        load_backbone_weights(model, weights)
    return model


def check_ladder(config: Config, splits: Splits) -> list[int]:
    """Parameter count of each rung; refuse a model that cannot take the images (one dry forward
    pass), a student smaller than its teacher (unless allowed), and, with a warm start, a
    student that cannot start as its teacher (`models.weights.grow`)."""
    sizes, problems, model = [], [], None
    h, w, ch = splits.labeled.images.shape[1:]
    for r in range(config.rounds + 1):
        where = f"model.ladder[{min(r, len(config.model.ladder) - 1)}] = {config.model_for(r)!r}"
        teacher = model
        try:
            model = build_model(config, r, splits)
        except (ValueError, TypeError) as e:
            problems.append(f"{where}: {e}")
            model = None
            continue
        sizes.append(count_params(model))
        if (config.model.student_init == "teacher" and teacher is not None
                and config.model_for(r) != config.model_for(r - 1)):
            try:
                grow(model, teacher.state_dict())
            except ValueError as e:
                problems.append(f"model.student_init = 'teacher' starts round {r - 1}'s student "
                                f"{config.model_for(r)} from its teacher "
                                f"{config.model_for(r - 1)}'s weights, so it must be the same "
                                f"model or a deeper one of its family: {e}")
        if config.model_for(r) in (config.model_for(j) for j in range(r)):
            continue  # already tried
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(2, ch, h, w))
        except RuntimeError as e:
            problems.append(f"{where} cannot take {h}x{w} images with {ch} channels "
                            f"({str(e).splitlines()[0]}); use larger images (data.image_size) "
                            "or a model for small inputs")
    if problems:
        raise ConfigError(problems)
    if not config.model.allow_smaller_student:
        for r in range(1, len(sizes)):
            if sizes[r] < sizes[r - 1]:
                raise ConfigError([
                    f"model.ladder: round {r - 1}'s student {config.model_for(r)} ({sizes[r]:,} "
                    f"params) is smaller than its teacher {config.model_for(r - 1)} "
                    f"({sizes[r - 1]:,} params); Noisy Student needs an equal or larger student "
                    "(set model.allow_smaller_student = true to allow it)"])
    return sizes
