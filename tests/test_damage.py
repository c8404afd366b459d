"""Damaged run directories: every kind of file a finished run holds, damaged every way, read by
every reader (--resume, --from-round, the tools, `noisy-student predict`), gives either a
correct result or exit status 2 with one message naming the file. Never a traceback.

`--resume` meets every (file, damage) pair; each other reader a seeded sample of them (the whole
matrix would take minutes), a different sample whenever DAMAGE_SEED changes."""

import contextlib
import functools
import io
import json
import os
import random
import re
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisy_student.cli import main as cli_main
from noisy_student.errors import NoisyStudentError
from noisy_student.loop import run

from conftest import make_tiny_config

ROOT = Path(__file__).resolve().parents[1]
DAMAGE_SEED = int(os.environ.get("DAMAGE_SEED", "0"))
# (file, damage) pairs per reader other than --resume; DAMAGE_SAMPLE=1000 runs them all
SAMPLE = int(os.environ.get("DAMAGE_SAMPLE", "8"))

KINDS = ["config.json", "splits.json", "summary.json", "metrics.jsonl", "plan.json",
         "teacher/model.safetensors", "teacher/metrics.json", "teacher/DONE", "teacher/*.ckpt",
         *(f"round_{k}/{name}" for k in (0, 1) for name in (
             "pseudo_labels.npz", "*.probs.npy", "student.safetensors", "metrics.json", "DONE",
             "*.ckpt"))]
TEXT = (".json", ".jsonl", "DONE")


def damages(kind: str) -> list[str]:
    out = ["random bytes", "truncated", "empty"]
    if kind.endswith(TEXT):
        out += ["not UTF-8", "JSON of the wrong shape"]
    if kind.endswith("DONE"):
        out += ["lists a file that is not there"]
    if kind.endswith(".ckpt"):
        out += ["header lies about its length"]
    return out


CASES = [(kind, damage) for kind in KINDS for damage in damages(kind)]


