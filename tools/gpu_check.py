"""GPU check: the CUDA path measured in minutes, every part in a process of its own with its own
time limit, its figures written as soon as it ends.

    python tools/gpu_check.py --out gpu.json              # on one CUDA GPU: every part, <= 8 min
    python tools/gpu_check.py --device cpu --tiny --out gpu.json   # the same paths, toy sizes
    python tools/gpu_check.py prepare                     # here, once: what the GPU machine lacks
    python tools/gpu_check.py merge gpu.json              # into benchmarks/results.json, the report

Parts, in order (each records its peak GPU memory):
  train_step    `train_model` against a bare PyTorch loop, same model, batch and precision (bf16
                autocast + channels_last on CUDA): wrn_28_2 at 32x32 (64 labeled + 448
                pseudo-labeled images a step) and tv_resnet50 (ImageNet stem) at 224x224
                (64 + 192); target <= 1.10
  noise         noised training with noise.backend "torch" (whole batches on the device, no
                worker) and "albumentations" (DataLoader workers: the machine's cores less one):
                images/s, the host's time in the data path, and the step time the noise costs
                against the same training on clean images (target < 10%, torch)
  pseudo_label  `predict_logits` against a bare `model(x)` loop: images/s (target >= 0.9)
  compile       `train.compile`: seconds spent compiling, steady-state speed-up of the step
  torchrun      one short round of the digits recipe under torchrun, one process (nccl on CUDA)
  end_to_end    the Fashion-MNIST recipe cut to 4 of its 6 rounds (its noise backend "torch"):
                minutes and validation and test top-1 of every phase it finished (--tiny: the
                digits recipe, a few epochs)

A part that fails or runs out of time is recorded as such ("failed", "timed out") and the next
one runs; the whole check stops starting parts at --budget seconds. No download: the images are
synthetic, Fashion-MNIST is read from its idx files (`$NOISY_STUDENT_FASHION_MNIST`).

The GPU machine has its own Python and PyTorch and no package index. `prepare` (run here, where
pip reaches the index) puts the wheels it lacks (albumentations and its dependencies, for Python
3.12) and the Fashion-MNIST files into `.gpu_check/` (git-ignored) and prints the one command to
run there with `.gpu_check` carried along. Back here, `merge FILE` puts
the figures into benchmarks/results.json (section "gpu", with this checkout's commit: merge at the
commit that was sent) and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import bench_report  # noqa: E402

PARTS = ("train_step", "noise", "pseudo_label", "compile", "torchrun", "end_to_end")
# each part's own limit; the budget caps them all. On an H200 (2026-12-04) the parts took 34,
# 15, 7, 47, 26 and 243 s (4 rounds of the recipe; a 240 s limit cut it in its last round)
LIMIT_S = {"train_step": 90, "noise": 60, "pseudo_label": 40, "compile": 90, "torchrun": 50,
           "end_to_end": 300}
BUDGET_S = 465  # 7.75 minutes: parts start only while the budget lasts
# framework / bare at most; noise wait under; pseudo-labeling images/s against bare at least
TARGETS = {"train_step_ratio": bench_report.TARGETS["train_step"],
           "noise_wait": bench_report.WAIT_TARGET, "pseudo_label_ratio": 0.9}
WHEELS = ("albumentations", "albucore", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "typing-extensions", "stringzilla", "simsimd")
FASHION_FILES = Path("/usr/share/datasets/fashion-mnist")
PREPARED = ".gpu_check"  # in the repository root, carried to the GPU machine


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured model: its name, image shape, labeled images a step, pseudo-labeled per
    labeled image, and steps."""
    model: str
    shape: tuple[int, int, int]
    batch: int
    ratio: int
    steps: int


