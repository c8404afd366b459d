"""One typed, validated configuration for a whole Noisy Student run.

A `Config` is a tree of frozen dataclasses. It is built in Python by a recipe, loaded from JSON,
or changed from the command line with `--set section.key=value` (values are parsed as JSON, never
evaluated). Every way in goes through `Config.from_dict`, which refuses unknown keys (with a
"did you mean" suggestion), wrong types and out-of-range values, listing all problems at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration was refused; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class DataConfig:
    source: Literal["digits", "fashion_mnist", "mnist", "cifar10", "image_folder"] = "digits"
    root: str | None = None  # where the data files are (or go, for downloads)
    download: bool = True  # last resort when no local copy is found (needs the internet)
    labeled_per_class: int = 10  # seeded, class-balanced labeled subset of the training pool
    test_fraction: float = 0.3  # held out from the pool for sources without an official test split
    # a seeded, class-balanced validation set carved from the training pool (never from test),
    # disjoint from the labeled, unlabeled and test images; its labels only score models, and
    # every choice made from a figure is made on it. None: as many per class as
    # labeled_per_class (a budget a user with that many labels could afford); 0: none
    val_per_class: int | None = None
    unlabeled_limit: int | None = None  # use at most this many unlabeled images (quick runs)
    test_limit: int | None = None  # evaluate on at most this many test images (quick runs)
    labeled_dir: str | None = None  # image_folder: one sub-folder per class
    unlabeled_dir: str | None = None  # image_folder: images, any layout
    # image_folder, instead of unlabeled_dir: a text file of image paths, one per line (relative
    # ones are relative to the file's folder; blank lines and lines starting with # are skipped)
    unlabeled_list: str | None = None
    test_dir: str | None = None  # image_folder: one sub-folder per class
    val_dir: str | None = None  # image_folder: the validation set, one sub-folder per class
    image_size: int = 32  # image_folder: images are resized to image_size x image_size
    channels: int = 3  # image_folder: 1 (grayscale) or 3 (RGB)
    num_workers: int = 0  # DataLoader workers for the noised training streams
    on_bad_file: Literal["error", "skip"] = "error"  # image_folder: stop on (or skip) unreadable,
    # truncated, empty or non-image files; either way each is named
    lazy_unlabeled: bool = False  # image_folder: decode unlabeled images when used, not up front


@dataclass(frozen=True)
class ModelConfig:
    # ladder[0] is round 0's teacher (trained on labels only); ladder[k + 1] is round k's student.
    # A ladder shorter than rounds + 1 repeats its last entry. ["auto"]: chosen from the image
    # size, the number of labeled images and the device when the run starts (presets.py), and
    # saved as chosen in the run's config.json
    ladder: list[str] = field(default_factory=lambda: ["cnn_small", "cnn_small", "cnn_medium"])
    drop_rate: float = 0.5  # dropout before the classifier head (model noise)
    drop_path_rate: float = 0.2  # stochastic depth at the last block: survival 0.8, linear decay
    allow_smaller_student: bool = False
    teacher_checkpoint: str | None = None  # load round 0's teacher instead of training it
    # transfer learning: start from pretrained weights (a local .safetensors / torch file loaded
    # into the backbone, or a torchvision / timm weights name for tv_* / timm_model, downloaded
    # when online)
    pretrained: str | None = None
    pretrained_for: Literal["teacher", "all"] = "teacher"  # round 0's teacher, or every model


@dataclass(frozen=True)
class NoiseConfig:
    enabled: bool = True  # RandAugment + crop + flip on every image the student trains on
    num_ops: int = 2  # RandAugment N
    magnitude: float = 9.0  # RandAugment M on the 0..30 scale (see noisy_student.noise)
    flip: bool = False  # horizontal flips: only for classes that are mirror-symmetric
    crop_padding: int = 0  # reflect-pad then random-crop back (pixels)
    # "albumentations": per image in the DataLoader workers (CPU); "torch": per batch with tensor
    # ops on the training device (the GPU when there is one; noisy_student.noise_batch)
    backend: Literal["albumentations", "torch"] = "albumentations"


@dataclass(frozen=True)
class PseudoLabelConfig:
    kind: Literal["soft", "hard"] = "soft"  # store softmax(z / T) or argmax(z)
    threshold: float = 0.3  # keep images whose teacher confidence is >= threshold
    balance: bool = True  # cap each class at its most confident, duplicate short classes
    per_class: int | None = None  # balancing target; None: the mean kept count per class
    top_k: int | None = None  # soft labels: keep the k most probable classes (compact storage)
    batch_size: int = 1024
    # round k's teacher: the average of the last `ensemble` models (round 0's teacher, then each
    # round's student), averaging probabilities or logits (Hinton et al. 2015)
    ensemble: int = 1
    ensemble_average: Literal["probs", "logits"] = "probs"
    # a generalist teacher plus specialists (Hinton et al. 2015): k-means on the covariance of
    # its predictions into this many groups; each group of 2+ confusable classes gets a
    # specialist (the teacher fine-tuned on the labeled images for specialist_epochs); 0: off
    specialists: int = 0
    specialist_epochs: int = 20


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.1  # CE on labeled images
    distillation: Literal["soft_ce", "kd", "hard"] = "soft_ce"  # loss on pseudo-labeled images
    temperature: float = 1.0  # T of the soft pseudo-labels and of the KD student softmax
    # distillation = "hard": smooth the teacher's argmax (DeiT: 1 - eps on it, eps over the rest)
    distill_smoothing: float = 0.0
    labeled_weight: float = 1.0
    pseudo_weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adamw"] = "sgd"  # SGD is nesterov when momentum > 0
    # a model that starts from model.pretrained trains "all" its weights, the backbone at
    # lr * backbone_lr_scale (discriminative learning rates), or its "head" only (the backbone's
    # weights and batch-norm statistics frozen)
    finetune: Literal["all", "head"] = "all"
    backbone_lr_scale: float = 1.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05  # linear warmup over this share of the steps, then cosine
    batch_size: int = 64  # labeled images per step
    unlabeled_ratio: int = 3  # pseudo-labeled images per step = ratio * batch_size
    teacher_epochs: int = 60  # round 0: passes over the labeled images
    epochs: int = 10  # students: passes over the pseudo-labeled images
    # at least this many optimizer steps per phase, whatever the size of the set: the epochs are
    # raised to reach it (a 200-image labeled folder is 4 steps an epoch at batch 64); 0: off
    teacher_min_steps: int = 0
    min_steps: int = 0  # the same for each round's student
    # stop after round 0's teacher when it is near chance or its pseudo-labels cover few
    # classes (noisy_student.sanity); --force goes past it for one command
    sanity_gate: bool = True
    ema_decay: float = 0.0  # 0: off; else the EMA weights are evaluated and teach the next round
    grad_clip: float = 0.0  # max global grad norm; 0: off
    max_skipped_steps: int = 0  # steps with a non-finite loss or gradient skipped before stopping
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast (CUDA only; float32 on CPU)
    channels_last: bool = True  # channels_last memory format (any device)
    compile: bool = False  # torch.compile the training forward (checkpoints stay uncompiled)
    sync_batchnorm: bool = False  # under torchrun: batch-norm statistics over the global batch
    eval_batch_size: int = 1024
    log_every: int = 50  # steps between metrics.jsonl step lines


@dataclass(frozen=True)
class CheckpointConfig:
    # Training-state checkpoints (weights, EMA, optimizer, schedule, RNG, data position) are
    # written at the end of every epoch and also every `every_steps` steps / `every_minutes`.
    every_steps: int = 0  # 0: off
    every_minutes: float = 10.0  # 0: off
    keep: int = 2  # newest checkpoints kept while a phase trains; its final one is kept after


@dataclass(frozen=True)
class TrackingConfig:
    # Weights & Biases: one wandb run per phase (round 0's teacher, each round) in one group.
    # metrics.jsonl in the run directory holds the same metrics whatever is chosen here.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online when logged
    # in, offline otherwise; the WANDB_MODE environment variable wins over this
    project: str = "noisy-student"
    entity: str | None = None
    run_name: str | None = None  # runs are named <run_name>/round-<k>; default: the name
    tags: list[str] = field(default_factory=list)
    upload_checkpoints: bool = False  # each round's student weights + pseudo-labels as artifact
    samples_per_class: int = 2  # pseudo-label table: the most and the least confident, per class
    init_timeout: float = 60.0  # seconds wandb.init may take before tracking is given up


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    rounds: int = 3
    out: str = "runs/{name}"  # run directory; {name} is replaced by the name
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise ConfigError(problems)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build and validate a Config from plain data; unknown keys and bad types are refused."""
        return _build(cls, data, [])

    @classmethod
    def load(cls, path: str | Path) -> Config:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: list[str]) -> Config:
        """Apply `section.key=value` strings; values are JSON (`2`, `true`, `["a"]`) or text."""
        data = self.to_dict()
        problems: list[str] = []
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. loss.temperature=2")
                continue
            _assign(data, key.strip(), _parse_value(raw.strip()), problems)
        return _build(Config, data, problems)

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none), naming what an artifact was made with."""
        data = self.to_dict()
        picked = {s: data[s] for s in sections} if sections else data
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def out_dir(self) -> Path:
        return Path(self.out.replace("{name}", self.name))

    def model_for(self, role: int) -> str:
        """Model name of ladder rung `role` (0: round 0's teacher, k + 1: round k's student)."""
        ladder = self.model.ladder
        return ladder[min(role, len(ladder) - 1)]


# ---- validation -----------------------------------------------------------------------------

def _range(problems: list[str], key: str, value: float | None, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> None:
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi is None else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        problems.append(f"{key} = {value!r} is out of range: allowed {span}")


def _types(obj: Any, prefix: str = "") -> list[str]:
    """Type problems of an already built dataclass tree (a recipe may pass anything)."""
    p: list[str] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if isinstance(value, hint):
                p.extend(_types(value, f"{prefix}{f.name}."))
            else:
                p.append(f"{prefix}{f.name}: expected a {hint.__name__}, got {type(value).__name__}")
        elif not _coerce(value, hint)[0]:
            p.append(f"{prefix}{f.name} = {value!r}: expected {_describe(hint)}")
    return p


def _check(c: Config) -> list[str]:
    """Types, ranges and cross-field rules; returns every problem found."""
    p = _types(c)
    if p:
        return p
    if not c.name or "/" in c.name:
        p.append(f"name = {c.name!r}: must be a non-empty name without '/'")
    _range(p, "rounds", c.rounds, 1)
    d = c.data
    _range(p, "data.labeled_per_class", d.labeled_per_class, 1)
    _range(p, "data.test_fraction", d.test_fraction, 0, 1, lo_open=True, hi_open=True)
    _range(p, "data.unlabeled_limit", d.unlabeled_limit, 1)
    _range(p, "data.test_limit", d.test_limit, 1)
    _range(p, "data.val_per_class", d.val_per_class, 0)
    _range(p, "data.image_size", d.image_size, 8)
    _range(p, "data.num_workers", d.num_workers, 0)
    if d.channels not in (1, 3):
        p.append(f"data.channels = {d.channels!r}: allowed 1 or 3")
    if d.source == "image_folder":
        for key in ("labeled_dir", "test_dir"):
            if not getattr(d, key):
                p.append(f"data.{key} is required when data.source = 'image_folder'")
        if bool(d.unlabeled_dir) == bool(d.unlabeled_list):
            p.append("data.source = 'image_folder' takes one of data.unlabeled_dir (a folder) "
                     "and data.unlabeled_list (a file of image paths)"
                     + (", not both" if d.unlabeled_dir else ""))
    m = c.model
    if not m.ladder:
        p.append("model.ladder is empty: name at least the round 0 teacher, e.g. ['cnn_small']")
    elif "auto" in m.ladder and m.ladder != ["auto"]:
        p.append(f"model.ladder = {m.ladder!r}: 'auto' stands alone, as ['auto'] (the whole "
                 "ladder chosen for the data and device), or name every rung")
    _range(p, "model.drop_rate", m.drop_rate, 0, 1, hi_open=True)
    _range(p, "model.drop_path_rate", m.drop_path_rate, 0, 1, hi_open=True)
    n = c.noise
    _range(p, "noise.num_ops", n.num_ops, 0)
    _range(p, "noise.magnitude", n.magnitude, 0, 30)
    _range(p, "noise.crop_padding", n.crop_padding, 0)
    pl = c.pseudo_label
    _range(p, "pseudo_label.threshold", pl.threshold, 0, 1, hi_open=True)
    _range(p, "pseudo_label.per_class", pl.per_class, 1)
    _range(p, "pseudo_label.top_k", pl.top_k, 1)
    if pl.top_k is not None and pl.kind != "soft":
        p.append("pseudo_label.top_k needs pseudo_label.kind = 'soft' (hard labels are one class)")
    _range(p, "pseudo_label.batch_size", pl.batch_size, 1)
    _range(p, "pseudo_label.ensemble", pl.ensemble, 1)
    _range(p, "pseudo_label.specialists", pl.specialists, 0)
    _range(p, "pseudo_label.specialist_epochs", pl.specialist_epochs, 1)
    if pl.specialists and pl.ensemble > 1:
        p.append("pseudo_label.specialists needs one generalist teacher: set "
                 "pseudo_label.ensemble = 1")
    lo = c.loss
    _range(p, "loss.label_smoothing", lo.label_smoothing, 0, 1, hi_open=True)
    _range(p, "loss.temperature", lo.temperature, 0, lo_open=True)
    _range(p, "loss.distill_smoothing", lo.distill_smoothing, 0, 1, hi_open=True)
    if lo.distill_smoothing and lo.distillation != "hard":
        p.append("loss.distill_smoothing smooths hard distillation targets: it needs "
                 "loss.distillation = 'hard'")
    _range(p, "loss.labeled_weight", lo.labeled_weight, 0)
    _range(p, "loss.pseudo_weight", lo.pseudo_weight, 0)
    if lo.labeled_weight == 0 and lo.pseudo_weight == 0:
        p.append("loss.labeled_weight and loss.pseudo_weight are both 0: nothing would be learned")
    if pl.kind == "hard" and lo.distillation != "hard":
        p.append(f"loss.distillation = {lo.distillation!r} needs soft pseudo-labels: set "
                 "pseudo_label.kind = 'soft', or loss.distillation = 'hard'")
    t = c.train
    _range(p, "train.lr", t.lr, 0, lo_open=True)
    _range(p, "train.momentum", t.momentum, 0, 1, hi_open=True)
    _range(p, "train.weight_decay", t.weight_decay, 0)
    _range(p, "train.warmup_fraction", t.warmup_fraction, 0, 1, hi_open=True)
    _range(p, "train.batch_size", t.batch_size, 1)
    _range(p, "train.unlabeled_ratio", t.unlabeled_ratio, 1)
    _range(p, "train.teacher_epochs", t.teacher_epochs, 0)
    _range(p, "train.epochs", t.epochs, 1)
    _range(p, "train.teacher_min_steps", t.teacher_min_steps, 0)
    _range(p, "train.min_steps", t.min_steps, 0)
    _range(p, "train.ema_decay", t.ema_decay, 0, 1, hi_open=True)
    _range(p, "train.grad_clip", t.grad_clip, 0)
    _range(p, "train.max_skipped_steps", t.max_skipped_steps, 0)
    if t.sync_batchnorm and t.device == "cpu":
        p.append("train.sync_batchnorm = true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                 "kernels); set train.device to 'cuda' or 'auto', or turn it off")
    _range(p, "train.eval_batch_size", t.eval_batch_size, 1)
    _range(p, "train.log_every", t.log_every, 1)
    _range(p, "checkpoint.every_steps", c.checkpoint.every_steps, 0)
    _range(p, "checkpoint.every_minutes", c.checkpoint.every_minutes, 0)
    _range(p, "checkpoint.keep", c.checkpoint.keep, 1)
    _range(p, "tracking.samples_per_class", c.tracking.samples_per_class, 0)
    _range(p, "tracking.init_timeout", c.tracking.init_timeout, 0, lo_open=True)
    if not c.tracking.project:
        p.append("tracking.project is empty")
    if t.teacher_epochs == 0 and not m.teacher_checkpoint:
        p.append("train.teacher_epochs = 0 needs model.teacher_checkpoint (round 0's teacher)")
    _range(p, "train.backbone_lr_scale", t.backbone_lr_scale, 0, lo_open=True)
    if not m.pretrained and (t.finetune != "all" or t.backbone_lr_scale != 1.0):
        p.append("train.finetune and train.backbone_lr_scale apply to pretrained weights: set "
                 "model.pretrained (a weights file, or a torchvision / timm weights name)")
    return p


# ---- parsing plain data into the dataclass tree ---------------------------------------------

def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; allowed: {', '.join(allowed)}"


def _build(cls: type[Config], data: Any, problems: list[str]) -> Config:
    """Parse, then range-check what parsed (bad fields fall back to defaults), reporting all."""
    kwargs = _parse(cls, data, "", problems)
    try:
        config = cls(**kwargs)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return config


def _parse(cls: type, data: Any, prefix: str, problems: list[str]) -> dict[str, Any]:
    """Check `data` against dataclass `cls`; returns constructor kwargs (nested dataclasses built)."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"unknown key {prefix}{key!s}{_suggest(str(key), names)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = hint(**_parse(hint, value, f"{prefix}{key}.", problems))
            continue
        ok, coerced = _coerce(value, hint)
        if ok:
            kwargs[key] = coerced
        else:
            problems.append(f"{prefix}{key} = {value!r}: expected {_describe(hint)}")
    return kwargs


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return value in args, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = [_coerce(v, args[0]) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _parse_value(raw: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists), else the raw text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _assign(data: dict[str, Any], dotted: str, value: Any, problems: list[str]) -> None:
    node: Any = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            allowed = sorted(node) if isinstance(node, dict) else []
            problems.append(f"unknown key {'.'.join(parts[:i + 1])}{_suggest(part, allowed)}")
            return
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
