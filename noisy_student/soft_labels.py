"""Soft pseudo-labels softmax(z_t / T) of every unlabeled image: compact, sharded, read lazily.

Rows follow the unlabeled set's order, in parts (one per rank's shard when labeling). A part is
either arrays in memory or `.npy` files written batch by batch while the teacher labels and read
back row by row (`FileRows`), so memory holds only the rows a batch reads, whatever the set's size:

    dense    <stem>.probs.npy    float16 [n, C]                 2 C bytes per image
    top-k    <stem>.probs.npy    float16 [n, k] (renormalized    4 k bytes per image (C <= 32767;
             <stem>.classes.npy  int16|int32 [n, k]  on read)    6 k above)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SoftLabelError  # noqa: F401 (raised here, importable from here)


def _class_dtype(num_classes: int) -> type:
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def compact(probs: torch.Tensor, top_k: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """float probabilities [b, C] -> (float16 [b, C or k], top-k classes [b, k] or None)."""
    if top_k is None or top_k >= probs.shape[1]:
        return probs.numpy().astype(np.float16), None
    top = probs.topk(top_k, dim=1)  # the k most probable classes per image
    return (top.values.numpy().astype(np.float16),
            top.indices.numpy().astype(_class_dtype(probs.shape[1])))


class SoftLabels:
    """Row i: image i's soft label, dense float32 [C] (top-k rows renormalized to sum to 1)."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray | None]],
                 num_classes: int) -> None:
        self.parts, self.num_classes = parts, num_classes
        self.offsets = np.cumsum([0] + [len(p) for p, _ in parts])  # part j: [o_j, o_j+1)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def top_k(self) -> int | None:
        return None if not self.parts or self.parts[0][1] is None else self.parts[0][1].shape[1]

    def rows(self, images: np.ndarray) -> np.ndarray:
        """Dense float32 [len(images), C] for the given image indices (any order, repeats)."""
        images = np.asarray(images, np.int64)
        out = np.zeros((len(images), self.num_classes), np.float32)
        part = np.searchsorted(self.offsets, images, side="right") - 1
        for j in np.unique(part):
            at = np.flatnonzero(part == j)
            local = images[at] - self.offsets[j]
            probs, classes = self.parts[j]
            p = _take(probs, local).astype(np.float32)
            if classes is None:
                out[at] = p
            else:
                p /= np.maximum(p.sum(1, keepdims=True), 1e-12)
                out[at[:, None], _take(classes, local).astype(np.int64)] = p
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """All parts as one pair of in-memory arrays (small sets; for an `.npz`)."""
        probs = np.concatenate([np.asarray(p) for p, _ in self.parts])
        out = {"soft_probs": probs}
        if self.top_k is not None:
            out["soft_classes"] = np.concatenate([np.asarray(c) for _, c in self.parts])
        return out

    @classmethod
    def open(cls, folder: Path, records: list[dict[str, Any]], num_classes: int,
             verify: bool = True) -> SoftLabels:
        """Open the parts named by `records` (from `PartWriter.close`) under `folder`, to be read
        row by row (`FileRows`); with `verify`, each part's sha256 is checked first."""
        parts = []
        for record in records:
            _check_record(record, folder)
            files = [part_file(folder, record["stem"], ".probs.npy")]
            if record.get("top_k") is not None:
                files.append(part_file(folder, record["stem"], ".classes.npy"))
            try:
                arrays = [FileRows(f) for f in files]
            except Exception as e:  # noqa: BLE001 - numpy's header reader raises many types
                raise SoftLabelError(f"{files[0]}: cannot read the soft pseudo-labels ({e})") from e
            if any(len(a) != record["rows"] for a in arrays):
                raise SoftLabelError(f"{files[0]}: {len(arrays[0])} rows, its record says "
                                     f"{record['rows']}")
            if verify and _sha256(arrays) != record["sha256"]:
                raise SoftLabelError(f"{files[0]}: sha256 differs from its record (changed or "
                                     "corrupt)")
            parts.append((arrays[0], arrays[1] if len(arrays) > 1 else None))
        return cls(parts, num_classes)


class FileRows:
    """The rows of a 2-D `.npy` file, read on demand with `os.pread`: nothing is mapped into
    the process (mapped file pages count as resident memory, and a page fault maps a whole
    neighbourhood), and nothing but the header is read when opening."""

    def __init__(self, path: Path) -> None:
        header = np.load(path, mmap_mode="r")  # parses the header; its mapping is dropped
        self.path, self.dtype, self.shape = str(path), header.dtype, header.shape
        self.offset = header.offset
        del header
        self._fd: tuple[int, int] | None = None  # (process id, descriptor)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():  # one per process (workers)
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return self._fd[1]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """`[len(rows), width]` rows, in the order given."""
        size = self.shape[1] * self.dtype.itemsize
        fd, out = self._descriptor(), np.empty((len(rows), self.shape[1]), self.dtype)
        for i, r in enumerate(np.asarray(rows).tolist()):
            out[i] = np.frombuffer(os.pread(fd, size, self.offset + r * size), self.dtype)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = np.fromfile(self.path, self.dtype, offset=self.offset).reshape(self.shape)
        return whole if dtype is None else whole.astype(dtype)


