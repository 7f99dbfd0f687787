"""Export: download the current mask, save it (and a pruned model) to disk, and copy the commands
that reproduce it."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import streamlit as st

from diet_explore.core import atomic
from diet_explore.masking.maskfile import mask_command, mask_file_from_result, save_mask
from diet_explore.pruning.saving import save_pruned
from diet_explore.pruning.slicing import prune_model
from diet_explore.tasks.registry import lm_eval_command
from diet_explore_app import loaders, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_NAME, K_SAVE, K_SAVE_MODEL = "export_name", "export_save", "export_save_model"

st.title("Export")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    config, result = ui.current_mask(loaded)
    mask_file = mask_file_from_result(result, cache)
    export_dir = ui.export_dir()

    st.markdown(
        f"Current mask: **{config.method}**, target sparsity {config.sparsity:.2f}, kept "
        f"**{result.n_keep}** of {result.hidden_size} dims (actual sparsity {result.sparsity:.4f})."
    )
    state.follow(K_NAME, S.default_export_name(cache.model_name, config))  # until the user types a name of their own
    raw_name = st.text_input("Export name (a plain name: no folders)", **state.kw(K_NAME))
    name = S.check_export_name(raw_name.removesuffix(".json"))  # raises DietError -> error box

    blob = json.dumps(dataclasses.asdict(mask_file), indent=2, sort_keys=True)
    buf = io.BytesIO()
    np.save(buf, mask_file.keep, allow_pickle=False)
    d1, d2 = st.columns(2)
    d1.download_button(
        "Download mask JSON", blob, file_name=f"{name}.json", mime="application/json", key="export_dl_json", on_click="ignore"
    )
    d2.download_button(
        "Download mask .npy (bool keep vector)",
        buf.getvalue(),
        file_name=f"{name}.npy",
        mime="application/octet-stream",
        key="export_dl_npy",
        on_click="ignore",
    )

    if st.button(f"Save mask to {ui.display_path(export_dir)}/{name}.json (+ .npy)", key=K_SAVE):
        atomic.check_writable(export_dir, f"export folder ({S.EXPORT_DIR_ENV})", folder=True)
        path = save_mask(mask_file, export_dir / f"{name}.json", npy=True)
        st.success(f"Saved {ui.display_path(path)} and {ui.display_path(path.with_suffix('.npy'))}")

    st.markdown("**Save a pruned model folder**")
    if hint := ui.saveable_hint(cache, result.n_keep):
        st.warning(hint)
    if st.button(f"Prune and save model to {ui.display_path(export_dir)}/{name}/", key=K_SAVE_MODEL):
        atomic.check_writable(export_dir, f"export folder ({S.EXPORT_DIR_ENV})", folder=True)  # before the model loads
        with st.status("Pruning…", expanded=True) as status:
            name_or_path = ui.model_name_for(cache)
            ui.check_model_installed(name_or_path)
            status.write(f"Loading {name_or_path}…")
            model, tokenizer, _ = loaders.dense_model(name_or_path, "auto")
            status.write(f"Pruning to {result.n_keep} of {result.hidden_size} hidden dims…")
            pruned = prune_model(model, result.keep)  # a copy: the shared model is untouched
            status.write(f"Saving to {ui.display_path(export_dir / name)}…")
            folder = save_pruned(
                pruned, tokenizer, export_dir / name, mask_file=mask_file, overwrite=True, source_model=name_or_path
            )
            status.update(label=f"Saved {ui.display_path(folder)}", state="complete")

    st.markdown("**Reproduce**")
    st.markdown("Rebuild this mask from the same cache:")
    st.code(mask_command(ui.display_path(loaded.path), config, f"{name}.json"), language="bash")
    st.markdown("Evaluate the saved pruned model with lm-evaluation-harness:")
    st.code(lm_eval_command(ui.display_path(export_dir / name), list(cache.task_names)), language="bash")
