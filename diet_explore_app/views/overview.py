"""Overview: what the selected score cache holds, where it came from, and how to use the app."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet_explore.masking.dims import first_token_dims
from diet_explore.profiling.cache import SITE_DOC, list_caches
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

st.title("diet-explore")
st.markdown(
    "Explore **DIET** pruning of an LLM's hidden dimensions from a score cache: each task scores every "
    "hidden dim by its mean |activation|; each task keeps its top dims; a weighted majority vote merges "
    "them into one global mask. Exploring needs no model load."
)
with st.expander("How to use", expanded=False):
    st.markdown(
        "1. Pick a score cache in the sidebar (any folder under `cache/`, or type a path).\n"
        "2. **Rankings**: how each task ranks the dims, and which layers a dim is active in.\n"
        "3. **Agreement**: how much tasks agree on what to prune, following the sparsity slider.\n"
        "4. **Mask builder**: sparsity, vote threshold, per-task weights (0 removes a task) and merge rule; "
        "kept count, parameters, baselines and bootstrap stability update live.\n"
        "5. **Prune & evaluate**: prune the model with the current mask and compare it with the dense one.\n"
        "6. **Export**: download the mask, save a pruned model, copy the commands that reproduce it.\n\n"
        "Settings survive page switches and are in the URL: copy the address bar to share the view."
    )
with st.expander("Glossary", expanded=False):
    st.markdown("\n".join(f"- **{term}**: {ui.HELP[key]}" for term, key in ui.GLOSSARY))

with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    m = cache.manifest
    model = m["model"]
    st.subheader(f"Cache `{ui.display_path(loaded.path)}`")
    # the model's name gets the width it needs (in a fifth of the page "smollm2-135m" was cut to "smollm2-…")
    c = st.columns([3, 1, 1, 1, 1.4])
    c[0].metric("Model", cache.model_name)
    c[1].metric("Hidden size", cache.hidden_size)
    c[2].metric("Layers", cache.num_layers)
    c[3].metric("Tasks", len(cache.task_names))
    c[4].metric("Parameters", f"{model['num_parameters'] / 1e6:,.1f} M" if model.get("num_parameters") else "n/a")

    rows = []
    for name, meta in m["tasks"].items():
        counts = meta.get("token_counts") or []
        rows.append(
            {
                "task": name,
                "kind": meta.get("kind", "task"),
                "samples": meta.get("n_samples"),
                "tokens": int(sum(counts)) if counts else None,
                "wall time (s)": meta.get("wall_time_s"),
                "finished": meta.get("finished"),
            }
        )
    st.markdown("**Tasks** (kind `generic` = task-agnostic text, used by the wiki baseline)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="overview_tasks")

    st.markdown("**Sites** profiled: " + "; ".join(f"`{s}`: {SITE_DOC.get(s, '')}" for s in cache.sites))
    first = {s: first_token_dims(cache, s) for s in cache.sites}
    if (m.get("config") or {}).get("skip_first_token"):
        st.markdown(
            "**First token left out**: this cache was profiled with `--skip-first-token`, so its scores and contexts "
            "leave each sequence's first token out (the model still saw it)."
        )
    elif all(f is not None for f in first.values()):
        st.markdown(
            "**First-token dims** (at least half of their top-activating contexts are the first token of the "
            "sequence, whatever it is: they fire on position, not on text, an attention-sink pattern): "
            + "; ".join(f"`{s}` {int(f.sum())} of {cache.hidden_size}" for s, f in first.items())
            + ". Where many are, a score at that site partly measures each dim's size on the first token, and the "
            "mask follows it; `diet-explore profile --skip-first-token` scores without it (README, *First-token dims*). "
            "The Dimension page says so for each such dim."
        )

    env = m.get("environment", {})
    wall = [meta.get("wall_time_s") for meta in m["tasks"].values() if meta.get("wall_time_s") is not None]
    prov = {
        "model id": model.get("id"),
        "model type": model.get("model_type"),
        "revision": model.get("revision"),
        "weights sha256": (model.get("weights_sha256") or "")[:16] or None,
        "params per hidden dim": model.get("params_per_hidden_dim"),
        "device": env.get("device"),
        "dtype": env.get("dtype"),
        "torch": env.get("torch"),
        "created": m.get("created"),
        "updated": m.get("updated"),
        "profile wall time (s)": round(sum(wall), 1) if wall else None,
        "package version": m.get("package_version"),
        "config": ", ".join(f"{k}={v}" for k, v in (m.get("config") or {}).items() if not isinstance(v, (list, dict))),
        "manifest hash": cache.manifest_hash,
    }
    st.markdown("**Provenance**")
    st.dataframe(
        pd.DataFrame({"field": list(prov), "value": [("n/a" if v is None else str(v)) for v in prov.values()]}),
        hide_index=True,
        key="overview_provenance",
    )

    found = list_caches(S.cache_root(S.base_dir()))
    st.caption(
        "Caches found: "
        + (", ".join(f"`{ui.display_path(p)}`" for p in found) or "none")
        + f" (under `{ui.display_path(S.cache_root(S.base_dir()))}`; set {S.CACHE_DIR_ENV} to look elsewhere)"
    )
