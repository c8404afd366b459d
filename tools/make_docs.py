"""Write the generated parts of docs/ from the code they describe: one home for each table.

    python tools/make_docs.py          # rewrite them
    python tools/make_docs.py --check  # exit 1 when one is out of date

docs/configuration.md is generated whole from noisy_student/config.py (each key's meaning and
range are declared with it). Tables inside other pages sit between `<!-- NAME: ... -->` and
`<!-- end NAME -->` and are replaced. The suite fails when any of them drifts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from noisy_student.config import configuration_doc  # noqa: E402
from noisy_student.noise import op_table_markdown  # noqa: E402
from noisy_student.presets import ladders_markdown, presets_markdown  # noqa: E402

DOCS = ROOT / "docs"
PAGES: dict[Path, Callable[[], str]] = {DOCS / "configuration.md": configuration_doc}
TABLES: dict[tuple[Path, str], Callable[[], str]] = {
    (DOCS / "noise.md", "op table"): op_table_markdown,
    (DOCS / "your_images.md", "ladder table"): ladders_markdown,
    (DOCS / "your_images.md", "presets table"): presets_markdown,
}


def generated(path: Path) -> str:
    """`path` as it should read: the whole page, or its tables replaced."""
    if path in PAGES:
        return PAGES[path]()
    text = path.read_text()
    for (where, name), make in TABLES.items():
        if where != path:
            continue
        pattern = re.compile(rf"(<!-- {name}:[^\n]*-->\n).*?(<!-- end {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path.relative_to(ROOT)}: no <!-- {name}: ... --> marker")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say which pages are out of date")
    args = p.parse_args(argv)
    paths = sorted({*PAGES, *(path for path, _ in TABLES)})
    stale = [path for path in paths if not path.is_file() or path.read_text() != generated(path)]
    for path in stale:
        if args.check:
            print(f"out of date: {path.relative_to(ROOT)}")
        else:
            path.write_text(generated(path))
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