FULL = {"tiny": False, "train_step": [Setting("wrn_28_2", (32, 32, 3), 64, 7, 100),
                       Setting("tv_resnet50", (224, 224, 3), 64, 3, 40)],
        "noise": Setting("wrn_28_2", (32, 32, 3), 64, 7, 60), "noise_images": 3000,
        "pseudo_label": Setting("wrn_28_2", (32, 32, 3), 0, 0, 0), "pseudo_images": 20_000,
        "compile": Setting("wrn_28_2", (32, 32, 3), 64, 7, 30)}
TINY = {"tiny": True, "train_step": [Setting("wrn_28_2", (32, 32, 3), 4, 2, 2),
                       Setting("tv_resnet18", (32, 32, 3), 2, 1, 2)],
        "noise": Setting("cnn_tiny", (32, 32, 3), 4, 2, 2), "noise_images": 32,
        "pseudo_label": Setting("cnn_tiny", (32, 32, 3), 0, 0, 0), "pseudo_images": 64,
        "compile": Setting("cnn_tiny", (32, 32, 3), 4, 2, 3)}
# end to end, --tiny: the digits recipe cut to seconds (its images are 8x8)
TINY_RECIPE = ["data.unlabeled_limit=200", "data.test_limit=100", "train.teacher_epochs=2",
               "train.epochs=1", "rounds=1", "pseudo_label.threshold=0",
               "train.sanity_gate=false"]  # a teacher of 2 epochs is near chance


# ---- the parts (each runs in a child process: `--part NAME`) ------------------------------

def _config(s: Setting, device: str, extra: tuple[str, ...] = ()):
    import runpy

    make = runpy.run_path(str(ROOT / "recipes" / "fashion_mnist.py"))["make_config"]
    return make().with_overrides([
        f'model.ladder=["{s.model}"]', f"train.batch_size={max(1, s.batch)}",
        f"train.unlabeled_ratio={max(1, s.ratio)}", f'train.device="{device}"', "train.amp=true",
        "train.channels_last=true", "pseudo_label.batch_size=1024",
        *(["model.drop_path_rate=0"] if s.model.startswith("tv_") else []),  # none in torchvision
        *extra])


def _peak(fn: Callable[[], dict[str, Any]], device: Any) -> dict[str, Any]:
    """`fn`'s figures and the peak GPU memory it allocated (MiB; None on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = fn()
    result["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() / 2**20
                              if device.type == "cuda" else None)
    return result


def part_train_step(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    import bench_speed

    def measure(s: Setting) -> dict[str, Any]:
        return bench_speed.train_step(_config(s, device.type), s.steps, device, s.shape,
                                      _workers(device))

    rows = [{**_peak(lambda: measure(s), device), "shape": list(s.shape),
             "workers": _workers(device), "target": TARGETS["train_step_ratio"]}
            for s in sizes["train_step"]]
    if device.type == "cuda":  # the first setting again, untimed: where the host waits
        first = sizes["train_step"][0]
        rows[0]["host_waits"] = host_waits(lambda: measure(first), first.steps + 2)
    return {"settings": rows}


def host_waits(run: Callable[[], Any], steps: int) -> dict[str, Any]:
    """How often the host waits for the GPU in `run` of `steps` framework steps (its warm-up's
    2 included; the bare loop has none): CUDA's sync debug mode warns at each implicit wait
    (`.item()`, a copy to the host or from pageable memory); per step, and the lines that wait
    most."""
    import collections
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in waits)
    return {"per_step": len(waits) / steps, "where": dict(where.most_common(6))}


def part_noise(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    import bench_speed

    s = sizes["noise"]
    config = _config(s, device.type, (f"data.num_workers={_workers(device)}",))
    demand = bench_speed.train_step(config, 2, device, s.shape)["bare_images_per_second"]
    r = _peak(lambda: bench_speed.noise_supply(config, sizes["noise_images"], demand, s.steps,
                                               device, shape=s.shape), device)
    return {**r, "model": s.model, "shape": list(s.shape), "target": TARGETS["noise_wait"]}


def part_pseudo_label(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    import bench_speed

    s = sizes["pseudo_label"]
    r = _peak(lambda: bench_speed.inference(_config(s, device.type), sizes["pseudo_images"],
                                            device, s.shape), device)
    return {**r, "model": s.model, "shape": list(s.shape),
            "speed_ratio": r["framework_images_per_second"] / r["bare_images_per_second"],
            "target": TARGETS["pseudo_label_ratio"]}


def part_compile(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    """Two epochs of `train_model` (clean images) with `train.compile` off and on: compiling
    costs the difference between the compiled run's first and second epoch; the speed-up is the
    second epochs' ratio."""
    import torch

    import bench_speed
    from noisy_student.data import NoisedDataset
    s = sizes["compile"]
    if device.type == "cpu":  # toy sizes on the CPU: the same path without a C++ build
        torch.compile = _eager_compile(torch.compile)
    runs = {}
    for on in (False, True):
        config = _config(s, device.type, (f"train.compile={str(on).lower()}",))
        b_pse = s.batch * s.ratio
        images, labels, targets, model, loss = bench_speed._setup(config, b_pse * s.steps,
                                                                  shape=s.shape)
        lab = NoisedDataset(images, labels, None, [0.5], [0.25], 0)
        pse = NoisedDataset(images, targets, None, [0.5], [0.25], 1)
        cfg = dataclasses.replace(config.train, log_every=10**9)
        result = _peak(lambda: _two_epochs(model, loss, lab, pse, cfg, device), device)
        runs["compiled" if on else "eager"] = result
    first, second = runs["compiled"]["epoch_seconds"]
    return {"model": s.model, "shape": list(s.shape), "steps_per_epoch": s.steps, **runs,
            "compile_seconds": first - second,
            "speedup": runs["eager"]["epoch_seconds"][1] / second,
            "backend": "eager (CPU, toy sizes)" if device.type == "cpu" else "inductor"}


