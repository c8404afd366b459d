"""Export a finished run's model to ONNX and TorchScript, checked, with a model card.

    python tools/export.py runs/digits [--round K|last|teacher] [--out DIR] [--opset N]

Writes to `<run>/export/<round_K|teacher>/` unless `--out` says otherwise:

  model.onnx       torch.onnx.export (the default, torch.export-based exporter; the
                   TorchScript-based one, dynamo=False, only if that fails): input "input"
                   float32 [batch, C, H, W], batch axis dynamic; output "logits" [batch, classes]
  model.pt         torch.jit.trace of the model in eval mode
  model_card.md    classes, input size, channels and normalization, training data, ladder and
  model_card.json  round, test accuracy, the measured export differences, the files' sha256

Both exports are run on a batch of the run's test images (normalized as in training) and on a
single image, with onnxruntime and torch.jit.load, and must match PyTorch within 1e-4 (max
absolute difference of the logits); otherwise the exit status is 1. Bad input: exit status 2.
Needs the `export` extra: pip install -e '.[export]'.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from noisy_student.artifacts import ArtifactError, FinishedRun, open_run
from noisy_student.checkpoint import file_sha256, load_json
from noisy_student.data import to_tensor
from noisy_student.errors import NoisyStudentError

TOLERANCE = 1e-4  # max abs difference of the logits, export vs PyTorch
CHECK_IMAGES = 32


def parse_phase(text: str) -> str | int:
    """"last" | "teacher" | a round number."""
    if text in ("last", "teacher"):
        return text
    if text.isdigit():
        return int(text)
    raise ArtifactError(f"--round {text!r}: give a round number, 'last' or 'teacher'")


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                opset: int | None) -> str:
    """Write `path` (dynamic batch axis); returns which exporter did it."""
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
    stale = [path, path.with_name(path.name + ".data")]  # an earlier export's
    for f in stale:
        f.unlink(missing_ok=True)
    try:  # the default exporter (torch.export; needs onnxscript)
        torch.onnx.export(model, (example,), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=opset, external_data=big,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                          verbose=False)
        return "torch.onnx.export (default, torch.export-based)"
    except Exception as e:  # noqa: BLE001  any failure of it: try the older exporter
        print(f"the default ONNX exporter failed ({type(e).__name__}: {str(e)[:200]}); "
              "trying dynamo=False", file=sys.stderr)
    for f in stale:
        f.unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=opset or 17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return "torch.onnx.export (dynamo=False, TorchScript-based)"


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    """Trace in eval mode, save, and load back."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but .pt is what libtorch loads
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(model, example).save(str(path))
        return torch.jit.load(str(path))


def check_images(run: FinishedRun, n: int) -> torch.Tensor:
    """Up to n of the run's test images, normalized: float32 [b, C, H, W], b >= 2."""
    splits = run.splits()
    images = splits.test.images if len(splits.test) else splits.unlabeled.images
    batch = np.asarray(images[:n])  # [b, H, W, C]
    if len(batch) < 2:  # a batch of one would not show the batch axis is dynamic
        batch = np.concatenate([batch] * 2)
    return to_tensor(batch, run.mean, run.std)


