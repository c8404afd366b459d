"""Un-noised inference: the frozen teacher and batched prediction without augmentation."""

from __future__ import annotations

import ctypes
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import normalize, to_uint8


class FrozenTeacher(nn.Module):
    """A model fixed in eval mode with gradients off; `train()` cannot switch it back.

    Wrap a teacher once; nothing downstream can turn on its dropout, stochastic depth or
    batch-norm updates (Noisy Student: the teacher is not noised when it labels).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        super().train(False)
        self.model.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Ensemble(nn.Module):
    """Several teachers as one (Hinton et al. 2015: an ensemble's averaged predictions teach
    better than any member). Returns logits whose softmax is the average:

        average = "probs":  log( mean_m softmax(z_m) )   (softmax of it = the mean probability)
        average = "logits": mean_m z_m

    Soft pseudo-labels at temperature T are then softmax(output / T).
    """

    def __init__(self, members: list[nn.Module], average: str = "probs") -> None:
        super().__init__()
        if average not in ("probs", "logits"):
            raise ValueError(f"average must be 'probs' or 'logits', got {average!r}")
        self.members, self.average = nn.ModuleList(members), average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x).float() for m in self.members])  # [M, B, C]
        if self.average == "logits":
            return logits.mean(0)
        return torch.logsumexp(logits.log_softmax(-1), 0) - math.log(len(self.members))


class ViewAverage(nn.Module):
    """A teacher that labels several fixed views of each image (test-time augmentation) and
    returns logits whose softmax is the average of the views' probabilities,

        log( mean_v softmax(z(v(x))) )

    The views: the image and, with `shift` s > 0, the image moved s pixels left, right, up and
    down (reflect-padded, as `noise.crop_padding` pads); with `flip`, each of them mirrored
    left-right too (only for mirror-symmetric classes, the condition of `noise.flip`)."""

    def __init__(self, model: nn.Module, flip: bool = True, shift: int = 0) -> None:
        super().__init__()
        self.model, self.flip, self.shift = model, flip, shift

    def views(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        s, (h, w) = self.shift, x.shape[-2:]
        padded = F.pad(x, (s, s, s, s), mode="reflect") if s else x
        for dy, dx in [(0, 0)] + ([(0, s), (0, -s), (s, 0), (-s, 0)] if s else []):
            view = padded[..., s + dy:s + dy + h, s + dx:s + dx + w]
            yield view
            if self.flip:
                yield view.flip(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([self.model(v).float() for v in self.views(x)])  # [V, B, C]
        return torch.logsumexp(logits.log_softmax(-1), 0) - math.log(len(logits))


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's `malloc_trim`). Without it the heap keeps
    the freed buffers of every batch behind the small arrays that outlive them, and the resident
    memory grows with the images seen (labeling 100k images: +330 MB, all of it
    returned by one trim)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _one_ahead(items: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each item once the next one is made: the GPU has the next batch queued while this one is
    read back, rather than idling until the host sends it."""
    previous = None
    for item in items:
        if previous is not None:
            yield previous
        previous = item
    if previous is not None:
        yield previous


def iter_logits(model: nn.Module, images: np.ndarray, mean: list[float], std: list[float],
                batch_size: int = 1024, device: torch.device | str = "cpu",
                amp: bool = False, channels_last: bool = False,
                progress: object | None = None,
                check: Callable[[], None] | None = None) -> Iterator[torch.Tensor]:
    """Logits `float32 [b, C]` (on the CPU) of `model` (in eval mode) on uint8 `images
    [N, H, W, C]`, batch by batch, so a caller can reduce them as they come.

    `check` is called between batches (it may raise to stop, e.g. on a signal)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if channels_last:  # weights in the same memory format as the inputs
        model.to(memory_format=torch.channels_last)

    def launch(start: int) -> torch.Tensor:
        """Batch `start`'s logits, queued on the device (not waited for)."""
        x = to_uint8(images[start:start + batch_size])
        if device.type == "cuda":  # pinned: the copy does not wait for the queued batch
            x = x.pin_memory()
        x = normalize(x.to(device, non_blocking=True), mean, std)  # a quarter of the bytes travel
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x).float()

    try:
        with torch.inference_mode():
            launched = (launch(start) for start in range(0, len(images), batch_size))
            for logits in (_one_ahead(launched) if device.type == "cuda" else launched):
                yield logits.cpu()
                release_freed_memory()  # else RSS grows with the images seen
                if progress is not None:
                    progress.update(len(logits))  # type: ignore[attr-defined]
                if check is not None:
                    check()
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, images: np.ndarray, mean: list[float], std: list[float],
                   batch_size: int = 1024, device: torch.device | str = "cpu",
                   amp: bool = False, channels_last: bool = False,
                   progress: object | None = None,
                   check: Callable[[], None] | None = None) -> torch.Tensor:
    """Logits `float32 [N, C]` of `model` (in eval mode) on uint8 `images [N, H, W, C]`."""
    out = list(iter_logits(model, images, mean, std, batch_size, device, amp, channels_last,
                           progress, check))
    return torch.cat(out) if out else torch.empty(0)
