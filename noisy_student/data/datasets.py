"""Torch datasets over in-memory uint8 images: noised for the student, plain for inference."""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

Noise = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def to_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] array -> uint8 [N, C, H, W] tensor (a view; no copy when contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor on `device`, made once (never modify it): made anew each step,
    it is copied from pageable host memory, which on a GPU waits for the queued work to end."""
    return torch.tensor(values, dtype=dtype, device=device)


def normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [N, C, H, W] (any device) -> float32 (x / 255 - mean) / std, on x's device.

    Batches travel as uint8 (a quarter of the bytes to copy to a GPU) and are normalized here,
    once per batch, rather than per item in the DataLoader."""
    m = device_constant(tuple(mean), x.device).view(1, -1, 1, 1)
    s = device_constant(tuple(std), x.device).view(1, -1, 1, 1)
    return (x.float().div_(255.0) - m).div_(s)


def to_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [N, H, W, C] -> normalized float32 [N, C, H, W]."""
    return normalize(to_uint8(images), mean, std)


class NoisedDataset(Dataset):
    """Item `(p, i)`: `(noise(images[index[i]]) uint8 [C, H, W], targets[i])`; the training step
    normalizes whole batches with `normalize(x, dataset.mean, dataset.std)`.

    `index` maps items to images (pseudo-labels may repeat an image); `targets` are class ids
    `int64 [n]`, soft labels `[n, C]` or `soft_labels.ItemTargets`. Keys are `(pass, i)` pairs (see
    `train.StreamSampler`) or plain `i` (pass 0): the noise of item i in pass p is drawn from `default_rng([seed, p,
    i])`, so it depends neither on DataLoader workers nor on batch order.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, noise: Noise | None,
                 mean: list[float], std: list[float], seed: int,
                 index: np.ndarray | None = None) -> None:
        self.images, self.noise, self.seed = images, noise, seed
        self.index = np.arange(len(images)) if index is None else np.asarray(index)
        if len(targets) != len(self.index):
            raise ValueError(f"{len(targets)} targets for {len(self.index)} items")
        self.targets = torch.from_numpy(np.asarray(
            targets, dtype=np.int64 if targets.ndim == 1 else np.float32)) if isinstance(
            targets, np.ndarray) else targets  # or row-by-row soft labels (`ItemTargets`)
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        p, i = key if isinstance(key, tuple) else (0, key)
        image = self.images[self.index[i]]
        if self.noise is not None:
            image = self.noise(image, np.random.default_rng([self.seed, p, i]))
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), self.targets[i]

    def __getitems__(self, keys: list) -> list | tuple[torch.Tensor, torch.Tensor]:
        """A batch of keys (PyTorch's DataLoader asks so): the items, or, for clean items of
        in-memory images, the batch `(uint8 [B, C, H, W], targets [B, ...])` in one gather, as
        `collate` would stack them (item by item, Python was most of a GPU step's data wait)."""
        if (self.noise is not None or not isinstance(self.images, np.ndarray)
                or not isinstance(self.targets, torch.Tensor)):
            return [self[k] for k in keys]
        i = np.array([k[1] if isinstance(k, tuple) else k for k in keys], dtype=np.int64)
        x = torch.from_numpy(self.images[self.index[i]]).permute(0, 3, 1, 2).contiguous()
        return x, self.targets[torch.from_numpy(i)]


def collate(batch: list | tuple[torch.Tensor, torch.Tensor]) -> Any:
    """The DataLoader's collate: a batch `__getitems__` made whole passes as it is."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


class TwoViews(Dataset):
    """Item `(p, i)`: `(uint8 [2, C, H, W], -1)`, a weakly and a strongly noised view of unlabeled
    image i (FixMatch's pair; the -1 stands for its unknown class). Each view's noise is drawn
    as `NoisedDataset`'s is, the weak one from seed `seed`, the strong one from `seed + 1`."""

    def __init__(self, images: np.ndarray, weak: Noise | None, strong: Noise | None,
                 mean: list[float], std: list[float], seed: int) -> None:
        unknown = np.full(len(images), -1)
        self.weak = NoisedDataset(images, unknown, weak, mean, std, seed)
        self.strong = NoisedDataset(images, unknown, strong, mean, std, seed + 1)
        self.mean, self.std = self.weak.mean, self.weak.std

    def __len__(self) -> int:
        return len(self.weak)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        (weak, unknown), (strong, _) = self.weak[key], self.strong[key]
        return torch.stack([weak, strong]), unknown