def _take(array: np.ndarray | FileRows, rows: np.ndarray) -> np.ndarray:
    return array.take(rows) if isinstance(array, FileRows) else array[rows]


def _sha256(arrays: list[FileRows], chunk: int = 1 << 22) -> str:
    """sha256 over the per-file sha256 digests of the rows' bytes (as `PartWriter` makes it),
    read with plain file reads past each `.npy` header (mapped pages would count as memory)."""
    digests = []
    for a in arrays:
        h = hashlib.sha256()
        with open(a.path, "rb") as f:
            f.seek(a.offset)
            while block := f.read(chunk):
                h.update(block)
        digests.append(h.digest())
    return hashlib.sha256(b"".join(digests)).hexdigest()


class PartWriter:
    """Writes one part's rows in order, batch by batch, to temporary `.npy` files (plain
    appends, hashed as they go: nothing of the part stays in memory) renamed into place by
    `close`, so a crash leaves no half-written part under the final name."""

    def __init__(self, stem: Path, rows: int, num_classes: int, top_k: int | None) -> None:
        self.stem, self.rows, self.done = stem, rows, 0
        self.top_k = top_k if top_k is not None and top_k < num_classes else None
        width = self.top_k or num_classes
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.files = [stem.with_name(stem.name + ".probs.npy")]
        dtypes = [np.dtype(np.float16)]
        if self.top_k is not None:
            self.files.append(stem.with_name(stem.name + ".classes.npy"))
            dtypes.append(np.dtype(_class_dtype(num_classes)))
        self.handles = []
        for path, dtype in zip(self.files, dtypes, strict=True):
            f = open(self._tmp(path), "wb")  # noqa: SIM115 - closed in close()
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False,
                                                     "shape": (rows, width)})
            self.handles.append(f)
        self.hashes = [hashlib.sha256() for _ in self.files]

    @staticmethod
    def _tmp(path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")

    def write(self, probs: torch.Tensor) -> None:
        """The next rows: probabilities float [b, C]."""
        values, classes = compact(probs, self.top_k)
        for f, h, array in zip(self.handles, self.hashes, (values, classes)):
            data = np.ascontiguousarray(array).tobytes()
            f.write(data)
            h.update(data)
        self.done += len(values)

    def close(self) -> dict[str, Any]:
        """Flush and fsync, rename into place; the part's record (stem name, rows, top_k,
        sha256 of the rows' bytes, probabilities then classes)."""
        if self.done != self.rows:
            raise SoftLabelError(f"{self.stem}: {self.done} rows written of {self.rows}")
        digest = hashlib.sha256(b"".join(h.digest() for h in self.hashes)).hexdigest()
        for f, path in zip(self.handles, self.files, strict=True):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self._tmp(path), path)
        self.handles = []
        return {"stem": self.stem.name, "rows": self.rows, "top_k": self.top_k,
                "sha256": digest}


def part_file(folder: Path, stem: Any, suffix: str) -> Path:
    """`folder/<stem><suffix>`, refused unless it stays inside `folder`: the stem, read from a
    `.npz` in the run directory, must be a relative name without `..`, and the file, if it is a
    symlink, must not point out of the folder (a damaged or crafted record cannot make the run
    read or link a file elsewhere)."""
    bad = (not isinstance(stem, str) or not stem or "\x00" in stem or Path(stem).is_absolute()
           or ".." in Path(stem).parts)
    path = folder / f"{stem}{suffix}"
    if not bad and path.exists():
        bad = not path.resolve().is_relative_to(folder.resolve())
    if bad:
        raise SoftLabelError(f"{folder}: a soft-label part record names {stem!r}, which is not a "
                             "file inside this folder (a damaged or crafted pseudo_labels.npz); "
                             "delete the .npz to label again")
    return path


def _check_record(record: Any, folder: Path) -> None:
    if not (isinstance(record, dict) and isinstance(record.get("rows"), int)
            and isinstance(record.get("sha256"), str) and "stem" in record):
        raise SoftLabelError(f"{folder}: a soft-label part record is malformed ({record!r:.200}); "
                             "delete the pseudo_labels.npz to label again")


def link_parts(records: list[dict[str, Any]], source: Path, target: Path) -> None:
    """Hard-link (or copy) the part files named by `records` from folder `source` into `target`
    (pseudo-labels reused from another round folder keep their parts beside their `.npz`)."""
    for record in records:
        _check_record(record, source)
        for suffix in (".probs.npy", ".classes.npy"):
            src = part_file(source, record["stem"], suffix)
            dst = part_file(target, record["stem"], suffix)
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)


class ItemTargets:
    """What the student trains on, item by item: item i is image `indices[i]`'s soft label,
    `float32 [C]`, read from `soft` when the item is loaded (`NoisedDataset` indexes it)."""

    def __init__(self, soft: SoftLabels, indices: np.ndarray) -> None:
        self.soft, self.indices, self.ndim = soft, indices, 2

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.soft.rows(self.indices[i:i + 1])[0])