def damage_file(path: Path, damage: str) -> None:
    data = path.read_bytes()
    rng = random.Random(f"{path.name}{damage}")
    new = {"random bytes": lambda: rng.randbytes(max(64, len(data))),
           "truncated": lambda: data[:len(data) // 2],
           "empty": lambda: b"",
           "not UTF-8": lambda: b"\xff\xfe\x00" + data[3:],
           "JSON of the wrong shape": lambda: b'[1, "two", {"three": null}]',
           "lists a file that is not there": lambda: json.dumps({"files": {
               **json.loads(data)["files"], "ghost.bin": {"bytes": 1, "sha256": "0" * 64}}
           }).encode(),
           "header lies about its length": lambda: re.sub(rb'"bytes": \d+', b'"bytes": 12',
                                                          data, count=1)}[damage]()
    path.unlink()  # a new file: the finished run's copy (a hard link) stays as it was
    path.write_bytes(new)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("damage") / "run"
    config = make_tiny_config(out)
    run(config)
    image = tmp_path_factory.mktemp("image") / "digit.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    return config, image


def damaged_copy(finished_run: Path, target: Path, kind: str, damage: str) -> Path:
    """The finished run hard-linked into `target` (files appended to are copied), with one
    file of `kind` damaged; returns that file."""
    shutil.copytree(finished_run, target, copy_function=os.link)
    for appended in target.rglob("*.jsonl"):
        data = appended.read_bytes()
        appended.unlink()
        appended.write_bytes(data)
    folder, _, pattern = kind.rpartition("/")
    found = sorted((target / folder).rglob(pattern))
    assert found, kind
    damage_file(found[-1], damage)
    return found[-1]


def outcome(call) -> tuple[int, str]:
    """(exit status, what was printed to stderr): 0 for a normal return; a package error is
    what the command line turns into status 2 with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = call()
    except NoisyStudentError as e:
        return 2, str(e)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2, err.getvalue() + str(e.code)
    return (code if isinstance(code, int) else 0), err.getvalue()  # run() returns its summary


def check(code: int, message: str, damaged: Path, root: Path) -> None:
    assert "Traceback" not in message, message
    assert code in (0, 2), (code, message)
    if code == 2:
        name = str(damaged.relative_to(root))
        assert name in message or damaged.name in message and damaged.parent.name in message, (
            f"the message does not name {name}: {message}")


@functools.cache
def tool_mains() -> dict:
    return {name: runpy.run_path(str(ROOT / "tools" / f"{name}.py"))["main"]
            for name in ("evaluate", "inspect_pseudo_labels", "plot_rounds", "export")}


def readers(config, image: Path):
    tools = tool_mains()
    return {
        "--resume": lambda out: run(config.with_overrides([f'out="{out}"']), resume=True),
        "--from-round 1": lambda out: run(config.with_overrides([f'out="{out}"']), from_round=1),
        "tools/evaluate.py": lambda out: tools["evaluate"]([str(out), "--out",
                                                            str(out / "eval")]),
        "tools/inspect_pseudo_labels.py": lambda out: tools["inspect_pseudo_labels"](
            [str(out), "--round", "1", "--out", str(out / "inspect")]),
        "tools/plot_rounds.py": lambda out: tools["plot_rounds"]([str(out), "--out",
                                                                  str(out / "plots")]),
        "tools/export.py": lambda out: tools["export"]([str(out), "--out", str(out / "onnx")]),
        "noisy-student predict": lambda out: cli_main(["predict", str(out), str(image)]),
    }


@pytest.mark.parametrize("kind, damage", CASES, ids=[f"{k} {d}" for k, d in CASES])
def test_resume_reads_every_damaged_file_or_names_it(finished, tmp_path, kind, damage):
    config, image = finished
    out = tmp_path / "run"
    damaged = damaged_copy(config.out_dir, out, kind, damage)
    code, message = outcome(lambda: readers(config, image)["--resume"](out))
    check(code, message, damaged, out)


@pytest.mark.parametrize("reader", ["--from-round 1", "tools/evaluate.py",
                                    "tools/inspect_pseudo_labels.py", "tools/plot_rounds.py",
                                    "tools/export.py", "noisy-student predict"])
def test_every_reader_on_a_sample_of_damaged_files(finished, tmp_path, reader):
    config, image = finished
    sample = random.Random(f"{DAMAGE_SEED}{reader}").sample(CASES, min(SAMPLE, len(CASES)))
    failures = []
    for i, (kind, damage) in enumerate(sample):
        out = tmp_path / f"run{i}"
        damaged = damaged_copy(config.out_dir, out, kind, damage)
        code, message = outcome(lambda: readers(config, image)[reader](out))
        try:
            check(code, message, damaged, out)
        except AssertionError as e:
            failures.append(f"{kind}, {damage}: {e}")
    assert not failures, "\n".join(failures)


def test_a_crafted_part_name_cannot_reach_outside_the_run(finished, tmp_path):
    from noisy_student.errors import SoftLabelError
    from noisy_student.pseudo_label import PseudoLabels
    from noisy_student.soft_labels import link_parts

    config, _ = finished
    out = tmp_path / "run"
    shutil.copytree(config.out_dir, out)
    secret = tmp_path / "secret.probs.npy"
    np.save(secret, np.ones((200, 10), np.float16))
    path = out / "round_1" / "pseudo_labels.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    for stem in ("../../secret", str(tmp_path / "secret"), "soft_labels/../../../secret"):
        meta["soft_parts"][0]["stem"] = stem
        np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
        with pytest.raises(SoftLabelError, match="not a file inside this folder"):
            PseudoLabels.load(path)
        with pytest.raises(SoftLabelError, match="not a file inside this folder"):
            link_parts(meta["soft_parts"], out / "round_1", tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
    # a part file that is a symlink out of the run directory is refused the same way
    meta["soft_parts"][0]["stem"] = "soft_labels/part-00000-of-00001"
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    part = out / "round_1" / "soft_labels" / "part-00000-of-00001.probs.npy"
    part.unlink()
    part.symlink_to(secret)
    with pytest.raises(SoftLabelError, match="not a file inside this folder"):
        PseudoLabels.load(path)


def test_a_crafted_manifest_cannot_name_a_file_outside_its_folder(finished, tmp_path):
    config, image = finished
    out = tmp_path / "run"
    shutil.copytree(config.out_dir, out)
    done = out / "round_0" / "DONE"
    files = json.loads(done.read_text())["files"]
    for name in ("../config.json", "/etc/passwd", ".."):
        done.write_text(json.dumps({"files": {**files, name: {"bytes": 1, "sha256": "0"}}}))
        code, message = outcome(lambda: readers(config, image)["--resume"](out))
        assert code == 2 and "round_0/DONE: damaged manifest" in message, message
