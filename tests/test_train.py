"""Training pieces: schedule, data order, EMA, optimizer groups, non-finite loss."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from noisy_student.config import LossConfig, TrainConfig
from noisy_student.data import NoisedDataset
from noisy_student.losses import build_student_loss
from noisy_student.optim import build_optimizer, lr_factor
from noisy_student.train import StreamSampler, TrainData, TrainHooks, TrainingError, train_model


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)


def test_stream_sampler_passes_are_permutations_and_seeded():
    it = iter(StreamSampler(7, seed=3))
    keys = [next(it) for _ in range(21)]
    for p in range(3):
        assert sorted(i for q, i in keys if q == p) == list(range(7))
    again = iter(StreamSampler(7, seed=3))
    assert [next(again) for _ in range(21)] == keys
    other = iter(StreamSampler(7, seed=4))
    assert [next(other) for _ in range(21)] != keys


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.ndim for p in decayed["params"]] == [4]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3
    assert opt.param_groups[0]["nesterov"] is True


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(x.flatten(1))


def _data(n=24):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    return NoisedDataset(images, np.arange(n) % 3, None, [0.5], [0.25], seed=0)


def _train(cfg, model=None, pseudo=None):
    torch.manual_seed(0)
    model = model or _Linear()
    loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=pseudo is not None)
    return train_model(model, loss, cfg, torch.device("cpu"), TrainData(_data(), pseudo, epochs=2),
                       TrainHooks("t"))


def test_no_weight_decay_on_vit_tokens_and_position_embedding():
    """DeiT trains its class and distillation tokens and position embedding without decay."""
    from noisy_student.models import create_model

    model = create_model("deit_tiny_distilled(patch_size=2)", num_classes=3, in_chans=1)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert {"cls_token", "dist_token", "pos_embed"} <= plain
    assert not {"cls_token", "dist_token", "pos_embed"} & decayed
    # every other parameter of two or more dimensions keeps its decay: a 4-D patch conv, 2-D
    # linear layers, and nothing else
    assert decayed and all(model.get_parameter(n).ndim > 1 for n in decayed)
    assert {n for n, p in model.named_parameters() if p.ndim > 1} - decayed == {
        "cls_token", "dist_token", "pos_embed"}


def test_training_is_reproducible_and_ema_is_what_comes_back():
    cfg = TrainConfig(batch_size=8, lr=0.1, device="cpu")
    a, b = _train(cfg), _train(cfg)
    assert torch.equal(a.model.head.weight, b.model.head.weight)
    assert a.steps == 2 * 3 and len(a.history) == 2
    raw = _Linear()
    ema = _train(TrainConfig(batch_size=8, lr=0.1, device="cpu", ema_decay=0.9), model=raw)
    assert ema.model is not raw  # the averaged copy teaches the next round
    assert not torch.equal(ema.model.head.weight, raw.head.weight)


def test_amp_cpu_runs_the_forward_in_bf16_on_a_cpu_and_amp_alone_does_not():
    seen = []

    class _Spy(_Linear):
        def forward(self, x):
            out = super().forward(x)
            seen.append(out.dtype)
            return out

    _train(TrainConfig(batch_size=8, device="cpu", amp=True), model=_Spy())
    assert set(seen) == {torch.float32}  # train.amp is CUDA's alone
    seen.clear()
    result = _train(TrainConfig(batch_size=8, device="cpu", amp=True, amp_cpu=True), model=_Spy())
    assert set(seen) == {torch.bfloat16} and len(seen) == result.steps
    assert result.model.head.weight.dtype == torch.float32  # autocast: the weights stay float32
    assert [TrainConfig(amp=a, amp_cpu=c).bf16(d) for a, c, d in [
        (True, False, "cpu"), (True, True, "cpu"), (True, False, "cuda"), (False, False, "cuda")]
    ] == [False, True, True, False]


def test_pseudo_batches_use_the_ratio_and_log_every_part():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 4, 4, 1), dtype=np.uint8)
    soft = rng.dirichlet(np.ones(3), size=30).astype(np.float16)
    pseudo = NoisedDataset(images, soft, None, [0.5], [0.25], seed=1)
    result = _train(TrainConfig(batch_size=4, unlabeled_ratio=2, device="cpu"), pseudo=pseudo)
    assert result.steps == 2 * math.ceil(30 / 8)
    assert {"labeled_ce", "pseudo_soft_ce", "total"} <= set(result.history[0])


def test_non_finite_loss_stops_with_the_step():
    class _NaN(_Linear):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(TrainingError, match="at step 0"):
        _train(TrainConfig(batch_size=8, device="cpu"), model=_NaN())


def test_labeled_train_accuracy_counts_every_labeled_image_of_the_epoch():
    class _AlwaysZero(_Linear):
        def forward(self, x):
            return super().forward(x) * 0 + torch.tensor([10.0, 0.0, 0.0])

    # 3 steps of 8 = one pass over the 24 labels (0, 1, 2 repeated): exactly a third are class 0
    result = _train(TrainConfig(batch_size=8, device="cpu"), model=_AlwaysZero())
    assert [h["labeled_train_accuracy"] for h in result.history] == [1 / 3, 1 / 3]


class _NaNAt(_Linear):
    """Emits NaN logits at the given forward calls (0-based), normal ones otherwise."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = set(bad), 0

    def forward(self, x):
        out = super().forward(x)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.bad else out


