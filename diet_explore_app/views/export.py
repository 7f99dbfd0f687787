"""Export: download the current mask, save it (and a pruned model) to disk, and copy the commands
that reproduce it. Nothing on disk is replaced without a confirmation, and a pruned folder only
when it is one diet-explore wrote (``save_pruned``'s marker rule). Pruning a model is long work: it
runs as a ``prune_save`` job in the worker, never on this page's script thread."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
from pathlib import Path

import numpy as np
import streamlit as st

from diet_explore.core import atomic
from diet_explore.core.config import command_lines
from diet_explore.core.errors import DietError
from diet_explore.experiments import jobs as J
from diet_explore.masking.maskfile import is_mask_file, is_npy_file, mask_command, mask_file_from_result, save_mask
from diet_explore.models.builtin import BUILTIN_MODELS, store_path
from diet_explore.pruning.saving import PRUNE_INFO_FILE
from diet_explore.tasks.lmeval_commands import TASKS_DIR, hand_off_commands, lmeval_tasks_command, task_name
from diet_explore.tasks.registry import load_registry
from diet_explore_app import jobs_ui, state
from diet_explore_app import settings as S
from diet_explore_app import widgets as ui

K_NAME, K_SAVE, K_SAVE_MODEL = "export_name", "export_save", "export_save_model"
K_REPLACE_MASK, K_REPLACE_MODEL = "export_replace_mask", "export_replace_model"
K_WATCH = "_ex_job"  # the prune_save job this browser tab started


def render_prune_job(job: dict) -> None:
    """A finished prune_save job: the folder it wrote, and its size while it is still there."""
    if job["status"] != "done":
        return
    saved = Path(job["result"]["folder"])
    size = f" ({ui.saved_size(saved)} on disk)" if saved.is_dir() else " (no longer there)"
    st.success(f"Saved {ui.display_path(saved)}/{size}, {job['result']['n_keep']} hidden dims kept")


st.title("Export")
with ui.shown_errors():
    loaded = ui.require_cache()
    cache = loaded.cache
    config, result = ui.current_mask(loaded)
    mask_file = mask_file_from_result(result, cache)
    export_dir = ui.export_dir()

    st.markdown(
        f"Current mask: **{config.label()}**, target sparsity {config.sparsity:.2f}, kept "
        f"**{result.n_keep}** of {result.hidden_size} dims (actual sparsity {result.sparsity:.4f})."
    )
    ui.rounded_note(config, result.n_keep)
    # the default name carries a hash of the settings (until the user types a name of their own)
    state.follow(K_NAME, S.default_export_name(cache.model_name, config, cache.manifest_hash))
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

    mask_path = export_dir / f"{name}.json"
    existing = [p for p in (mask_path, mask_path.with_suffix(".npy")) if p.exists()]
    replace_mask = True
    try:  # what `mask --out ... --npy` refuses: a file there that diet-explore did not write is never replaced
        atomic.check_replaceable_file(mask_path, "saved mask", is_mask_file, "a diet-explore mask file")
        atomic.check_replaceable_file(mask_path.with_suffix(".npy"), "saved mask", is_npy_file, "a .npy file")
    except DietError as exc:
        st.warning(f"{exc.message}; choose another export name.")
        existing, replace_mask = [], False
    if existing:
        st.warning(f"{', '.join(ui.display_path(p) for p in existing)} already exist(s); saving replaces them.")
        replace_mask = st.checkbox(f"Replace {ui.display_path(mask_path)} (+ .npy)", key=K_REPLACE_MASK, value=False)
    if st.button(
        f"Save mask to {ui.display_path(export_dir)}/{name}.json (+ .npy)",
        key=K_SAVE,
        disabled=not replace_mask,
        help=None
        if replace_mask
        else "Disabled: tick the box above to replace the saved mask"
        if existing
        else "Disabled: a file there was not written by diet-explore (see above)",
    ):
        atomic.check_writable(export_dir, f"export folder ({S.EXPORT_DIR_ENV})", folder=True)
        path = save_mask(mask_file, mask_path, npy=True)
        npy = path.with_suffix(".npy")
        st.success(f"Saved {ui.display_path(path)} ({ui.saved_size(path)}) and {ui.display_path(npy)} ({ui.saved_size(npy)})")

    st.markdown("**Save a pruned model folder**")
    hint = ui.saveable_hint(cache, result.n_keep)
    ui.saveable_fix(loaded, config, result.n_keep, st.warning, key="export_round_for_saving")
    name_or_path = ui.model_name_for(cache)
    problem = ui.model_problem(name_or_path)
    reason = ui.show_model_problem(problem) if problem else None
    if hint and reason is None:  # saving would load the model, prune it, and then fail on this count
        reason = f"Disabled: {result.n_keep} kept dims cannot be saved as a folder of this model (see above)"
    folder = export_dir / name
    replace = False
    if folder.exists():
        if (folder / PRUNE_INFO_FILE).is_file():
            st.warning(f"{ui.display_path(folder)}/ already holds a pruned model; saving replaces the whole folder.")
            replace = st.checkbox(f"Replace {ui.display_path(folder)}/", key=K_REPLACE_MODEL, value=False)
            if not replace:
                reason = reason or "Disabled: tick the box above to replace the saved model"
        else:
            reason = reason or (
                f"Disabled: {ui.display_path(folder)} exists and is not a pruned folder diet-explore wrote; choose another name"
            )
            st.warning(reason.removeprefix("Disabled: ") + ".")
    if st.button(
        f"Prune and save model to {ui.display_path(folder)}/", key=K_SAVE_MODEL, disabled=reason is not None, help=reason
    ):
        atomic.check_writable(export_dir, f"export folder ({S.EXPORT_DIR_ENV})", folder=True)  # before it is queued
        ui.check_model_installed(name_or_path)
        # the worker prunes it (from the checkpoint's files, tensor by tensor): the server loads no model
        job_id, new = J.submit_prune_job(jobs_ui.store(), name_or_path, mask_file, folder, overwrite=replace)
        st.session_state[K_WATCH] = job_id
        if not new:
            st.info(f"The same job is already queued or running ({job_id}): showing it.")
    if st.session_state.get(K_WATCH) or any(j["type"] == "prune_save" for j in jobs_ui.list_jobs(jobs_ui.store())[0]):
        jobs_ui.job_panel(jobs_ui.store(), "prune_save", K_WATCH, render_prune_job)

    st.markdown("**Reproduce**")
    st.markdown("Rebuild this mask from the same cache:")
    st.code(command_lines(mask_command(ui.display_path(loaded.path), config, f"{name}.json")), language="bash", wrap_lines=True)
    registry = load_registry()
    known = [t for t in cache.task_names if t in registry]
    unknown = [t for t in cache.task_names if t not in registry]
    # the step between the two: the mask file into a model folder (what "Prune and save model" does)
    st.markdown("Prune the model with it into a folder" + (" (once the kept count is rounded, above):" if hint else ":"))
    prune = [
        "diet-explore",
        "prune",
        "--model",
        ui.model_name_for(cache),
        "--mask",
        f"{name}.json",
        "--out",
        ui.display_path(folder),
    ]
    st.code(command_lines(shlex.join(prune)), language="bash", wrap_lines=True)
    if known:
        # lm-eval's stock tasks score whole splits, which hold the calibration examples: the hand-off writes
        # task files over the held-out documents the quick eval scores, then runs both models on them
        dense = str(store_path(name_or_path)) if name_or_path in BUILTIN_MODELS else name_or_path
        st.markdown(
            "Evaluate it with lm-evaluation-harness on every held-out document, offline: first write the task "
            "files (this cache's calibration examples left out), then score the dense and the pruned model on them:"
        )
        write = lmeval_tasks_command(TASKS_DIR, known, cache=ui.display_path(loaded.path))
        st.code(command_lines(write), language="bash", wrap_lines=True)
        models = {"dense": dense, "pruned": ui.display_path(folder)}
        commands = hand_off_commands(models, TASKS_DIR, [task_name(t) for t in known])
        for label, cmd in commands[: len(models)]:  # one device each
            st.caption(f"{label}:")
            st.code(command_lines(cmd), language="bash", wrap_lines=True)
        with st.expander("On several GPUs (one model over every GPU; vLLM, one replica per GPU)"):
            for label, cmd in commands[len(models) :]:
                st.caption(f"{label}:")
                st.code(command_lines(cmd), language="bash", wrap_lines=True)
    if unknown:  # tasks from a --task-file: lm-eval knows them only from a task config of its own
        st.caption(
            f"Not in this task registry: {', '.join(unknown)} (profiled from a --task-file). Start the app with "
            "DIET_EXPLORE_TASKS=<that file> to include them, and give lm-eval a task config for each."
        )
