"""Helpers for the Streamlit app tests (the fixtures themselves are in conftest.py).

``app_cache_root``: a folder of caches like ``cache/``: ``alpha`` (576 dims, 7 tasks + a generic
``wikitext`` set, parameter counts in the manifest), ``beta`` (64 dims, 3 tasks) and
``zz-broken`` (a manifest that is not JSON). ``app`` is an AppTest pointed at that folder, with
exports and runs going to a temp folder; both Streamlit caches are cleared around every test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "diet_explore_app" / "app.py"
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