def test_non_finite_steps_are_skipped_up_to_the_limit_then_stop():
    cfg = TrainConfig(batch_size=8, device="cpu", max_skipped_steps=1)
    model = _NaNAt({2})
    result = _train(cfg, model=model)  # one bad step: skipped, training goes on
    assert [h["skipped_steps"] for h in result.history] == [1, 0]
    assert all(math.isfinite(h["total"]) for h in result.history)
    with pytest.raises(TrainingError, match=r"the loss is nan at step 4 .*2 non-finite steps"
                                            r".*last good checkpoint is none yet"):
        _train(cfg, model=_NaNAt({2, 4}))


def test_non_finite_gradients_are_caught_too():
    class _Explode(torch.autograd.Function):  # identity forward, infinite backward
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    class _InfGrad(_Linear):
        def forward(self, x):
            return _Explode.apply(super().forward(x))  # a finite loss, non-finite gradients

    with pytest.raises(TrainingError, match="the gradient norm is (inf|nan) at step 0"):
        _train(TrainConfig(batch_size=8, device="cpu"), model=_InfGrad())


class _Events:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.events = []

    def log(self, kind, **fields):
        self.events.append((kind, fields))


def test_reading_step_outcomes_once_per_log_line_trains_as_reading_every_step(monkeypatch):
    """With a fused optimizer (CUDA's default) a step's outcome stays on the device and is read
    once per log line: the GPU is never waited for in between. A non-finite step is skipped on
    the device (found_inf); the weights, the epoch records, the skip events and the step lines
    are those of the plain path, which reads (waits) after every step."""
    import functools

    import noisy_student.train as train

    def run(fused):
        monkeypatch.setattr(train, "build_optimizer",
                            functools.partial(build_optimizer, fused=fused))
        torch.manual_seed(0)
        model, events = _NaNAt({2, 4}), _Events()
        cfg = TrainConfig(batch_size=8, device="cpu", max_skipped_steps=2, log_every=2)
        loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=False)
        result = train_model(model, loss, cfg, torch.device("cpu"),
                             TrainData(_data(), None, epochs=2), TrainHooks("t", events))
        return result, events.events, model.head.weight.detach().clone()

    (plain, plain_events, w_plain), (deferred, events, w) = run(None), run(True)
    assert [h["skipped_steps"] for h in deferred.history] == [1, 1]  # steps 2 and 4
    assert [(k, f["step"]) for k, f in events] == [(k, f["step"]) for k, f in plain_events]
    assert [k for k, _ in events].count("skipped_step") == 2
    assert torch.allclose(w, w_plain, atol=1e-6)  # fused and foreach kernels round alike here
    for ours, theirs in zip(deferred.history, plain.history, strict=True):
        assert ours["total"] == pytest.approx(theirs["total"], rel=1e-5)
        assert ours["labeled_train_accuracy"] == theirs["labeled_train_accuracy"]
    with pytest.raises(TrainingError, match=r"the loss is nan at step 4 .*2 non-finite steps"):
        monkeypatch.setattr(train, "build_optimizer",
                            functools.partial(build_optimizer, fused=True))
        _train(TrainConfig(batch_size=8, device="cpu", max_skipped_steps=1, log_every=50),
               model=_NaNAt({2, 4}))  # read at the epoch's end: still named by its step


