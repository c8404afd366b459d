"""The run directory: its layout, completion manifests, and how a run starts over an old one.

runs/<name>/
  config.json  splits.json  summary.json  metrics.jsonl  wandb.json (wandb group and run ids)
  wandb/     wandb's own files (offline runs to sync), when tracking is on
  teacher/   model.safetensors  metrics.json  DONE  checkpoints/step-*.ckpt   round 0's teacher
  round_K/   pseudo_labels.npz  student.safetensors  metrics.json  DONE  checkpoints/step-*.ckpt
             teacher.safetensors (after --from-round K --teacher PATH: the teacher it was given)
  previous/<UTC time>/   what --from-round moved aside (later rounds, the old config, summary)

A folder without DONE is incomplete; DONE is written last and lists the folder's files with
their sizes and sha256. Nothing of a run is deleted except by --overwrite.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import RunDirError, file_sha256, load_json, save_json
from .config import Config, ConfigError

DONE = "DONE"
RUN_FILES = ("config.json", "splits.json", "summary.json", "metrics.jsonl", "wandb.json")


class RunDir:
    """Paths and completion markers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def holds_run(self) -> bool:
        return (self.root / "config.json").is_file()

    def check_free(self, overwrite: bool = False) -> None:
        """Refuse a directory that already holds a run unless `overwrite`."""
        if self.root.exists() and any(self.root.iterdir()) and not overwrite:
            raise RunDirError(f"{self.root} already holds a run; choose another --out, continue it "
                              "with --resume, restart from a round with --from-round K, or "
                              "pass --overwrite to replace it")

    def create(self, overwrite: bool = False) -> None:
        """Make the directory; with `overwrite`, first delete the old run's own files and folders
        (other files are left alone)."""
        self.check_free(overwrite)
        if overwrite and self.root.is_dir():
            for path in self.root.iterdir():
                if path.name in RUN_FILES or path.name in ("teacher", "previous", "wandb") \
                        or path.name.startswith("round_"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise RunDirError(f"{self.root} is not writable")

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def round(self, k: int) -> Path:
        return self.root / f"round_{k}"

    def rounds(self) -> list[int]:
        """Indices of the round folders present, in order."""
        found = [p.name[len("round_"):] for p in self.root.glob("round_*") if p.is_dir()]
        return sorted(int(k) for k in found if k.isdigit())

    def is_done(self, folder: Path) -> bool:
        return (folder / DONE).is_file()

    def mark_done(self, folder: Path) -> None:
        """Write DONE last, listing the folder's files (not sub-folders) with sizes and sha256."""
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in sorted(folder.iterdir())
                 if p.is_file() and p.name != DONE and not p.name.startswith(".")}
        save_json(folder / DONE, {"files": files})

    def verify(self, folder: Path) -> None:
        """Check a finished folder against its DONE manifest; names the first bad file."""
        for name, expected in manifest(folder / DONE).items():
            path = folder / name
            if path.is_symlink():
                raise RunDirError(f"{path}: a symbolic link; a run's files are its own (links "
                                  "out of the run directory are refused)")
            if not path.is_file():
                raise RunDirError(f"{path}: listed in {folder / DONE} but missing")
            if path.stat().st_size != expected["bytes"]:
                raise RunDirError(f"{path}: {path.stat().st_size} bytes, its DONE manifest says "
                                  f"{expected['bytes']} (truncated or changed)")
            if file_sha256(path) != expected["sha256"]:
                raise RunDirError(f"{path}: sha256 differs from its DONE manifest (corrupt or "
                                  "changed)")

    # ---- starting over part of a run --------------------------------------------------------
    def move_aside(self, names: list[str]) -> Path | None:
        """Move the named entries into `previous/<UTC time>/` (never deletes); returns it."""
        present = [n for n in names if (self.root / n).exists()]
        if not present:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.root / "previous" / stamp
        suffix = 1
        while target.exists():
            target, suffix = self.root / "previous" / f"{stamp}-{suffix}", suffix + 1
        target.mkdir(parents=True)
        for name in present:
            os.replace(self.root / name, target / name)
        return target

    def copy_from(self, source: RunDir, names: list[str]) -> None:
        """Hard-link (or copy) the named folders and files of `source` into this run.

        Run files are only ever replaced, never modified in place, so links are safe."""
        for name in names:
            src, dst = source.root / name, self.root / name
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=_link_or_copy)
            elif src.is_file():
                _link_or_copy(src, dst)


