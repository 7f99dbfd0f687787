"""The app's pages are named one way: docs/app.md's table of pages lists exactly the pages app.py
serves, and no page's text sends a user to a page by a name the app no longer has ("the Results
page" after Sweep and Results became the one Sweeps page)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _titles() -> list[str]:
    lines = (ROOT / "diet_explore_app" / "app.py").read_text().splitlines()
    return [re.search(r'title="([^"]+)"', line).group(1) for line in lines if "st.Page(" in line and "title=" in line]


def test_the_docs_table_of_pages_is_the_apps_pages():
    text = (ROOT / "docs" / "app.md").read_text()
    table = text.split("## Pages", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[:2] == ["page", "---"]
    assert rows[2:] == _titles()


def test_every_page_named_in_the_app_exists():
    titles = set(_titles())
    assert {"Sweeps", "History", "Export"} <= titles
    named = {}
    for path in (ROOT / "diet_explore_app").rglob("*.py"):
        for name in re.findall(r"\bthe ([A-Z][A-Za-z]*(?: builder| & evaluate)?) page\b", path.read_text()):
            named.setdefault(name, path.name)
    assert named and {n: f for n, f in named.items() if n not in titles} == {}