@pytest.mark.parametrize("distillation", ["hard", "kd"])
def test_deferred_steps_read_nothing_from_the_device_between_log_lines(monkeypatch,
                                                                        distillation):
    """The GPU path's steps (a student, its noise made per batch on the device, stochastic
    depth and dropout, a fused optimizer) ask the device for no value between log lines: every
    `.item()`, `bool()`, `float()` and data-dependent shape (what waits for a GPU) is counted
    by a dispatch mode, here on the CPU. The only reads are the first step's (the optimizer has
    no momentum yet) and the pending records', at every `log_every`-th step and epoch end."""
    import functools

    from torch.utils._python_dispatch import TorchDispatchMode

    import noisy_student.train as train
    from noisy_student.models import create_model
    from noisy_student.noise_batch import BatchNoise

    waits = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}

    def waits_for_the_device(func, args):  # a value read, or a shape made from values
        name = func.__name__.split(".")[0]
        return name in waits or (name in ("index", "index_put", "index_put_") and any(
            i is not None and i.dtype == torch.bool for i in args[1]))  # a boolean mask

    outside, read_at = [], []  # (step, op) of a read in a step; steps at which records are read

    class Reads(TorchDispatchMode):
        def __init__(self, trainer):
            super().__init__()
            self.trainer = trainer

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if waits_for_the_device(func, args) and not self.trainer.reading:
                outside.append((self.trainer.state.step, func.__name__))
            return func(*args, **(kwargs or {}))

    epoch, read_steps = train.Trainer._epoch, train.Trainer._read_steps

    def counted_epoch(self, k):
        with Reads(self):
            epoch(self, k)

    def counted_read_steps(self):
        self.reading = True
        read_at.extend([self.state.step] if self.pending else [])
        read_steps(self)
        self.reading = False

    monkeypatch.setattr(train.Trainer, "_epoch", counted_epoch)
    monkeypatch.setattr(train.Trainer, "_read_steps", counted_read_steps)
    monkeypatch.setattr(train.Trainer, "reading", False, raising=False)
    monkeypatch.setattr(train, "build_optimizer", functools.partial(build_optimizer, fused=True))
    rng, n = np.random.default_rng(0), 40
    images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    classes = np.arange(n) % 3
    targets = classes if distillation == "hard" else np.eye(3, dtype=np.float32)[classes]
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=3, in_chans=1, drop_rate=0.5,
                         drop_path_rate=0.2)
    loss = build_student_loss(LossConfig(distillation=distillation, label_smoothing=0.1))
    data = TrainData(NoisedDataset(images, classes, None, [0.5], [0.25], 0),
                     NoisedDataset(images, targets, None, [0.5], [0.25], 1), epochs=2,
                     batch_noise=BatchNoise(2, 9, True, 2, channels=1))
    cfg = TrainConfig(batch_size=4, unlabeled_ratio=2, device="cpu", log_every=3)
    result = train_model(model, loss, cfg, torch.device("cpu"), data, TrainHooks("t"))
    assert result.steps == 10 and len(result.history) == 2  # 5 steps an epoch, 8 items a step
    assert outside == [(0, "_local_scalar_dense.default")]  # bool(finite), before momentum
    assert read_at == [3, 5, 6, 9, 10]  # log lines (every 3 steps) and epoch ends