def manifest(path: Path) -> dict[str, dict[str, Any]]:
    """A DONE manifest's files: name -> {"bytes", "sha256"}. Each name must be a file of the
    folder itself (no path, no `..`): a damaged or crafted manifest cannot point elsewhere."""
    files = load_json(path, dict).get("files")
    if not isinstance(files, dict):
        raise RunDirError(f"{path}: damaged manifest (no \"files\" mapping)")
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
            raise RunDirError(f"{path}: damaged manifest: {name!r} is not a file name of this "
                              "folder")
        if not (isinstance(entry, dict) and type(entry.get("bytes")) is int
                and isinstance(entry.get("sha256"), str)):
            raise RunDirError(f"{path}: damaged manifest entry for {name!r}")
    return files


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved, now) for every leaf that differs."""
    a, b = _flatten(saved), _flatten(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_config_change(path: Path, config: Config, allowed: tuple[str, ...] = ()) -> list[str]:
    """Refuse a config that differs from the saved one at `path`, except in `allowed` keys (a
    section name allows all of its keys). Returns the allowed differences, one line each.

    `out` is where the run lies now, not what it computes: a run directory moved or copied
    elsewhere resumes there, and its config.json is rewritten with the new place."""
    if not path.is_file():
        raise RunDirError(f"{path.parent}: nothing to resume (no config.json); start the run "
                          "without --resume")
    known = _flatten(config.to_dict())
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    unknown = [a for a in allowed if a not in known and a not in sections]
    if unknown:
        names = sorted(known) + sorted(sections)
        raise ConfigError([f"--allow-config-change {a!r} is not a config key" + (
            f" (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(a, names, n=1)) else "") for a in unknown])
    diff = config_diff(load_json(path, dict), config.to_dict())
    diff.pop("out", None)
    lines = {k: f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in diff.items()}
    refused = [k for k in diff if not any(k == a or k.startswith(a + ".") for a in allowed)]
    if refused:
        raise ConfigError([f"the config differs from {path}:", *(lines[k] for k in refused),
                           "pass --allow-config-change KEY for each key that may change"])
    return [lines[k] for k in diff]


# ---- how a run starts -------------------------------------------------------------------------

@dataclass(frozen=True)
class RunStart:
    """How a run begins, relative to what its directory already holds.

    fresh (default): the directory must be empty; `overwrite`: replace the run in it;
    `resume`: continue it from its newest checkpoint; `from_round=K`: keep rounds < K of the run
    in `from_run` (default: the same directory), start again at round K, with round K's teacher
    from `teacher` (any weights file) when given. A branch (`from_run` elsewhere) links the kept
    rounds into the new directory; in place, rounds >= K are moved aside to previous/.
    """

    overwrite: bool = False
    resume: bool = False
    from_round: int | None = None
    teacher: str | None = None
    from_run: str | None = None
    allow_config_change: tuple[str, ...] = ()
    force: bool = False  # go on past the sanity gate after round 0's teacher (sanity.py)

    def problems(self, rounds: int) -> list[str]:
        p = []
        if self.resume and self.from_round is not None:
            p.append("--resume and --from-round exclude each other: --resume continues where "
                     "the run stopped, --from-round K starts again at round K")
        if self.overwrite and (self.resume or self.from_round is not None):
            p.append("--overwrite replaces the run; it cannot go with --resume or --from-round")
        if self.from_round is None and (self.teacher or self.from_run):
            p.append("--teacher and --from-run need --from-round K")
        if self.from_round is not None and not 0 <= self.from_round < rounds:
            p.append(f"--from-round {self.from_round}: rounds are numbered 0..{rounds - 1}")
        if self.allow_config_change and not self.resume:
            p.append("--allow-config-change goes with --resume (--from-round accepts any change)")
        return p


def check_writable(root: Path) -> None:
    """Refuse a run directory that cannot be written (tried with a probe file in it or in its
    nearest existing parent: permission bits alone do not tell, e.g. for root or read-only
    mounts)."""
    probe = Path(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{root}: {probe} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".noisy-student-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(f"{root}: not writable ({probe}: {e.strerror or e}); choose another "
                          "--out") from e


def open_run(config: Config, start: RunStart) -> tuple[RunDir, RunDir, list[str]]:
    """Check that the run can start as asked, before any work: (run dir, source, config changes).

    The source is the run whose finished parts are kept (the run dir itself unless branching)."""
    problems = start.problems(config.rounds)
    if problems:
        raise ConfigError(problems)
    run_dir = RunDir(config.out_dir)
    check_writable(run_dir.root)
    if start.resume:
        return run_dir, run_dir, check_config_change(run_dir.root / "config.json", config,
                                                     start.allow_config_change)
    if start.from_round is None:
        run_dir.check_free(start.overwrite)
        return run_dir, run_dir, []
    source = RunDir(start.from_run) if start.from_run else run_dir
    if not source.holds_run():
        hint = "" if start.from_run else "; to branch from another run, add --from-run OLD_DIR"
        raise RunDirError(f"{source.root}: no run to restart from (no config.json){hint}")
    if source.root.resolve() != run_dir.root.resolve():
        run_dir.check_free()
    if start.teacher and not Path(start.teacher).is_file():
        raise RunDirError(f"--teacher {start.teacher}: no such file")
    need = [source.teacher, *(source.round(j) for j in range(start.from_round))]
    for folder in need:
        if not source.is_done(folder):
            raise RunDirError(f"{folder} is not finished, so --from-round {start.from_round} "
                              "cannot start after it; continue the run with --resume")
        source.verify(folder)
    changes = config_diff(load_json(source.root / "config.json", dict), config.to_dict())
    return run_dir, source, [f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changes.items()]


def prepare_run_dir(run_dir: RunDir, source: RunDir, config: Config, start: RunStart,
                    splits: dict[str, Any], changes: list[str]) -> Path | None:
    """Write what the run starts with; returns where an older run's round folders are (whose
    pseudo-labels may be reused), if any."""
    if start.resume or start.from_round is not None:
        saved = load_json(source.root / "splits.json", dict)
        if saved != json.loads(json.dumps(splits)):
            raise RunDirError(f"{source.root / 'splits.json'}: the data splits made now differ "
                              "from the saved ones (has the data or data config changed?)")
    previous = None
    if start.resume:
        if changes:
            moved = run_dir.move_aside(["config.json"])
            print(f"resume: allowed config changes (old config in {moved}):\n  "
                  + "\n  ".join(changes), flush=True)
    elif start.from_round is not None:
        k = start.from_round
        if source is run_dir:
            later = [f"round_{j}" for j in run_dir.rounds() if j >= k]
            previous = run_dir.move_aside([*later, "summary.json", "config.json"])
            if previous is not None:
                print(f"--from-round {k}: moved {', '.join(later) or 'nothing'} and the old "
                      f"config and summary to {previous}", flush=True)
        else:
            run_dir.create()
            run_dir.copy_from(source, ["splits.json", "teacher",
                                       *(f"round_{j}" for j in range(k))])
            previous = source.root
            print(f"--from-round {k}: branch of {source.root} in {run_dir.root} (rounds < {k} "
                  "linked)", flush=True)
        if changes:
            print(f"--from-round {k}: config changes from round {k} on:\n  "
                  + "\n  ".join(changes), flush=True)
    else:
        run_dir.create(start.overwrite)
        save_json(run_dir.root / "splits.json", splits)
    save_json(run_dir.root / "config.json", config.to_dict())
    return previous
