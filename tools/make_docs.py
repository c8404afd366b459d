"""Write the generated reference pages of docs/ from the code they describe.

    python tools/make_docs.py          # rewrite them
    python tools/make_docs.py --check  # exit 1 when one is out of date

docs/configuration.md is generated whole from noisy_student/config.py (each key's meaning and
range are declared with it); the suite fails when it drifts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from noisy_student.config import configuration_doc  # noqa: E402

PAGES = {ROOT / "docs" / "configuration.md": configuration_doc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say which pages are out of date")
    args = p.parse_args(argv)
    stale = [path for path, make in PAGES.items()
             if not path.is_file() or path.read_text() != make()]
    for path in stale:
        if args.check:
            print(f"out of date: {path.relative_to(ROOT)}")
        else:
            path.write_text(PAGES[path]())
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
