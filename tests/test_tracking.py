"""metrics.jsonl lines and plain progress lines off a terminal."""

import json

from noisy_student.tracking import Tracker, Progress


def test_jsonl_lines_are_flushed_and_parse(tmp_path):
    tracker = Tracker(tmp_path / "m.jsonl")
    tracker.log("epoch", epoch=1, total=0.5)
    # readable before close: a crash loses nothing already logged
    first = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert first["event"] == "epoch" and first["epoch"] == 1 and first["total"] == 0.5
    tracker.log("round", round=0)
    tracker.close()
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2


def test_progress_prints_plain_lines_when_not_a_tty(capsys):
    progress = Progress(total=100, desc="train", log_every_s=0.0)
    assert not progress.interactive  # pytest captures stderr: not a terminal
    progress.update(40, loss=1.25)
    progress.update(60, loss=0.5)
    progress.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("train: 40/100 img") and "loss=1.25" in lines[0]
    assert lines[1].startswith("train: 100/100 img") and "loss=0.5" in lines[1]
    assert progress.rate > 0
