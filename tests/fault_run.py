"""Run a recipe with one fault injected, for the crash tests (not a test module itself).

    python tests/fault_run.py FAULT RECIPE [RECIPE ARGS ...]

FAULT is one of
  none                    run normally
  kill-at-step:N          SIGKILL right after the N-th optimizer step of the process
  term-at-step:N          SIGTERM right after the N-th optimizer step (a graceful stop)
  kill-before-train:TAG   SIGKILL when training of phase TAG starts (after its pseudo-labels)
  kill-in-ckpt-write:N    SIGKILL in the middle of writing the N-th checkpoint (half the
                          temporary file written, before it is renamed into place)
  forbid-writes-off-rank0 any file written by a rank other than 0 crashes the job
A fault prefixed `rankR:` applies to that torchrun rank only (others run normally).
"""

import os
import runpy
import signal
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import noisy_student.loop  # noqa: E402


def _die(signum: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), signum)


def install(fault: str) -> None:
    if fault.startswith("rank"):
        only, _, fault = fault.partition(":")
        if os.environ.get("RANK", "0") != only[len("rank"):]:
            return
    kind, _, arg = fault.partition(":")
    if kind in ("kill-at-step", "term-at-step"):
        count = [0]

        def after_step(optimizer, args, kwargs):
            count[0] += 1
            if count[0] == int(arg):
                _die(signal.SIGKILL if kind == "kill-at-step" else signal.SIGTERM)

        register_optimizer_step_post_hook(after_step)
    elif kind == "kill-before-train":
        original = noisy_student.loop.train_model

        def train_model(model, loss, cfg, device, data, hooks, **kwargs):
            if hooks.tag == arg:
                _die()
            return original(model, loss, cfg, device, data, hooks, **kwargs)

        noisy_student.loop.train_model = train_model
    elif kind == "kill-in-ckpt-write":
        real_fsync, count = os.fsync, [0]

        def fsync(fd):
            if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
                count[0] += 1
                if count[0] == int(arg):
                    os.ftruncate(fd, os.fstat(fd).st_size // 2)  # a torn write
                    _die()
            return real_fsync(fd)

        os.fsync = fsync
    elif kind == "forbid-writes-off-rank0":
        import noisy_student.checkpoint as checkpoint

        if os.environ.get("RANK", "0") != "0":
            def refuse(path, data):
                raise SystemExit(f"rank {os.environ['RANK']} tried to write {path}")

            checkpoint.atomic_write = refuse
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    fault, recipe, *rest = sys.argv[1:]
    install(fault)
    sys.argv = [recipe, *rest]
    runpy.run_path(recipe, run_name="__main__")