def _eager_compile(compile_fn: Callable) -> Callable:
    return lambda model, **kw: compile_fn(model, backend="eager")


def _two_epochs(model, loss, lab, pse, cfg, device) -> dict[str, Any]:
    from noisy_student.train import TrainData, TrainHooks, train_model

    result = train_model(model, loss, cfg, device, TrainData(lab, pse, epochs=2),
                         TrainHooks("compile", eval_times=0))
    batch = cfg.batch_size * (1 + cfg.unlabeled_ratio)
    per_epoch = result.steps // 2
    return {"epoch_seconds": [per_epoch * batch / h["images_per_second"]
                              for h in result.history], "steps": result.steps}


def part_torchrun(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    out = work / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=1", str(ROOT / "recipes" / "digits.py"), "--out", str(out),
               "--overwrite", *_sets(TINY_RECIPE + [f'train.device="{device.type}"'])]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if sizes["tiny"] else {})}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exit {done.returncode}: {done.stderr[-2000:]}")
    phases = _phases(out)
    return {"backend": "nccl" if device.type == "cuda" else "gloo", "processes": 1,
            "seconds": seconds, "phases": phases}


def part_end_to_end(sizes: dict[str, Any], device: Any, work: Path) -> dict[str, Any]:
    from noisy_student.loop import run

    out = work / "end_to_end"
    config = _end_to_end_config(sizes["tiny"], device.type, out)

    def whole_run() -> dict[str, Any]:
        run(config, overwrite=True)
        return end_to_end_figures(out, config.name)
    return _peak(whole_run, device)


def _end_to_end_config(tiny: bool, device: str, out: Path):
    import runpy

    name = "digits" if tiny else "fashion_mnist"
    config = runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["make_config"]()
    return config.with_overrides([  # 4 of the recipe's 6 rounds fit the part's limit
        *(TINY_RECIPE if tiny else ["rounds=4"]), 'noise.backend="torch"', "data.num_workers=0",
        f'train.device="{device}"', 'tracking.mode="disabled"', "checkpoint.every_minutes=0",
        f'out="{out}"'])


