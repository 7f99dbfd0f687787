"""Prune & evaluate: prune the model with the current mask and compare it with the dense model."""

from __future__ import annotations

import importlib.util

import streamlit as st

from app_pages import _ui as ui

st.title("Prune & evaluate")
with ui.shown_errors():
    loaded = ui.require_cache()
    missing = [m for m in ("prune", "evaluate", "runs") if importlib.util.find_spec(f"diet_explore.{m}") is None]
    if missing:
        st.info("This page needs " + ", ".join(f"`diet_explore.{m}`" for m in missing) + " (not in this build yet).")
        st.stop()
