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
from typing import Any, Callable, Literal

from .errors import ConfigError  # noqa: F401 (raised here, importable from here)


def knob(default: Any = dataclasses.MISSING, doc: str = "", *, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its meaning and allowed range: validation (`_ranges`) and the
    configuration reference (`reference_markdown`, docs/configuration.md) both read them."""
    meta = {"doc": doc, "range": (lo, hi, lo_open, hi_open)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    source: Literal["digits", "fashion_mnist", "mnist", "cifar10", "image_folder"] = knob(
        "digits", "where the images come from")
    root: str | None = knob(None, "where the data files are (or go, for downloads)")
    download: bool = knob(True, "download as the last resort when no local copy is found "
                          "(needs the internet)")
    labeled_per_class: int = knob(10, "seeded, class-balanced labeled subset of the training "
                                  "pool; the rest of the pool is unlabeled", lo=1)
    test_fraction: float = knob(0.3, "held out from the pool for sources without an official "
                                "test split (digits)", lo=0, hi=1, lo_open=True, hi_open=True)
    val_per_class: int | None = knob(
        None, "a seeded, class-balanced validation set carved from the training pool (never "
        "from test), disjoint from the other sets; its labels only score models, and every "
        "choice made from a figure is made on it. null: as many per class as "
        "labeled_per_class; 0: none", lo=0)
    unlabeled_limit: int | None = knob(None, "use at most this many unlabeled images (quick "
                                       "runs)", lo=1)
    test_limit: int | None = knob(None, "evaluate on at most this many test images (quick runs)",
                                  lo=1)
    labeled_dir: str | None = knob(None, "image_folder: one sub-folder per class")
    unlabeled_dir: str | None = knob(None, "image_folder: images, any layout")
    unlabeled_list: str | None = knob(
        None, "image_folder, instead of unlabeled_dir: a text file of image paths, one per line "
        "(relative ones to the file's folder; blank lines and # comments skipped)")
    test_dir: str | None = knob(None, "image_folder: one sub-folder per class")
    val_dir: str | None = knob(None, "image_folder: the validation set, one sub-folder per "
                               "class (without it, no validation)")
    image_size: int = knob(32, "image_folder: images are resized to image_size x image_size",
                           lo=8)
    channels: int = knob(3, "image_folder: 1 (grayscale) or 3 (RGB)")
    num_workers: int = knob(0, "DataLoader worker processes making the noised training "
                            "batches", lo=0)
    on_bad_file: Literal["error", "skip"] = knob(
        "error", "image_folder: stop on (or skip) unreadable, truncated, empty, non-image or "
        "oversized files; either way each is named")
    max_image_pixels: int = knob(
        50_000_000, "image_folder (and predict): an image declaring more pixels is a bad file "
        "(a decompression bomb), refused from its header before it is decoded", lo=1)
    lazy_unlabeled: bool = knob(False, "image_folder: decode unlabeled images when used, not "
                                "up front")


@dataclass(frozen=True)
class ModelConfig:
    ladder: list[str] = knob(
        doc="ladder[0] is round 0's teacher (trained on labels only), ladder[k + 1] round k's "
        "student; a shorter ladder repeats its last entry. [\"auto\"]: chosen from the image "
        "size, the labeled images and the device when the run starts (docs/your_images.md)",
        factory=lambda: ["cnn_small", "cnn_small", "cnn_medium"])
    drop_rate: float = knob(0.5, "dropout before the classifier head (model noise)", lo=0, hi=1,
                            hi_open=True)
    drop_path_rate: float = knob(0.2, "stochastic depth at the last block (survival 0.8), "
                                 "linear from 0 at the first", lo=0, hi=1, hi_open=True)
    allow_smaller_student: bool = knob(False, "allow a student with fewer parameters than its "
                                       "teacher")
    teacher_checkpoint: str | None = knob(None, "weights for round 0's teacher instead of "
                                          "training it")
    pretrained: str | None = knob(
        None, "transfer learning: a local .safetensors / torch file loaded into the backbone, "
        "or a torchvision / timm weights name for tv_* / timm_model (downloaded when online)")
    pretrained_for: Literal["teacher", "all"] = knob("teacher", "the models that start from "
                                                     "model.pretrained")
    student_init: Literal["scratch", "teacher"] = knob(
        "scratch", "where each round's student starts: new weights (the paper), or the weights "
        "of the model before it (round 0's teacher, then the last student; a warm start): the "
        "same model, or a deeper one of its family, whose added blocks start as the identity "
        "(Net2DeeperNet)")


@dataclass(frozen=True)
class NoiseConfig:
    enabled: bool = knob(True, "RandAugment, crop and flip on every image a model trains on")
    num_ops: int = knob(2, "RandAugment N", lo=0)
    magnitude: float = knob(9.0, "RandAugment M on the 0..30 scale (docs/noise.md)", lo=0, hi=30)
    flip: bool = knob(False, "horizontal flips: only for classes that are mirror-symmetric")
    crop_padding: int = knob(0, "reflect-pad then random-crop back (pixels)", lo=0)
    mixup: float = knob(0.0, "students: mixup (Zhang et al. 2018) of the pseudo-labeled images "
                        "in each batch, lam ~ Beta(mixup, mixup), the loss mixed alike; 0: off",
                        lo=0)
    backend: Literal["albumentations", "torch"] = knob(
        "albumentations", "albumentations: per image in the DataLoader workers (CPU); torch: per "
        "batch with tensor ops on the training device (docs/noise.md)")


@dataclass(frozen=True)
class PseudoLabelConfig:
    kind: Literal["soft", "hard"] = knob("soft", "store softmax(z / T) (float16) or argmax(z)")
    threshold: float = knob(0.3, "keep images whose teacher confidence is >= threshold", lo=0,
                            hi=1, hi_open=True)
    balance: bool = knob(True, "cap each class at its most confident, duplicate short classes")
    per_class: int | None = knob(None, "balancing target; null: the mean kept count per class",
                                 lo=1)
    top_k: int | None = knob(None, "soft labels: keep the k most probable classes (compact, "
                             "renormalized)", lo=1)
    batch_size: int = knob(1024, "teacher inference batch", lo=1)
    ensemble: int = knob(1, "round k's teacher: the average of the last `ensemble` models "
                         "(round 0's teacher, then each round's student)", lo=1)
    ensemble_average: Literal["probs", "logits"] = knob("probs", "what the ensemble averages "
                                                        "(Hinton et al. 2015)")
    flip_average: bool = knob(False, "the teacher labels each image and its mirror image and "
                              "averages their probabilities (needs noise.flip: mirror-symmetric "
                              "classes)")
    shift_average: int = knob(0, "the teacher also labels each image moved this many pixels "
                              "left, right, up and down (reflect-padded) and averages the "
                              "probabilities of every view (with flip_average, each mirrored "
                              "too); 0: off", lo=0)
    specialists: int = knob(
        0, "a generalist teacher plus specialists (Hinton et al. 2015): k-means on the "
        "covariance of its predictions into this many groups, one specialist per group of 2+ "
        "confusable classes; 0: off", lo=0)
    specialist_epochs: int = knob(20, "epochs a specialist is fine-tuned on the labeled images",
                                  lo=1)


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = knob(0.1, "cross-entropy on labeled images", lo=0, hi=1,
                                  hi_open=True)
    distillation: Literal["soft_ce", "kd", "hard"] = knob(
        "soft_ce", "loss on pseudo-labeled images: soft cross-entropy, kd (Hinton, KL * T^2), "
        "hard (DeiT)")
    temperature: float = knob(1.0, "T of the soft pseudo-labels and of the KD student softmax",
                              lo=0, lo_open=True)
    distill_smoothing: float = knob(0.0, "hard distillation: 1 - eps on the teacher's class, "
                                    "eps over the rest (DeiT)", lo=0, hi=1, hi_open=True)
    labeled_weight: float = knob(1.0, "total = labeled_weight * CE + pseudo_weight * "
                                 "distillation", lo=0)
    pseudo_weight: float = knob(1.0, "see labeled_weight (DeiT hard: 0.5 and 0.5)", lo=0)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adamw"] = knob("sgd", "SGD is nesterov when momentum > 0; no "
                                              "weight decay on biases and norms")
    finetune: Literal["all", "head"] = knob(
        "all", "a model that starts from model.pretrained trains all its weights (the backbone "
        "at lr * backbone_lr_scale) or its head only (backbone weights and BN statistics "
        "frozen)")
    backbone_lr_scale: float = knob(1.0, "discriminative learning rate of a pretrained "
                                    "backbone", lo=0, lo_open=True)
    lr: float = knob(0.1, "peak learning rate", lo=0, lo_open=True)
    momentum: float = knob(0.9, "", lo=0, hi=1, hi_open=True)
    weight_decay: float = knob(5e-4, "", lo=0)
    warmup_fraction: float = knob(0.05, "linear warmup over this share of the steps, then "
                                  "cosine to 0", lo=0, hi=1, hi_open=True)
    batch_size: int = knob(64, "labeled images per step", lo=1)
    unlabeled_ratio: int = knob(3, "pseudo-labeled images per step = ratio * batch_size", lo=1)
    teacher_epochs: int = knob(60, "round 0: passes over the labeled images", lo=0)
    epochs: int = knob(10, "students: passes over the pseudo-labeled images", lo=1)
    teacher_min_steps: int = knob(
        0, "at least this many optimizer steps for round 0's teacher, whatever the size of the "
        "set: its epochs are raised to reach it; 0: off", lo=0)
    min_steps: int = knob(0, "the same for each round's student", lo=0)
    teacher_consistency: bool = knob(
        False, "round 0's teacher also learns from the unlabeled images (FixMatch): its own "
        "un-noised prediction on a weak view (crop and flip) above consistency_threshold is the "
        "target of a strong view (the student noise); unlabeled_ratio * batch_size images per "
        "step, weighted by loss.pseudo_weight")
    consistency_threshold: float = knob(0.95, "see teacher_consistency", lo=0, hi=1,
                                        hi_open=True)
    sanity_gate: bool = knob(True, "stop after round 0's teacher when it is near chance or its "
                             "pseudo-labels cover few classes (--force goes past it once)")
    ema_decay: float = knob(0.0, "0: off; else the EMA weights are evaluated and teach the next "
                            "round", lo=0, hi=1, hi_open=True)
    grad_clip: float = knob(0.0, "max global gradient norm; 0: off", lo=0)
    max_skipped_steps: int = knob(0, "steps with a non-finite loss or gradient skipped before "
                                  "training stops", lo=0)
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "auto: CUDA when there is one")
    amp: bool = knob(True, "bf16 autocast on CUDA (on a CPU only with amp_cpu)")
    amp_cpu: bool = knob(False, "bf16 autocast on a CPU too: about twice the steps per second "
                         "where the CPU has AMX bf16 units (Intel Xeon 4th generation and later), "
                         "slower where it has no bf16 instructions; needs amp")
    channels_last: bool = knob(True, "channels_last memory format (any device)")
    compile: bool = knob(False, "torch.compile the training forward (checkpoints stay "
                         "uncompiled)")
    sync_batchnorm: bool = knob(False, "under torchrun: batch-norm statistics over the global "
                                "batch (CUDA)")
    eval_batch_size: int = knob(1024, "inference batch", lo=1)
    log_every: int = knob(50, "steps between metrics.jsonl step lines", lo=1)

    def bf16(self, device_type: str) -> bool:
        """Whether training and inference on a device of this type run under bf16 autocast."""
        return self.amp and (device_type == "cuda" or self.amp_cpu)


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = knob(0, "training-state checkpoints (weights, EMA, optimizer, schedule, "
                            "RNG, data position) besides every epoch end; 0: off", lo=0)
    every_minutes: float = knob(10.0, "the same, by the clock; 0: off", lo=0)
    keep: int = knob(2, "newest checkpoints kept while a phase trains; its final one stays "
                     "after", lo=1)


@dataclass(frozen=True)
class TrackingConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = knob(
        "auto", "Weights & Biases, one wandb run per phase in one group; auto: online when "
        "logged in, offline otherwise; WANDB_MODE wins. metrics.jsonl holds the same metrics "
        "whatever is chosen")
    project: str = knob("noisy-student", "wandb project")
    entity: str | None = knob(None, "wandb entity")
    run_name: str | None = knob(None, "runs are named <run_name>/round-<k>; default: the name")
    tags: list[str] = knob(doc="wandb tags", factory=list)
    upload_checkpoints: bool = knob(False, "each round's student weights and pseudo-labels as a "
                                    "wandb artifact")
    samples_per_class: int = knob(2, "pseudo-label table: the most and the least confident, "
                                  "per class", lo=0)
    init_timeout: float = knob(60.0, "seconds wandb.init may take before tracking is given up",
                               lo=0, lo_open=True)


@dataclass(frozen=True)
class Config:
    name: str = knob("run", "experiment name")
    seed: int = knob(0, "seed of the splits, initialization, noise and data order")
    rounds: int = knob(3, "Noisy Student rounds", lo=1)
    out: str = knob("runs/{name}", "run directory; {name} is replaced by the name")
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
        """A config.json; every problem is prefixed with the file's name."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise ConfigError([f"{path}: cannot read it ({e.strerror or e})"]) from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError([f"{path}: damaged, not JSON ({e})"]) from e
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError([f"{path}: {p}" for p in e.problems]) from None

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


def _ranges(obj: Any, prefix: str = "") -> list[str]:
    """Every field outside the range declared with it (`knob`), in the whole tree."""
    p: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            p.extend(_ranges(value, f"{prefix}{f.name}."))
        elif "range" in f.metadata and isinstance(value, (int, float)):
            _range(p, prefix + f.name, value, *f.metadata["range"])
    return p


def _check(c: Config) -> list[str]:
    """Types, declared ranges and cross-field rules; returns every problem found."""
    return _types(c) or [*_ranges(c), *_data_model_rules(c), *_training_rules(c)]


def _data_model_rules(c: Config) -> list[str]:
    p, d, m = [], c.data, c.model
    if not c.name or "/" in c.name:
        p.append(f"name = {c.name!r}: must be a non-empty name without '/'")
    if d.channels not in (1, 3):
        p.append(f"data.channels = {d.channels!r}: allowed 1 or 3")
    if d.source == "image_folder":
        p += [f"data.{key} is required when data.source = 'image_folder'"
              for key in ("labeled_dir", "test_dir") if not getattr(d, key)]
        if bool(d.unlabeled_dir) == bool(d.unlabeled_list):
            p.append("data.source = 'image_folder' takes one of data.unlabeled_dir (a folder) "
                     "and data.unlabeled_list (a file of image paths)"
                     + (", not both" if d.unlabeled_dir else ""))
    if not m.ladder:
        p.append("model.ladder is empty: name at least the round 0 teacher, e.g. ['cnn_small']")
    elif "auto" in m.ladder and m.ladder != ["auto"]:
        p.append(f"model.ladder = {m.ladder!r}: 'auto' stands alone, as ['auto'] (the whole "
                 "ladder chosen for the data and device), or name every rung")
    if c.train.teacher_epochs == 0 and not m.teacher_checkpoint:
        p.append("train.teacher_epochs = 0 needs model.teacher_checkpoint (round 0's teacher)")
    if not m.pretrained and (c.train.finetune != "all" or c.train.backbone_lr_scale != 1.0):
        p.append("train.finetune and train.backbone_lr_scale apply to pretrained weights: set "
                 "model.pretrained (a weights file, or a torchvision / timm weights name)")
    if not c.tracking.project:
        p.append("tracking.project is empty")
    return p


def _training_rules(c: Config) -> list[str]:
    p, pl, lo = [], c.pseudo_label, c.loss
    if pl.top_k is not None and pl.kind != "soft":
        p.append("pseudo_label.top_k needs pseudo_label.kind = 'soft' (hard labels are one class)")
    if pl.specialists and pl.ensemble > 1:
        p.append("pseudo_label.specialists needs one generalist teacher: set "
                 "pseudo_label.ensemble = 1")
    if c.train.amp_cpu and not c.train.amp:
        p.append("train.amp_cpu turns on bf16 autocast on a CPU as train.amp does on CUDA: it "
                 "needs train.amp = true")
    if pl.flip_average and not c.noise.flip:
        p.append("pseudo_label.flip_average shows the teacher mirror images: it needs "
                 "noise.flip = true (classes that are mirror-symmetric)")
    if lo.distill_smoothing and lo.distillation != "hard":
        p.append("loss.distill_smoothing smooths hard distillation targets: it needs "
                 "loss.distillation = 'hard'")
    if lo.labeled_weight == 0 and lo.pseudo_weight == 0:
        p.append("loss.labeled_weight and loss.pseudo_weight are both 0: nothing would be learned")
    if pl.kind == "hard" and lo.distillation != "hard":
        p.append(f"loss.distillation = {lo.distillation!r} needs soft pseudo-labels: set "
                 "pseudo_label.kind = 'soft', or loss.distillation = 'hard'")
    if c.train.sync_batchnorm and c.train.device == "cpu":
        p.append("train.sync_batchnorm = true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                 "kernels); set train.device to 'cuda' or 'auto', or turn it off")
    return p


# ---- the configuration reference -----------------------------------------------------------

def _span(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is None and hi is None:
        return ""
    left, right = "(" if lo_open or lo is None else "[", ")" if hi_open or hi is None else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


REFERENCE_INTRO = """# Configuration reference

Generated from `noisy_student/config.py`, where each key is declared with its meaning and its
allowed range (`python tools/make_docs.py` writes it again; a test fails when the two drift
apart).

`--set section.key=value` takes JSON values (`2`, `0.5`, `true`, `null`, `["a","b"]`); anything
that is not JSON is taken as text. Values are never evaluated as code. Unknown keys, wrong types
and out-of-range values are refused with one message listing every problem, with a "did you
mean" suggestion for misspelt keys. Precedence, lowest first: the recipe's config, `--config
FILE`, `--set`, then `--rounds`, `--out`, `--name`, `--seed`.

"""


def configuration_doc() -> str:
    """The whole of docs/configuration.md."""
    return REFERENCE_INTRO + reference_markdown()


def reference_markdown() -> str:
    """docs/configuration.md's tables, one per section, from the fields' declared meaning and
    range (a test keeps the file the same as this)."""
    out, defaults = [], Config().to_dict()
    hints = typing.get_type_hints(Config)
    sections = [("", Config)] + [(f.name, hints[f.name]) for f in dataclasses.fields(Config)
                                 if dataclasses.is_dataclass(hints[f.name])]
    for section, cls in sections:
        values = defaults[section] if section else defaults
        out += [f"### {section or 'top level'}", "", "| key | default | allowed | meaning |",
                "|---|---|---|---|"]
        types_of = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(types_of[f.name]):
                continue
            hint, span = types_of[f.name], _span(*f.metadata["range"])
            nullable = type(None) in typing.get_args(hint)
            allowed = (("null or " if nullable else "") + span) if span else _describe(hint)
            key = f"{section}.{f.name}" if section else f.name
            default = json.dumps(values[f.name])
            out.append(f"| `{key}` | `{default}` | {allowed.replace('|', '/')} | "
                       f"{f.metadata['doc']} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


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