def end_to_end_figures(out: Path, recipe: str) -> dict[str, Any]:
    """Minutes and top-1 of every phase the run in `out` finished: also what a run cut short by
    the time limit left behind."""
    phases = _phases(out)
    config = out / "config.json"  # summary.json is rewritten after every round: not the test
    rounds = json.loads(config.read_text())["rounds"] if config.is_file() else None
    return {"recipe": recipe, "rounds": rounds, "noise_backend": "torch", "phases": phases,
            "minutes": sum(p["seconds"] for p in phases) / 60,
            "finished": rounds is not None and len(phases) == 1 + rounds}


def _phases(out: Path) -> list[dict[str, Any]]:
    """Round 0's teacher and each round, as far as they got: seconds, validation and test
    top-1 (students), from their metrics.json."""
    phases = []
    teacher = out / "teacher" / "metrics.json"
    if teacher.is_file():
        m = json.loads(teacher.read_text())
        phases.append({"phase": "teacher", "seconds": m["seconds"], "val_top1": m.get("val_top1"),
                       "test_top1": m["top1"]})
    k = 0
    while (out / f"round_{k}" / "metrics.json").is_file():
        m = json.loads((out / f"round_{k}" / "metrics.json").read_text())
        phases.append({"phase": f"round {k}", "seconds": m["seconds"],
                       "val_top1": m.get("student_val_top1"), "test_top1": m["student_top1"]})
        k += 1
    return phases


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _workers(device: Any) -> int:
    return max(1, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 1


# ---- the driver -----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """The GPU, driver, CUDA and the versions (bench_runs.provenance, less the code: merge adds
    the checkout's)."""
    import torch

    from bench_runs import provenance

    p = provenance()
    gpu = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": props.total_memory / 2**30,
               "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
               "driver": _driver()}
    return {"versions": p["versions"], "machine": p["machine"], "date": p["date"], "gpu": gpu}


def _driver() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_part(name: str, limit: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`name` in a child process of its own session (its children are ended with it), at most
    `limit` seconds: its figures, or why there are none."""
    result_file = work / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device",
               args.device, "--work", str(work), *(["--tiny"] if args.tiny else [])]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        log, _ = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        log, _ = child.communicate()
        status = {"status": "timed out", "limit_s": round(limit, 1)}
        if name == "end_to_end":  # what the run finished before the limit still counts
            status.update(end_to_end_figures(work / "end_to_end",
                                             "digits" if args.tiny else "fashion_mnist"))
        return {**status, "seconds": time.perf_counter() - start, "log_tail": log[-1500:]}
    seconds = time.perf_counter() - start
    if child.returncode != 0 or not result_file.is_file():
        return {"status": "failed", "exit": child.returncode, "seconds": seconds,
                "log_tail": log[-3000:]}
    return {"status": "ok", "seconds": seconds, **json.loads(result_file.read_text())}


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Every part in order while the budget lasts; `args.out` is rewritten after each."""
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": args.device, "tiny": args.tiny, **machine(),
                              "budget_s": args.budget, "parts": {}}
    deadline = time.monotonic() + args.budget
    for name in args.parts:
        left = deadline - time.monotonic()
        limit = min(args.limits.get(name, LIMIT_S[name]), left)
        if left < 5:  # not enough for a process to start
            report["parts"][name] = {"status": "not run", "reason": "the budget was spent"}
        else:
            print(f"gpu_check: {name} (at most {limit:.0f} s)", flush=True)
            report["parts"][name] = run_part(name, limit, args, work)
            print(f"gpu_check: {name}: {report['parts'][name]['status']} in "
                  f"{report['parts'][name]['seconds']:.1f} s", flush=True)
        save(report, Path(args.out))
    return report


def save(report: dict[str, Any], out: Path) -> None:
    """The report as JSON, parts in the order they ran (save_json would sort them)."""
    from noisy_student.checkpoint import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(report, indent=1, default=str).encode())


