"""diet-explore: explore DIET score caches, tune a pruning mask, prune, evaluate and export it.

    diet-explore app [--cache DIR] [--port N]      (or, from a checkout: streamlit run app.py)

Opens on cache/smollm2-135m when present (else the first cache under cache/, the folder named by
DIET_EXPLORE_CACHE_DIR, or the caches shipped with the package). Exploring reads only the score cache; no model is loaded until the
Prune & evaluate page is used. Settings live in st.session_state and in the URL, so a copied link
reopens the same view.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run diet_explore_app/app.py` from a checkout, from any folder
    sys.path.insert(0, str(ROOT))

import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

# The favicon is a file the app serves itself: a material or emoji icon (here or a page's icon, which
# Streamlit uses when page_icon is unset) is fetched from a font CDN that an offline machine cannot reach
# (its bytes, read once at import: a path is re-read and re-encoded on every rerun, 2.5 ms against 0.05)
st.set_page_config(page_title="diet-explore", page_icon=ui.FAVICON, layout="wide")

# Pages live in views/, not pages/: a folder named pages/ beside the entry script makes
# Streamlit's AppTest (1.67) run each page file directly as a legacy v1 multipage app on every rerun
# after the first, skipping this script (cache picker, settings, URL sync).
PAGES = [
    st.Page(ui.view("overview.py"), title="Overview", icon=":material/home:", url_path="overview", default=True),
    st.Page(ui.view("rankings.py"), title="Rankings", icon=":material/leaderboard:", url_path="rankings"),
    st.Page(ui.view("agreement.py"), title="Agreement", icon=":material/handshake:", url_path=ui.AGREEMENT_URL_PATH),
    st.Page(ui.view("mask_builder.py"), title="Mask builder", icon=":material/tune:", url_path="mask_builder"),
    st.Page(ui.DIM_PAGE, title="Dimension", icon=":material/search:", url_path=ui.DIM_URL_PATH),
    st.Page(ui.view("prune_eval.py"), title="Prune & evaluate", icon=":material/science:", url_path="prune_eval"),
    st.Page(ui.view("sweep.py"), title="Sweeps", icon=":material/stacked_line_chart:", url_path="sweep"),
    st.Page(ui.view("tune.py"), title="Tune", icon=":material/auto_graph:", url_path="tune"),
    st.Page(ui.view("history.py"), title="History", icon=":material/history:", url_path="history"),
    st.Page(ui.view("export.py"), title="Export", icon=":material/download:", url_path="export"),
]

state.boot()
ui.updating_sign()  # stale numbers fade at once, with an "Updating…" badge, while a rerun is on its way
page = st.navigation(PAGES)
loaded = ui.cache_picker()
st.session_state["_loaded"] = loaded
if loaded is not None:
    state.ensure_settings(loaded.cache)
state.show_link_warnings()
if page.url_path in S.MODEL_PAGES:  # they wait for the background imports, never import beside them
    loaders.wait_for_warm_up()
page.run()
if loaded is not None:
    ui.rendered_marker(loaded.cache)  # the slider values this run's numbers belong to (see widgets.UPDATING_JS)
    # e.g. every weight 0: the page shows the error next to the widgets; the URL keeps the last valid view
    with contextlib.suppress(DietError):
        extra = ui.page_query_params(page)
        state.sync_query_params(state.current_config(loaded.cache), ui.cache_link_value(loaded), extra)
    # after the page is sent, not before: the imports would slow this first run down
    loaders.warm_up(loaded.cache.manifest["model"].get("model_type"))
