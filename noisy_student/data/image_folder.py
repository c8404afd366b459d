"""A user's image folders, read in one checking pass that names every bad file before training.

labeled/<class>/*.png, test/<class>/*.png, unlabeled/**/*.png (any layout). Every file is read
once; the pass collects, before deciding anything:

  per file (skippable with data.on_bad_file = "skip"): zero-byte files, files that are not
  images, truncated or corrupt images;
  per file (converted, counted): grayscale / RGB / RGBA / palette / 16-bit images are converted
  to data.channels at 8 bits (alpha is dropped, 16-bit values are scaled by 1/256); images more
  than 2x smaller than data.image_size are upscaled and reported;
  per class and set: empty class folders, test classes missing from the labeled set, no
  unlabeled images, files of another extension (ignored, reported); byte-identical files shared
  between the labeled, validation and test sets are reported (they leak), and unlabeled files
  byte-identical to one of theirs are left out of the unlabeled set (named in the report): the
  run never trains on a test image.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SHOWN = 10  # files listed per kind of problem


class BadFile(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


@dataclass
class FolderReport:
    """What the checking pass found; `bad` files are skipped or fatal, the rest are notes."""

    counts: dict[str, int] = field(default_factory=dict)  # images read, per set
    bad: dict[str, list[str]] = field(default_factory=dict)  # kind -> "path: detail"
    converted: Counter = field(default_factory=Counter)  # "RGBA->RGB" -> count
    upscaled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # other extensions
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> sha1 -> path
    excluded: list[str] = field(default_factory=list)  # "unlabeled path = path it copies"

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "bad": self.bad, "converted": dict(self.converted),
                "upscaled": self.upscaled, "ignored": self.ignored, "warnings": self.warnings,
                "errors": self.errors, "excluded_copies": self.excluded}

    def summary(self) -> str:
        parts = [", ".join(f"{k} {v:,}" for k, v in self.counts.items()) + " images"]
        if self.converted:
            parts.append("converted " + ", ".join(f"{n} {k}" for k, n in self.converted.items()))
        for kind, items in self.bad.items():
            parts.append(counted(len(items), kind))
        if self.upscaled:
            parts.append(f"{counted(len(self.upscaled), 'images')} upscaled more than 2x")
        if self.ignored:
            parts.append(f"{counted(len(self.ignored), 'non-image files')} ignored")
        if self.excluded:
            parts.append(f"{len(self.excluded)} unlabeled {_files(len(self.excluded))} left out "
                         "as copies of labeled, validation or test files")
        return "data check: " + "; ".join(parts)


def _files(n: int) -> str:
    return "file" if n == 1 else "files"


def counted(n: int, plural: str) -> str:
    """`3 empty files`, `1 empty file`."""
    return f"{n:,} {plural[:-1] if n == 1 and plural.endswith('s') else plural}"


def _listing(items: list[str]) -> str:
    more = f"\n      ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "\n      " + "\n      ".join(items[:SHOWN]) + more


MAX_IMAGE_PIXELS = 50_000_000  # data.max_image_pixels' default: about 7,000 x 7,000


def read_image(data: bytes, size: int, channels: int,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str | None, bool]:
    """Decode, convert and resize one file: (uint8 [size, size, channels], conversion done or
    None, whether it was upscaled more than 2x). Raises `BadFile`. An image declaring more
    than `max_pixels` pixels (a decompression bomb, or far larger than any training image) is
    refused from its header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadFile("empty files", "zero bytes")
    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check gives way to max_pixels, checked below
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        if im.width * im.height > max_pixels:
            raise BadFile("oversized images", f"{im.width} x {im.height} pixels, over "
                          f"data.max_image_pixels = {max_pixels:,} (a decompression bomb?)")
        im.load()  # decodes everything: a truncated file fails here, not later
    except UnidentifiedImageError as e:
        raise BadFile("non-image files", f"not an image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadFile("corrupt images", f"truncated or corrupt ({e})") from e
    mode, target = im.mode, "L" if channels == 1 else "RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit: keep the high byte
        im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    elif mode == "F":
        im = Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8))
    small = min(im.size) * 2 < size
    array = np.asarray(im.convert(target).resize((size, size)), dtype=np.uint8)
    note = None if mode == target else f"{mode}->{target}"
    return (array[..., None] if channels == 1 else array), note, small