def run_child(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # toy sizes: threads only contend (with a busy machine too)
    work = Path(args.work)
    sizes = TINY if args.tiny else FULL
    part = globals()[f"part_{args.part}"]
    save(part(sizes, device, work), work / f"{args.part}.json")


# ---- here: prepare the GPU machine's files, merge its figures ------------------------------

def prepare(folder: Path) -> str:
    """Wheels for Python 3.12 (manylinux, x86-64) of what the GPU machine lacks, at the versions
    installed here, and the Fashion-MNIST files, into `folder`; returns the command to run."""
    from importlib.metadata import version

    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [arg for n in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_17",
                               "manylinux2014", "manylinux1")
                 for arg in ("--platform", f"{n}_x86_64")]
    for name in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                        "cp", *platforms, "-d", str(wheels), f"{name}=={version(name)}"],
                       check=True)
    if not FASHION_FILES.is_dir():  # the end-to-end part would fail there, minutes too late
        raise SystemExit(f"gpu_check: no Fashion-MNIST files in {FASHION_FILES}: "
                         "apt-get install dataset-fashion-mnist, then prepare again")
    shutil.copytree(FASHION_FILES, folder / "fashion-mnist", dirs_exist_ok=True)
    return device_command()


def device_command(out: str = "$OUT/gpu.json") -> str:
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
            f"--target /tmp/site {PREPARED}/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD "
            f"NOISY_STUDENT_FASHION_MNIST=$PWD/{PREPARED}/fashion-mnist PYTHONUNBUFFERED=1 && "
            f"python3 tools/gpu_check.py --out {out}")


def merge(file: Path, results: Path, markdown: Path) -> None:
    """`file` into `results` (section "gpu", with this checkout's code state) and the report."""
    from bench_runs import code_state, package_code

    from noisy_student.checkpoint import load_json, save_json

    gpu = load_json(file)
    data = load_json(results) if results.is_file() else {}
    data["gpu"] = gpu
    data.setdefault("runs", {})["gpu"] = {
        "command": "python tools/gpu_check.py",
        "provenance": {**code_state(), "versions": gpu["versions"], "machine": gpu["machine"],
                       "date": gpu["date"]}}
    save_json(results, data)
    bench_report.write(data, markdown, results.parent / "rounds.png", package_code())


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="On the GPU machine, after `prepare`:\n  "
                                + device_command())
    p.add_argument("what", nargs="*", help="nothing (run the check), `prepare`, or `merge FILE`")
    p.add_argument("--out", default="runs/gpu_check.json", help="the figures (JSON)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="toy sizes: every path in about a minute")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all the parts")
    p.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS",
                   help="one part's limit (default: %s)" % LIMIT_S)
    p.add_argument("--work", help="where the runs go (default: a temporary folder)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results.json"))
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    try:
        args.limits = {k: float(v) for k, v in (item.split("=", 1) for item in args.limit)}
    except ValueError:
        p.error("--limit takes PART=SECONDS")
    if set(args.limits) - set(PARTS):
        p.error(f"--limit: no part named {sorted(set(args.limits) - set(PARTS))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.part:
        run_child(args)
    elif args.what[:1] == ["prepare"]:
        print(prepare(ROOT / PREPARED))
    elif args.what[:1] == ["merge"] and len(args.what) == 2:
        merge(Path(args.what[1]), Path(args.results), Path(args.markdown))
    elif args.what:
        print(f"gpu_check: unknown command {' '.join(args.what)!r}", file=sys.stderr)
        return 2
    else:
        report = check(args)
        bad = [n for n, p in report["parts"].items() if p["status"] != "ok"]
        print(f"gpu_check: {len(report['parts']) - len(bad)} of {len(report['parts'])} parts "
              f"measured{'; not: ' + ', '.join(bad) if bad else ''}; figures in {args.out}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
