"""Command line: recipe arguments and the `noisy-student` console script.

A recipe is a Python script that builds a `Config` and calls `run_recipe(config)`; these two
are the same run:

    python recipes/digits.py --rounds 2 --out runs/try --set loss.temperature=2
    noisy-student run recipes/digits.py --rounds 2 --out runs/try --set loss.temperature=2

and a finished run's model classifies image files (top-k classes with probabilities):

    noisy-student predict runs/try img1.png img2.png [--top-k 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError

_LAUNCHER = "NOISY_STUDENT_LAUNCHER"  # set by `noisy-student run`, for the resume command


def recipe_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, help="number of Noisy Student rounds")
    p.add_argument("--out", help="run directory (default: the recipe's, runs/<name>)")
    p.add_argument("--name", help="experiment name")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="a config.json to start from instead of the recipe's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set loss.temperature=2 (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in an existing run directory (its files are deleted)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest valid checkpoint: same round, "
                        "epoch, step and data order")
    p.add_argument("--allow-config-change", nargs="+", default=[], metavar="KEY",
                   help="with --resume: config keys (or whole sections) allowed to differ from "
                        "the saved config")
    p.add_argument("--from-round", type=int, metavar="K",
                   help="start again at round K (0-based), keeping rounds < K; rounds >= K of "
                        "the old run are moved to <out>/previous/")
    p.add_argument("--teacher", metavar="PATH",
                   help="with --from-round K: round K's teacher weights (.safetensors or .ckpt)")
    p.add_argument("--from-run", metavar="DIR",
                   help="with --from-round K: branch from the run in DIR into a new --out")
    p.add_argument("--force", action="store_true",
                   help="go on past the sanity gate after round 0's teacher (a teacher near "
                        "chance, pseudo-labels covering few classes)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config(config: Config, args: argparse.Namespace) -> Config:
    """Recipe config <- --config file <- --set overrides <- --rounds/--out/--name/--seed."""
    if args.config:
        config = Config.load(args.config)
    overrides = list(args.overrides)
    for key in ("rounds", "out", "name", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return config.with_overrides(overrides) if overrides else config


def run_recipe(config: Config, argv: Sequence[str] | None = None,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               configure: Callable[[Config, argparse.Namespace], Config] | None = None) -> Any:
    """Parse the recipe command line, resolve the config and run the loop.

    `add_arguments` adds recipe-specific flags; `configure(config, args)` applies them.
    Configuration errors are printed (all problems at once) with exit status 2.
    """
    from .errors import NoisyStudentError
    from .loop import run
    from .signals import Interrupted

    parser = recipe_parser(sys.modules["__main__"].__doc__)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if configure is not None:
            config = configure(config, args)
        config = resolve_config(config, args)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    if args.print_config:
        print(config.to_json())
        return None
    try:
        return run(config, overwrite=args.overwrite, resume=args.resume,
                   from_round=args.from_round, teacher=args.teacher, from_run=args.from_run,
                   allow_config_change=tuple(args.allow_config_change), force=args.force)
    except NoisyStudentError as e:  # ConfigError, DataError, RunDirError, TrainingError, ...
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except Interrupted as e:
        command = resume_command(list(sys.argv[1:] if argv is None else argv))
        saved = (f"checkpoint written: {e.checkpoint}" if e.checkpoint is not None
                 else "nothing to save at this point; that phase restarts on resume")
        print(f"\n{parser.prog}: {e}\n{saved}\nresume with:\n  {command}", file=sys.stderr,
              flush=True)
        sys.exit(e.exit_code)


# flags that choose how a run starts: dropped from the resume command (with their values)
_START_FLAGS = {"--overwrite": 0, "--resume": 0, "--print-config": 0, "--from-round": 1,
                "--teacher": 1, "--from-run": 1}


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: the same launcher, recipe and config flags, and
    --resume in place of --overwrite / --from-round / --teacher / --from-run."""
    kept, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        flag = token.split("=", 1)[0]
        if flag in _START_FLAGS:
            skip = 0 if "=" in token else _START_FLAGS[flag]
            continue
        kept.append(token)
    recipe = sys.argv[0]
    if os.environ.get(_LAUNCHER) == "noisy-student":
        launcher = ["noisy-student", "run", recipe]
    else:
        python = Path(sys.executable)
        launcher = [python.name if shutil.which(python.name) == str(python) else str(python),
                    recipe]
    return shlex.join([*launcher, *kept, "--resume"])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="noisy-student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a recipe script (its own flags follow it)",
                           add_help=False)
    run_p.add_argument("recipe", help="path to a recipe .py file")
    predict_p = sub.add_parser("predict", help="classify image files with a finished run's model")
    predict_p.add_argument("checkpoint", help="a run directory (its last finished round), or a "
                           "weights file inside one (teacher/model.safetensors, "
                           "round_K/student.safetensors)")
    predict_p.add_argument("images", nargs="+", help="image files")
    predict_p.add_argument("--top-k", type=int, default=5,
                           help="classes shown per image (default 5)")
    predict_p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if argv[:1] == ["run"] and len(argv) >= 2:
        recipe, rest = argv[1], argv[2:]
        path = Path(recipe)
        if not path.is_file():
            parser.exit(2, f"noisy-student run: no recipe file {recipe!r}\n")
        sys.argv = [str(path), *rest]
        os.environ[_LAUNCHER] = "noisy-student"
        runpy.run_path(str(path), run_name="__main__")
        return
    args = parser.parse_args(argv)
    if args.command == "predict":
        from .classify_files import main as predict  # imports torch: only when predicting

        error = predict(args)
        if error is not None:
            parser.exit(2, f"noisy-student predict: error: {error}\n")


if __name__ == "__main__":
    main()
