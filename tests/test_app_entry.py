"""The checkout's ``app.py`` (``streamlit run app.py``) serves the same app, pages and settings as
``diet-explore app``."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from app_helpers import APP, TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
TOP_APP = ROOT / "app.py"
CONFIG = ROOT / ".streamlit" / "config.toml"


def _page_text(at) -> list[str]:
    """What a reader sees of the page: titles, headers, markdown and metrics, in order."""
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption") for e in at.get(kind)]
    return parts + [f"{m.label}={m.value}" for m in at.metric]


def test_top_level_app_renders_the_packaged_apps_default_page(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from diet_explore.cli.app import APP_THREAD_ENV

    for key in APP_THREAD_ENV:  # recorded by monkeypatch, so the test leaves the environment as it found it
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    top = AppTest.from_file(str(TOP_APP), default_timeout=TIMEOUT).run()
    assert not top.exception, [e.value for e in top.exception]
    assert {k: os.environ.get(k) for k in APP_THREAD_ENV} == APP_THREAD_ENV  # the server environment `diet-explore app` sets
    packaged = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert _page_text(top) == _page_text(packaged)
    assert any("alpha-576" in t for t in _page_text(top))  # the Overview of the default cache, not an empty page


def test_top_level_app_switches_pages_the_way_the_packaged_one_does(app_env):
    """Page paths are absolute (``widgets.view``): a relative one resolves against the entry script's
    folder, the checkout's root here, where the Dimension page would not be found."""
    from streamlit.testing.v1 import AppTest

    from diet_explore_app.widgets import view

    at = AppTest.from_file(str(TOP_APP), default_timeout=TIMEOUT).run()
    at.switch_page(view("agreement.py")).run()
    assert not at.exception and at.title[0].value == "Agreement"
    at.text_input(key="agree_jump").input("230").run()
    at.button(key="agree_jump_go").click().run()  # widgets.open_dim: st.switch_page(DIM_PAGE)
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Dimension"


def _cli_settings(monkeypatch, tmp_path) -> dict[str, str]:
    """The ``--section.key value`` pairs ``diet-explore app`` passes to ``streamlit run``."""
    from diet_explore.cli import app as cli_app
    from diet_explore.cli import build_parser

    seen: dict[str, list[str]] = {}

    class _Started(Exception):
        pass

    def fake_exec(path, cmd, env):
        seen["cmd"] = cmd
        raise _Started

    monkeypatch.setattr(os, "execve", fake_exec)
    monkeypatch.setattr(cli_app.subprocess, "call", lambda cmd, env: fake_exec(None, cmd, env))
    monkeypatch.setattr(cli_app, "check_listen", lambda host, port: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Started):
        args = build_parser().parse_args(["app"])  # every default, as `diet-explore app` runs
        args.func(args)
    cmd = seen["cmd"]
    flags = cmd[cmd.index("run") + 2 :]
    return {flags[i].removeprefix("--"): flags[i + 1] for i in range(0, len(flags), 2)}


def test_streamlit_config_holds_what_the_cli_passes(monkeypatch, tmp_path):
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}

    def as_flag(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    cli = _cli_settings(monkeypatch, tmp_path)
    assert cli.pop("server.port") == "8501"  # Streamlit's default: the config need not name it
    missing = {k: v for k, v in cli.items() if as_flag(flat.get(k)) != v}
    assert not missing, f".streamlit/config.toml lacks or differs on what `diet-explore app` passes: {missing}"