def measure(model: nn.Module, onnx_path: Path, scripted: Any,
            x: torch.Tensor) -> dict[str, float]:
    """Max abs difference of each export's logits from PyTorch's, on x and on x[:1]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diffs = {"onnx": 0.0, "torchscript": 0.0}
    with torch.no_grad():
        for batch in (x, x[:1]):
            ref = model(batch).numpy()  # [b, num_classes]
            out = session.run(None, {name: batch.numpy()})[0]
            diffs["onnx"] = max(diffs["onnx"], float(np.abs(out - ref).max()))
            traced = scripted(batch).numpy()
            diffs["torchscript"] = max(diffs["torchscript"], float(np.abs(traced - ref).max()))
    return diffs


def build_card(run: FinishedRun, which: str | int, weights: Path, x: torch.Tensor,
               model: nn.Module, exporter: str, opset: int, diffs: dict[str, float],
               files: dict[str, str]) -> dict[str, Any]:
    rung = 0 if which == "teacher" else int(which) + 1
    folder = "teacher" if which == "teacher" else f"round_{which}"
    test = load_json(run.root / folder / "metrics.json", dict).get("test", {})
    import onnx
    import onnxruntime

    c, h, w = x.shape[1:]
    return {
        "name": run.config.name,
        "phase": "round 0's labels-only teacher" if which == "teacher"
        else f"round {which}'s student",
        "round": None if which == "teacher" else int(which),
        "architecture": run.config.model_for(rung),
        "parameters": sum(p.numel() for p in model.parameters()),
        "classes": run.classes,
        "input": {"name": "input", "shape": ["batch", c, h, w], "dtype": "float32",
                  "layout": "NCHW", "image_size": [h, w], "channels": c,
                  "color": "grayscale" if c == 1 else "RGB",
                  "normalization": "x = (pixel / 255 - mean) / std, per channel",
                  "mean": run.mean, "std": run.std},
        "output": {"name": "logits", "shape": ["batch", len(run.classes)],
                   "meaning": "class logits; softmax over the last axis gives probabilities"},
        "training_data": {"source": run.record.get("source"), **run.record.get("counts", {}),
                          "test_from": run.record.get("test_from"),
                          "seed": run.record.get("seed")},
        "ladder": list(run.config.model.ladder),
        "rounds": {"configured": run.config.rounds, "finished": run.rounds()},
        "test": {k: test.get(k) for k in ("top1", "top5", "ece", "nll", "n")},
        "export": {"onnx_exporter": exporter, "opset": opset, "torch": torch.__version__,
                   "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                   "checked_on": f"{len(x)} test images, then 1", "tolerance": TOLERANCE,
                   "max_abs_diff": diffs},
        "weights": {"path": str(weights.relative_to(run.root)), "sha256": file_sha256(weights)},
        "files": files,
    }


def card_markdown(card: dict[str, Any]) -> str:
    i, d, t, e = card["input"], card["training_data"], card["test"], card["export"]
    diff = e["max_abs_diff"]

    def percent(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    ece = "-" if t["ece"] is None else f"{t['ece']:.4f}"
    return "\n".join([
        f"# {card['name']}: {card['phase']} ({card['architecture']})", "",
        (f"{card['parameters']:,} parameters, {len(card['classes'])} classes: "
         + ", ".join(f"`{c}`" for c in card["classes"])), "",
        "## Input and output", "",
        (f"- input `{i['name']}`: float32 NCHW `[batch, {i['channels']}, {i['image_size'][0]}, "
         f"{i['image_size'][1]}]` ({i['color']}), batch axis dynamic"),
        (f"- normalization: `{i['normalization']}`, mean `{i['mean']}`, std `{i['std']}` "
         "(0..1 scale)"),
        f"- output `logits`: `[batch, {len(card['classes'])}]`; softmax gives probabilities", "",
        "## Training", "",
        (f"- data: `{d['source']}`, {d.get('labeled')} labeled, {d.get('unlabeled')} "
         f"unlabeled, {d.get('test')} test images (seed {d['seed']})"),
        (f"- ladder: {' -> '.join(card['ladder'])}; this is {card['phase']} (rounds "
         f"configured {card['rounds']['configured']}, finished {card['rounds']['finished']})"),
        (f"- test top-1 {percent(t['top1'])}, top-5 {percent(t['top5'])}, ECE {ece} on "
         f"{t['n']} images"), "",
        "## Export", "",
        (f"- ONNX: {e['onnx_exporter']}, opset {e['opset']}; torch {e['torch']}, onnx "
         f"{e['onnx']}, onnxruntime {e['onnxruntime']}"),
        (f"- max abs difference of the logits from PyTorch ({e['checked_on']}): ONNX "
         f"{diff['onnx']:.3g}, TorchScript {diff['torchscript']:.3g} (tolerance "
         f"{e['tolerance']:g})"), "",
        "## Files (sha256)", "",
        *(f"- `{name}`: `{digest}`" for name, digest in card["files"].items()),
        f"- weights `{card['weights']['path']}`: `{card['weights']['sha256']}`", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--round", default="last", help="round number, 'last' (default) or 'teacher'")
    p.add_argument("--out", type=Path, help="output folder (default <run>/export/<phase>)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    args = p.parse_args(argv)
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"{p.prog}: error: {e.name} is not installed (pip install -e '.[export]')",
              file=sys.stderr)
        return 2
    try:
        if args.opset is not None and args.opset < 7:
            raise ValueError(f"--opset {args.opset}: ONNX opsets start at 7")
        run = open_run(args.run)
        which = parse_phase(args.round)
        rung, weights = run.phase(which)
        which = "teacher" if which == "teacher" else rung - 1
        model = run.model(which)
        x = check_images(run, CHECK_IMAGES)  # [b, C, H, W]
    except (NoisyStudentError, ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    out = args.out or run.root / "export" / ("teacher" if which == "teacher" else f"round_{which}")
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, pt_path = out / "model.onnx", out / "model.pt"
    exporter = export_onnx(model, x, onnx_path, args.opset)
    scripted = export_torchscript(model, x, pt_path)
    diffs = measure(model, onnx_path, scripted, x)
    opset = next(o.version for o in onnx.load(str(onnx_path), load_external_data=False)
                 .opset_import if o.domain in ("", "ai.onnx"))
    files = {f.name: file_sha256(f) for f in (onnx_path, out / "model.onnx.data", pt_path)
             if f.is_file()}
    card = build_card(run, which, weights, x, model, exporter, opset, diffs, files)
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "model_card.md").write_text(card_markdown(card))
    print(f"{card['phase']} ({card['architecture']}) -> {out}\n  ONNX: {exporter}, opset "
          f"{opset}\n  max abs difference from PyTorch: ONNX {diffs['onnx']:.3g}, TorchScript "
          f"{diffs['torchscript']:.3g}")
    bad = [k for k, v in diffs.items() if not v <= TOLERANCE]
    if bad:
        print(f"{p.prog}: error: {', '.join(bad)} differ from PyTorch by more than "
              f"{TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
