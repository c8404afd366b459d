"""The generated parts of docs/ match the code they describe (tools/make_docs.py), and a drift
is caught."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "make_docs.py"))


def test_generated_docs_are_up_to_date(capsys):
    assert TOOL["main"](["--check"]) == 0, capsys.readouterr().out


def test_a_stale_table_is_found_and_rewritten(tmp_path, monkeypatch):
    page = tmp_path / "noise.md"
    page.write_text("intro\n<!-- op table: generated -->\n| old |\n<!-- end op table -->\nafter\n")
    tables = {(page, "op table"): lambda: "| new |"}
    monkeypatch.setitem(TOOL["main"].__globals__, "TABLES", tables)
    monkeypatch.setitem(TOOL["main"].__globals__, "PAGES", {})
    monkeypatch.setitem(TOOL["main"].__globals__, "ROOT", tmp_path)
    assert TOOL["main"](["--check"]) == 1
    assert TOOL["main"]([]) == 0
    assert page.read_text() == ("intro\n<!-- op table: generated -->\n| new |\n"
                                "<!-- end op table -->\nafter\n")
    assert TOOL["main"](["--check"]) == 0
