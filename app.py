"""diet-explore: explore DIET score caches, tune a pruning mask, prune, evaluate and export it.

    streamlit run app.py

Opens on cache/smollm2-135m when present (else the first cache under cache/, or the folder named by
DIET_EXPLORE_CACHE_DIR). Exploring reads only the score cache; no model is loaded until the
Prune & evaluate page is used. Settings live in st.session_state and in the URL, so a copied link
reopens the same view.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `app_pages._ui` and `diet_explore` from any working directory
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402

from diet_explore.errors import DietError  # noqa: E402
from app_pages import _ui as ui  # noqa: E402

st.set_page_config(page_title="diet-explore", page_icon=":material/content_cut:", layout="wide")

# Pages live in app_pages/, not pages/: a folder named pages/ beside the entry script makes
# Streamlit's AppTest (1.67) run each page file directly as a legacy v1 multipage app on every rerun
# after the first, skipping this script (cache picker, settings, URL sync).
PAGES = [
    st.Page("app_pages/overview.py", title="Overview", icon=":material/home:", url_path="overview", default=True),
    st.Page("app_pages/rankings.py", title="Rankings", icon=":material/leaderboard:", url_path="rankings"),
    st.Page("app_pages/agreement.py", title="Agreement", icon=":material/handshake:", url_path="agreement"),
    st.Page("app_pages/mask_builder.py", title="Mask builder", icon=":material/tune:", url_path="mask_builder"),
    st.Page("app_pages/prune_eval.py", title="Prune & evaluate", icon=":material/science:", url_path="prune_eval"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:", url_path="export"),
]

ui.boot()
page = st.navigation(PAGES)
loaded = ui.cache_picker()
st.session_state["_loaded"] = loaded
if loaded is not None:
    ui.ensure_settings(loaded.cache)
ui.show_link_warnings()
page.run()
if loaded is not None:
    try:
        ui.sync_query_params(ui.current_config(loaded.cache), loaded)
    except DietError:
        pass  # e.g. every weight 0: the page shows the error next to the widgets; the URL keeps the last valid view
