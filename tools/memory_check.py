"""Peak memory of reading, pseudo-labeling and training on N unlabeled images from disk.

    python tools/memory_check.py --images 10000 100000 [--size 32] [--classes 1000]
                                 [--modes eager lazy] [--dir runs/memcheck]

Writes N random PNG files (once per N, reused after), then, in a fresh process for each (N, mode),
loads an image_folder source with data.lazy_unlabeled off (eager) or on (lazy), labels every
unlabeled image the way the loop does (`label_part`: soft labels over `--classes` classes written
to a part file batch by batch; `merge_parts`: memory-mapped back, thresholded, balanced), reads
2,048 training items through `NoisedDataset`, and reports the peak resident set size (ru_maxrss)
after loading and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    done = folder / ".complete"
    if done.is_file():
        return
    rng = np.random.default_rng(0)
    for split, count in (("labeled", 5), ("test", 2)):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    folder / split / cls / f"{i}.png")
    unlabeled = folder / "unlabeled"
    for i in range(n):
        sub = unlabeled / f"{i // 10_000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            sub / f"{i}.png")
    done.touch()


def rss_now() -> dict[str, float]:
    """This process's resident memory now (MB): anonymous (heap) and file-backed (mapped)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def measure(folder: Path, size: int, lazy: bool, classes: int) -> dict:
    """In this process: load the source, label every unlabeled image, read training items,
    report peak RSS."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import tempfile

    import torch

    from noisy_student.config import DataConfig, PseudoLabelConfig
    from noisy_student.data import NoisedDataset, load_source
    from noisy_student.inference import FrozenTeacher
    from noisy_student.models import create_model
    from noisy_student.pseudo_label import SOFT_DIR, label_part, merge_parts

    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = DataConfig(source="image_folder", labeled_dir=str(folder / "labeled"),
                     unlabeled_dir=str(folder / "unlabeled"), test_dir=str(folder / "test"),
                     image_size=size, channels=3, lazy_unlabeled=lazy)
    source = load_source(cfg)
    loaded = time.perf_counter() - start
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    teacher = FrozenTeacher(create_model("cnn_tiny", num_classes=classes, in_chans=3))
    cfg = PseudoLabelConfig(kind="soft", threshold=0.0, balance=True, batch_size=1024)
    images = source.unlabeled.images
    with tempfile.TemporaryDirectory() as tmp:
        stages = {"loaded": rss_now()}
        part = label_part(teacher, images, [0.5] * 3, [0.25] * 3, cfg, 1.0,
                          Path(tmp) / SOFT_DIR / "part-00000-of-00001")
        stages["labeled"] = rss_now()
        labels = merge_parts([part], Path(tmp), cfg, 1.0, {})
        data = NoisedDataset(images, labels.training_targets(), None, [0.5] * 3, [0.25] * 3, 0,
                             index=labels.indices)
        step = max(1, len(data) // 2048)
        for i in range(0, len(data), step):
            data[i]
        stages["read"] = rss_now()
        soft_bytes = sum(f.stat().st_size for f in (Path(tmp) / SOFT_DIR).iterdir())
    return {"images": len(source.unlabeled), "lazy": lazy, "classes": classes,
            "soft_label_mb": round(soft_bytes / 2**20, 1), "rss_now_mb": stages,
            "load_seconds": round(loaded, 1), "peak_rss_after_load_mb": round(rss_loaded, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000, help="the teacher's outputs per image")
    p.add_argument("--modes", nargs="+", choices=["eager", "lazy"], default=["eager", "lazy"])
    p.add_argument("--dir", type=Path, default=ROOT / "runs" / "memcheck")
    p.add_argument("--results", type=Path,
                   help="merge the figures into this results JSON and regenerate its report "
                        "(benchmarks/results.json: BENCHMARKS.md; else a .md beside it)")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    p.add_argument("--lazy", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.size, args.lazy, args.classes)))
        return 0
    rows = []
    for n in args.images:
        folder = args.dir / f"n{n}-s{args.size}"
        make_images(folder, n, args.size)
        for lazy in [m == "lazy" for m in args.modes]:
            cmd = [sys.executable, __file__, "--measure", str(folder), "--size", str(args.size),
                   "--classes", str(args.classes)]
            out = subprocess.run(cmd + (["--lazy"] if lazy else []), capture_output=True,
                                 text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("| unlabeled images | mode | soft labels on disk (MB) | peak RSS after loading (MB) | "
          "peak RSS at the end (MB) | load (s) | load + label + read (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']:,} | {'lazy' if r['lazy'] else 'in memory'} | "
              f"{r['soft_label_mb']} | {r['peak_rss_after_load_mb']} | {r['peak_rss_mb']} | "
              f"{r['load_seconds']} | {r['total_seconds']} |")
    if args.results:
        sys.path.insert(0, str(ROOT / "tools"))
        import benchmark

        command = shlex.join(["python", "tools/memory_check.py", *sys.argv[1:]])
        benchmark.merge_and_report(args.results, "memory", {"rows": rows, "size": args.size,
                                                            "classes": args.classes}, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
