"""Helpers for the Streamlit app tests (the fixtures themselves are in conftest.py).

``app_cache_root``: a folder of caches like ``cache/``: ``alpha`` (576 dims, 7 tasks + a generic
``wikitext`` set, parameter counts in the manifest), ``beta`` (64 dims, 3 tasks) and
``zz-broken`` (a manifest that is not JSON). ``app`` is an AppTest pointed at that folder, with
exports and runs going to a temp folder; both Streamlit caches are cleared around every test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "diet_explore_app" / "app.py"
DOCS_RESULTS = APP.parents[1] / "docs" / "results"  # the committed sweeps, wherever the library is imported from
TIMEOUT = 60  # seconds per AppTest run (the default 3 s is too short on 2 shared cores)
ALPHA_PARAMS, ALPHA_PER_DIM = 2_000_000, 1_500


def make_alpha():
    """The main test cache: synthetic scores plus a generic set and parameter counts."""
    from diet_explore.profiling.synthetic import synthetic_cache

    cache = synthetic_cache(hidden_size=576, num_layers=30, n_samples=40, seed=3)
    src = cache.tasks["boolq"]
    generic = replace(src, kind="generic")
    tasks = dict(cache.tasks) | {"wikitext": generic}
    manifest = json.loads(json.dumps(cache.manifest))
    manifest["model"].update(num_parameters=ALPHA_PARAMS, params_per_hidden_dim=ALPHA_PER_DIM, name="alpha-576")
    manifest["environment"] = {"device": "cpu", "dtype": "float32"}
    manifest["tasks"]["wikitext"] = {**manifest["tasks"]["boolq"], "kind": "generic"}
    for meta in manifest["tasks"].values():
        meta["wall_time_s"] = 1.5
    return replace(cache, tasks=tasks, manifest=manifest)


def build_cache_root(root: Path) -> Path:
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    save_cache(make_alpha(), root / "alpha")
    save_cache(synthetic_cache(hidden_size=64, num_layers=4, tasks=("boolq", "rte", "piqa"), n_samples=12, seed=1), root / "beta")
    broken = root / "zz-broken"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    return root


def run_page(at, page: str):
    """Switch to ``views/<page>.py`` and run; fails on any uncaught exception."""
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_tab(at, key: str, label: str):
    """Open the lazy ``st.tabs(..., key=key)`` tab ``label`` and run: what a click does, the widget's
    value and the setting its on_change stores (AppTest cannot click a tab; the browser tests do)."""
    from diet_explore_app.state import SHADOW

    tabs = [t.label for t in at.get("tab")]
    assert label in tabs, f"no tab {label!r}; tabs: {tabs}"
    at.session_state[key] = label
    at.session_state[SHADOW + key] = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_expander(at, key: str):
    """Open the lazy ``st.expander(..., key=key)`` and run: what a click on its header does."""
    from diet_explore_app.state import SHADOW

    ids = [e.proto.id for e in at.expander]
    assert any(i.endswith("-" + key) for i in ids), f"no expander keyed {key!r}; expanders: {ids}"
    at.session_state[key] = True
    at.session_state[SHADOW + key] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def chart_specs(at) -> list[dict]:
    """Plotly figures on the page as JSON dicts, in page order."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def chart(at, title_part: str) -> dict:
    for spec in chart_specs(at):
        title = spec.get("layout", {}).get("title", {})
        text = title.get("text", "") if isinstance(title, dict) else str(title)
        if title_part in text:
            return spec
    raise AssertionError(f"no chart titled like {title_part!r}")


def chart_by_key(at, key: str) -> dict:
    for c in at.get("plotly_chart"):
        if c.key == key:
            return json.loads(c.proto.spec)
    raise AssertionError(f"no plotly chart with key {key!r}; keys: {[c.key for c in at.get('plotly_chart')]}")


def charts_drawn_twice(at) -> list[str]:
    """The page's plotly charts that the browser would draw twice on each update, with why: drawn in
    Streamlit's theme, carrying a template or base64 arrays, or without a data revision
    (``widgets.chart``, ``plots.finish``; test_browser_hardening counts the draws in a browser)."""
    out = []
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        why = [
            reason
            for reason, bad in (
                (f"theme {c.proto.theme!r}", c.proto.theme != ""),
                ("a template", spec["layout"].get("template") is not None),
                ("base64 arrays", "bdata" in c.proto.spec),
                ("no datarevision", not spec["layout"].get("datarevision")),
            )
            if bad
        ]
        if why:
            out.append(f"{c.key}: {', '.join(why)}")
    return out