def test_out_of_gpu_memory_names_the_batch_settings():
    class _OOM(_Linear):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainingError, match=r"out of GPU memory .* lower train.batch_size "
                                            r"\(now 8\) or train.unlabeled_ratio"):
        _train(TrainConfig(batch_size=8, device="cpu"), model=_OOM())


def test_sync_batchnorm_needs_ranks_and_compile_keeps_plain_weights(monkeypatch):
    calls = []

    def fake_compile(module, **kwargs):  # compiling takes long on a CPU: check the wiring only
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _Linear()
    result = _train(TrainConfig(batch_size=8, device="auto", compile=True, sync_batchnorm=True),
                    model=model)  # one process: nothing to synchronize
    assert calls == [model]  # the forward goes through the compiled module
    assert result.model is model and set(model.state_dict()) == set(_Linear().state_dict())


def test_mixup_mixes_the_pseudo_labeled_images_and_their_loss_by_hand():
    from noisy_student.losses import SoftTargetCE
    from noisy_student.train import Mixup

    mix = Mixup(0.25, torch.tensor([1, 0]))
    x = torch.tensor([1.0, 2.0, 10.0, 20.0]).view(4, 1, 1, 1)  # 2 labeled, then 2 pseudo
    assert mix.images(x, 2).flatten().tolist() == [1.0, 2.0, 17.5, 12.5]  # .25*10 + .75*20
    loss, parts = mix.loss(lambda q: (q[0] + 10 * q[1], {"first": q[0]}), torch.tensor([3.0, 5.0]))
    assert loss.item() == 0.25 * 53 + 0.75 * 35 and parts["first"].item() == 0.25 * 3 + 0.75 * 5
    # soft cross-entropy is linear in its targets: the mixed loss is the loss of mixed targets
    z, q = torch.randn(2, 3), torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    mixed, _ = mix.loss(lambda t: SoftTargetCE()(z, t), q)
    assert torch.allclose(mixed, SoftTargetCE()(z, 0.25 * q + 0.75 * q[[1, 0]])[0])
    a, b = Mixup.draw(0.4, 6, seed=3, step=7, rank=0), Mixup.draw(0.4, 6, seed=3, step=7, rank=0)
    assert a.lam == b.lam and torch.equal(a.perm, b.perm)  # a resumed step mixes alike
    assert sorted(a.perm.tolist()) == list(range(6)) and 0 < a.lam < 1
    assert Mixup.draw(0.4, 6, seed=3, step=8, rank=0).lam != a.lam


def test_a_student_trains_on_mixed_pseudo_labeled_images_and_a_teacher_never_does():
    from noisy_student.train import Mixup

    def first_batch(mixup, with_pseudo=True):
        seen = []

        class _Spy(_Linear):
            def forward(self, x):
                seen.append(x.detach().clone())
                return super().forward(x)

        rng = np.random.default_rng(1)
        pseudo = NoisedDataset(rng.integers(0, 256, (16, 4, 4, 1), dtype=np.uint8),
                               rng.dirichlet(np.ones(3), size=16).astype(np.float16), None,
                               [0.5], [0.25], seed=1) if with_pseudo else None
        torch.manual_seed(0)
        loss = build_student_loss(LossConfig(label_smoothing=0.0), with_pseudo=with_pseudo)
        train_model(_Spy(), loss, TrainConfig(batch_size=4, unlabeled_ratio=2, device="cpu"),
                    torch.device("cpu"), TrainData(_data(), pseudo, epochs=1, mixup=mixup),
                    TrainHooks("t"))
        return seen[0]

    plain, mixed = first_batch(0.0), first_batch(0.5)
    assert torch.equal(mixed[:4], plain[:4])  # the labeled images stay as they are
    assert not torch.equal(mixed[4:], plain[4:])
    assert torch.allclose(mixed, Mixup.draw(0.5, 8, seed=0, step=0, rank=0).images(plain, 4))
    assert torch.equal(first_batch(0.5, with_pseudo=False), first_batch(0.0, with_pseudo=False))