class FolderReader:
    """Reads the three folders of one `image_folder` source into a `FolderReport`."""

    def __init__(self, size: int, channels: int, skip_bad: bool,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.size, self.channels, self.skip_bad = size, channels, skip_bad
        self.max_pixels = max_pixels
        self.report = FolderReport()

    def files(self, directory: Path, where: str) -> list[Path]:
        found = sorted(p for p in directory.rglob("*") if p.is_file())
        images = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
        self.report.ignored += [f"{p} ({where})" for p in found
                                if p.suffix.lower() not in IMAGE_EXTENSIONS
                                and not p.name.startswith(".")]
        return images

    def listed(self, lines: list[str], list_file: Path) -> list[Path]:
        """The image paths in the `lines` of a list file (`data.unlabeled_list`): one per line,
        relative ones against the file's folder; blank lines and `#` comments skipped. Paths
        that are not files are bad files (named with their line in the report)."""
        paths = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(line) if Path(line).is_absolute() else list_file.parent / line
            if not path.is_file():
                self._bad("missing files", f"{path} ({list_file} line {number})")
                continue
            paths.append(path)
        return paths

    def read(self, paths: list[Path], where: str) -> list[np.ndarray | None]:
        """One array per path; None for a bad file (recorded in the report). A lazily read set
        (`lazy`) keeps no pixels: its arrays are dropped once checked (see `LazyImages`)."""
        out: list[np.ndarray | None] = []
        hashes = self.report.hashes.setdefault(where, {})
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as e:
                self._bad("unreadable files", f"{path}: {e.strerror}")
                out.append(None)
                continue
            digest = hashlib.sha1(data).hexdigest()
            copied = self._copy_of(digest) if where == "unlabeled" else None
            if copied is not None:
                self.report.excluded.append(f"{path} = {copied}")
                out.append(None)
                continue
            try:
                array, note, small = read_image(data, self.size, self.channels,
                                                self.max_pixels)
            except BadFile as e:
                self._bad(e.kind, f"{path}: {e.detail}")
                out.append(None)
                continue
            hashes.setdefault(digest, str(path))
            if note:
                self.report.converted[note] += 1
            if small:
                self.report.upscaled.append(str(path))
            out.append(array)
        return out

    def _copy_of(self, digest: str) -> str | None:
        """The labeled, validation or test file with these bytes (read before the unlabeled)."""
        for where in ("labeled", "validation", "test"):
            path = self.report.hashes.get(where, {}).get(digest)
            if path is not None:
                return path
        return None

    def _bad(self, kind: str, line: str) -> None:
        self.report.bad.setdefault(kind, []).append(line)

    def check_leaks(self) -> None:
        """Byte-identical files shared between labeled and scored sets: reported, since they
        inflate accuracy (unlabeled copies are left out as they are read)."""
        h = self.report.hashes
        for a, b in (("labeled", "test"), ("labeled", "validation"), ("validation", "test")):
            shared = sorted(set(h.get(a, {})) & set(h.get(b, {})))
            if shared:
                pairs = [f"{h[a][s]} = {h[b][s]}" for s in shared]
                self.report.warnings.append(
                    f"{len(shared)} files of the {b} set are byte-identical to files of the {a} "
                    f"set (a leak: remove them from one side):{_listing(pairs)}")

    def finish(self) -> FolderReport:
        """Turn what was found into warnings or one error listing everything."""
        r = self.report
        self.check_leaks()
        if r.excluded:
            n = len(r.excluded)
            r.warnings.append(f"{n} unlabeled {_files(n)} byte-identical to labeled, validation "
                              f"or test files {'was' if n == 1 else 'were'} left out of the "
                              f"unlabeled set (a leak):{_listing(r.excluded)}")
        if r.ignored:
            r.warnings.append(f"{len(r.ignored)} files without an image extension were ignored:"
                              f"{_listing(r.ignored)}")
        if r.upscaled:
            r.warnings.append(f"{len(r.upscaled)} images are more than 2x smaller than "
                              f"data.image_size = {self.size} and were upscaled:"
                              f"{_listing(r.upscaled)}")
        for kind, items in r.bad.items():
            text = f"{counted(len(items), kind)}:{_listing(items)}"
            (r.warnings if self.skip_bad else r.errors).append(
                text + ("\n    (skipped)" if self.skip_bad else
                        "\n    fix or remove them, or set data.on_bad_file = \"skip\""))
        return r


class LazyImages:
    """Image files that behave like a `uint8 [N, H, W, C]` array but are decoded on access, so
    memory does not grow with the number of images.

    `images[i]` decodes one image; `images[a:b]` decodes a batch (an array); indexing with an
    integer array gives a lazy subset (nothing is decoded)."""

    def __init__(self, paths: list[str], size: int, channels: int,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.paths, self.size, self.channels = list(paths), size, channels
        self.max_pixels = max_pixels
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, self.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> np.ndarray:
        path = self.paths[i]
        try:
            return read_image(Path(path).read_bytes(), self.size, self.channels,
                              self.max_pixels)[0]
        except (OSError, BadFile) as e:
            raise BadFile("changed files", f"{path}: could be read at the start of the run, not "
                          f"now ({e})") from e

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self._read(int(key))
        if isinstance(key, slice):
            rows = range(*key.indices(len(self)))
            if not rows:
                return np.zeros((0, self.size, self.size, self.channels), np.uint8)
            return np.stack([self._read(i) for i in rows])
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return LazyImages([self.paths[i] for i in index], self.size, self.channels,
                          self.max_pixels)