def heat_table(at, title_part: str):
    """The page's one coloured task × task table (``ui.heat_table``), checked to sit under a bold title
    containing ``title_part``: ``(values, fills, title)``, the values a DataFrame named by task on both
    axes, ``fills`` each cell's background colour (an array of "rgb(r, g, b)") from the CSS the browser gets."""
    import re

    import numpy as np

    titles = [m.value for m in at.markdown if m.value.startswith("**") and title_part in m.value]
    assert len(titles) == 1 and len(at.table) == 1, (titles, len(at.table))
    table = at.table[0]
    values = table.value
    fills = np.empty(values.shape, dtype=object)
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", table.proto.arrow_data.styler.styles):
        fill = re.search(r"background-color:\s*([^;]+)", body).group(1).strip()
        for row, col in re.findall(r"_row(\d+)_col(\d+)", selectors):
            fills[int(row), int(col)] = fill
    assert all(f is not None for f in fills.ravel()), "a cell without a colour"
    return values, fills, titles[0].strip("*")


def arr(value):
    """A plotly JSON array as numpy: plain lists, or plotly's typed arrays {dtype, bdata, shape}."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            out = out.reshape([int(s) for s in str(shape).split(",")])
        return out
    return np.asarray(value)


# ---------------------------------------------------------------- real-browser tests (Playwright + Debian's chromium)
CHROMIUM = "/usr/bin/chromium"


CHROME_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


WAIT_MS = 60_000


def require_browser():
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright (python) is not installed"
    if why is None and not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not become healthy at {url}")


def idle(page) -> None:
    """Wait until the script run finished (the status widget's running icon is gone; Streamlit 1.67
    shows an icon and "Stop", not the word "Running", so the text alone never waited) and charts drew."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')"
        " && !(document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running'))",
        timeout=WAIT_MS,
    )
    page.wait_for_timeout(300)


def goto_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title if title != "Overview" else "diet-explore").first.wait_for(timeout=WAIT_MS)
    idle(page)


def heat_table_shown(page, title_part: str):
    """The coloured task × task table under the bold title containing ``title_part``, as shown:
    (column names, row names, values as printed, cell background colours); waits until it is drawn."""
    handle = page.wait_for_function(
        """(part) => {
            for (const b of document.querySelectorAll('strong')) {
                if (!b.innerText.includes(part)) continue;
                const block = b.closest('[data-testid="stElementContainer"]');
                const next = block && block.nextElementSibling;
                const table = next && next.querySelector('[data-testid="stTable"] table');
                if (!table) return null;
                const rows = [...table.querySelectorAll('tbody tr')];
                return {cols: [...table.querySelectorAll('thead th')].slice(1).map(c => c.innerText.trim()),
                        rows: rows.map(r => r.querySelector('th').innerText.trim()),
                        values: rows.map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim())),
                        fills: rows.map(r => [...r.querySelectorAll('td')].map(c => getComputedStyle(c).backgroundColor))};
            }
            return null;
        }""",
        arg=title_part,
        timeout=WAIT_MS,
    )
    return handle.json_value()


def metric(page, label: str) -> str:
    m = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True)).first
    return m.locator('[data-testid="stMetricValue"]').inner_text().strip()


@contextlib.contextmanager
def start_app_server(tmp: Path, env_extra: dict[str, str]):
    """``diet-explore app`` (as a user starts it) on a free port, from the repository folder, with
    ``env_extra`` (cache, export and run folders); yields the base URL and stops the server after."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    cmd = [sys.executable, "-m", "diet_explore", "app", "--port", str(port), "--host", "127.0.0.1"]
    with open(tmp / "streamlit.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=APP.parents[1], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_health(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def committed_cache_server(tmp: Path, seed_runs=None):
    """The app (``start_app_server``) on the committed caches (or real-shaped ones built in ``tmp``
    where cache/ holds none), with its own export and run folders in ``tmp``; ``seed_runs(folder)``
    fills the run store first. Yields ``{"url", "cache_root", "tmp"}``."""
    from diet_explore.profiling.cache import list_caches

    real_root = APP.parents[1] / "cache"
    cache_root = real_root if list_caches(real_root) else build_cache_root(tmp / "caches")
    extra = {
        "DIET_EXPLORE_CACHE_DIR": str(cache_root),
        "DIET_EXPLORE_EXPORT_DIR": str(tmp / "export"),
        "DIET_EXPLORE_RUNS_DIR": str(tmp / "runs"),
    }
    if seed_runs is not None:
        seed_runs(tmp / "runs")
    with start_app_server(tmp, extra) as url:
        yield {"url": url, "cache_root": cache_root, "tmp": tmp}


@contextlib.contextmanager
def launched_browser():
    """Debian's chromium through Playwright, closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        try:
            yield b
        finally:
            b.close()


def wait_metric(page, label: str, expected: str) -> None:
    """Wait until the metric ``label`` shows ``expected`` (a rerun can still be replacing it)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        try:
            if metric(page, label) == expected:
                return
        except Exception:  # the metric is being re-rendered: look again
            pass
        page.wait_for_timeout(200)
    raise AssertionError(f"metric {label!r} is {metric(page, label)!r}, expected {expected!r}")


def shell_argv(text: str) -> list[str]:
    """The arguments bash reads from ``text`` (a command as the app shows it, pasted into a shell):
    the displayed command's real test, backslash-newlines and quotes included."""
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + text], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]
