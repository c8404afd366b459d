"""The shipping tools on one tiny finished run: inspect_pseudo_labels, plot_rounds, export
(ONNX + TorchScript, checked here with onnxruntime too) and `noisy-student predict`."""

import hashlib
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisy_student import cli
from noisy_student.artifacts import open_run
from noisy_student.data import to_tensor

ROOT = Path(__file__).resolve().parents[1]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    """Two rounds on a small slice of digits (conftest's tiny config), made once."""
    return tiny_run


def _tool(name: str):
    return runpy.run_path(str(ROOT / "tools" / f"{name}.py"))


def test_inspect_pseudo_labels(run_dir, capsys):
    tool = _tool("inspect_pseudo_labels")
    assert tool["main"]([str(run_dir), "--round", "1", "--per-class", "3"]) == 0
    printed = capsys.readouterr().out
    out = run_dir / "inspect" / "round_1"
    stats = json.loads((run_dir / "round_1" / "metrics.json").read_text())["pseudo_labels"]
    report = json.loads((out / "inspect.json").read_text())
    assert report["stats"]["accuracy"] == pytest.approx(stats["accuracy"])
    assert [r["items"] for r in report["per_class"]] == stats["per_class"]
    assert f"{100 * stats['accuracy']:.1f}% of kept images" in printed
    assert _png_size(out / "confidence.png") == (600, 400)  # (6, 4) inches at 100 dpi
    assert _png_size(out / "kept_per_class.png") == (600, 400)
    assert _png_size(out / "confusion.png") == (700, 700)  # 10 classes: 0.5 * 10 + 2 inches
    matrix = np.array(report["confusion"])
    assert matrix.sum() == stats["unlabeled"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(stats["accuracy_all"])
    predicted = [r["class"] for r in report["per_class"] if r["predicted"]]
    grids = sorted(out.glob("class_*.png"))
    assert [g.stem for g in grids] == [f"class_{c}_{c}" for c in predicted]
    for g in grids:
        assert _png_size(g) == (450, 400)  # 3 columns of 1.5 in; 2 rows of 1.75 + 0.5 in


def test_inspect_out_and_bad_round(run_dir, tmp_path, capsys):
    main = _tool("inspect_pseudo_labels")["main"]
    assert main([str(run_dir), "--round", "0", "--per-class", "1", "--out",
                 str(tmp_path / "i")]) == 0
    assert _png_size(tmp_path / "i" / "confidence.png") == (600, 400)
    capsys.readouterr()
    assert main([str(run_dir), "--round", "9"]) == 2
    assert "round_9" in _one_line_error(capsys)


def test_plot_rounds(run_dir, tmp_path, capsys):
    tool = _tool("plot_rounds")
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("inspect", "export"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, name="other")))
    png = tmp_path / "rounds.png"
    assert tool["main"]([str(run_dir), str(other), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "other" in printed and "teacher" in printed
    assert _png_size(png) == (1500, 400)  # (15, 4) inches at 100 dpi
    curves = tool["load_curves"](open_run(run_dir), "tiny")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert curves.top1[-1] == pytest.approx(summary["teacher"]["top1"])
    for k in (0, 1):
        m = json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())
        assert curves.top1[k] == pytest.approx(m["test"]["top1"])
        assert curves.pl_accuracy[k] == pytest.approx(m["pseudo_labels"]["accuracy"])
        assert curves.kept_fraction[k] == pytest.approx(m["pseudo_labels"]["kept_fraction"])
    assert tool["main"]([str(tmp_path / "nothing")]) == 2
    assert "not inside a run directory" in _one_line_error(capsys)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_matches_pytorch(run_dir, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    assert _tool("export")["main"]([str(run_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    run = open_run(run_dir)
    model = run.model("last")
    x = to_tensor(run.splits().test.images[:5], run.mean, run.std)  # [5, 1, 8, 8]
    with torch.no_grad():
        ref = model(x).numpy()  # [5, 10]
        traced = torch.jit.load(str(out / "model.pt"))(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [1, 8, 8] and not isinstance(inp.shape[0], int)  # dynamic batch
    for batch in (x, x[:1]):
        got = session.run(None, {inp.name: batch.numpy()})[0]
        assert np.abs(got - ref[:len(batch)]).max() < 1e-4
    assert np.abs(traced - ref).max() < 1e-4
    card = json.loads((out / "model_card.json").read_text())
    metrics = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    assert card["round"] == 1 and card["architecture"] == "cnn_small"
    assert card["classes"] == [str(c) for c in range(10)]
    assert card["input"]["shape"] == ["batch", 1, 8, 8] and card["input"]["mean"] == run.mean
    assert card["training_data"]["labeled"] == 50 and card["training_data"]["test"] == 100
    assert card["test"]["top1"] == pytest.approx(metrics["test"]["top1"])
    assert max(card["export"]["max_abs_diff"].values()) < 1e-4
    for name in ("model.onnx", "model.pt"):
        assert card["files"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    text = (out / "model_card.md").read_text()
    assert "cnn_small" in text and str(run.mean[0]) in text and card["files"]["model.pt"] in text


def test_export_bad_input(run_dir, tmp_path, capsys):
    main = _tool("export")["main"]
    for argv, words in (([str(run_dir), "--round", "9"], "not finished"),
                        ([str(run_dir), "--round", "latest"], "--round"),
                        ([str(tmp_path)], "not inside a run directory")):
        assert main(argv) == 2
        assert words in _one_line_error(capsys)


def _save_test_images(run_dir: Path, folder: Path, n: int) -> tuple[list[str], np.ndarray]:
    images = open_run(run_dir).splits().test.images[:n]  # uint8 [n, 8, 8, 1], 0..255 already
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"digit_{i}.png"))
        Image.fromarray(image[..., 0]).save(paths[-1])
    return paths, images


@pytest.mark.parametrize("checkpoint", ["run", "round_0/student.safetensors"])
def test_predict_top1_is_the_models_argmax(run_dir, tmp_path, capsys, checkpoint):
    paths, images = _save_test_images(run_dir, tmp_path, 3)
    target = run_dir if checkpoint == "run" else run_dir / checkpoint
    cli.main(["predict", str(target), *paths, "--top-k", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    run = open_run(run_dir)
    with torch.no_grad():
        probs = run.model("last" if checkpoint == "run" else 0)(
            to_tensor(images, run.mean, run.std)).softmax(1)  # [3, 10]
    assert result["phase"] == ("round 1" if checkpoint == "run" else "round 0")
    for row, p, path in zip(result["predictions"], probs, paths):
        assert row["file"] == path and len(row["top_k"]) == 3
        assert row["top_k"][0]["index"] == int(p.argmax())
        assert row["top_k"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    cli.main(["predict", str(target), *paths, "--top-k", "2"])  # the table, same batch
    lines = capsys.readouterr().out.splitlines()
    for i, (path, p) in enumerate(zip(paths, probs)):
        assert lines[1 + 3 * i] == path
        assert lines[2 + 3 * i].split()[:2] == ["1.", run.classes[int(p.argmax())]]


def test_predict_bad_inputs(run_dir, tmp_path, capsys):
    paths, _ = _save_test_images(run_dir, tmp_path, 1)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for argv, words in (([str(run_dir), paths[0], str(text)], f"{text}: not an image file"),
                        ([str(run_dir), str(tmp_path / "missing.png")], "missing.png"),
                        ([str(tmp_path), paths[0]], "not inside a run directory"),
                        ([str(run_dir / "round_0" / "pseudo_labels.npz"), paths[0]],
                         "not a model of the run")):
        with pytest.raises(SystemExit) as e:
            cli.main(["predict", *argv])
        assert e.value.code == 2
        assert words in _one_line_error(capsys)
