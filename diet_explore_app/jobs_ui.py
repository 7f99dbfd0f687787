"""The job panel every page that starts background work shares: which job to show, its live progress,
Stop / Resume, and its (partial) result, refreshed every few seconds by a fragment.

Pages only submit, poll and render jobs (``diet_explore.experiments.jobs``): the work runs in the
library's worker process, and everything shown is read from the job store on disk, so a page
switch, a reload or a second tab shows the same job. The session only remembers which job it
started (``watch``), to keep showing that one rather than a newer job of another tab.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from diet_explore.core.errors import DietError
from diet_explore.experiments import jobs as J
from diet_explore_app import widgets as ui

REFRESH_S = 2.0  # how often a page with an active job re-reads it
STATUS_ICON = {
    "queued": ":material/schedule:",
    "running": ":material/progress_activity:",
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "stopped": ":material/stop_circle:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/pause_circle:",
}


def store() -> J.JobStore:
    """The job store beside the run store (``DIET_EXPLORE_RUNS_DIR``, else the library's default)."""
    return J.JobStore()


def list_jobs(jobs_store: J.JobStore) -> tuple[list[dict[str, Any]], list[str]]:
    """(every job, one line per damaged record) — a damaged record is reported, never fatal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = jobs_store.jobs()
    return found, [str(w.message) for w in caught if "damaged job record" in str(w.message)]


def submit(jobs_store: J.JobStore, job_type: str, config: dict[str, Any], label: str, watch_key: str) -> None:
    """Queue a job (or find the same one already queued or running), start the worker if needed,
    and make this browser tab show it."""
    watch(*J.submit(jobs_store, job_type, config, label), watch_key)


def watch(job_id: str, new: bool, watch_key: str) -> None:
    """Make this browser tab show the job just queued (``new``: False when the same job was already
    queued or running, which the page says)."""
    st.session_state[watch_key] = job_id
    if not new:
        st.info(f"The same job is already queued or running ({job_id}): showing it.")


def warm_worker(jobs_store: J.JobStore, model: str | None = None) -> None:
    """Start the worker (loading ``model``) while the user sets up a run, so the first numbers come
    seconds after the click."""
    # an unwritable run store or a bad DIET_EXPLORE_WORKER_IDLE_S: submit() says so, with the fix
    with contextlib.suppress(OSError, DietError):
        J.EXECUTOR.ensure_worker(jobs_store, preload=model)


def pick(found: list[dict[str, Any]], job_type: str, watched: str | None) -> dict[str, Any] | None:
    """The job a page shows: the one this browser tab started, else the running one, else the next
    queued, else the newest of that type."""
    mine = [j for j in found if j["type"] == job_type]
    for rule in (
        lambda j: j["job_id"] == watched,
        lambda j: j["status"] == "running",
        lambda j: j["status"] == "queued",
    ):
        hit = [j for j in mine if rule(j)]
        if hit:
            return hit[0]
    return max(mine, key=lambda j: j["created"]) if mine else None


def job_panel(
    jobs_store: J.JobStore,
    job_type: str,
    watch_key: str,
    render: Callable[[dict[str, Any]], None],
) -> None:
    """The selected job of ``job_type``: status, progress, Stop/Resume, and ``render(job)`` for its
    numbers (partial or final). Refreshes itself every ``REFRESH_S`` while any job is active."""
    found, _ = list_jobs(jobs_store)
    active = any(j["status"] in J.ACTIVE for j in found)

    @st.fragment(run_every=REFRESH_S if active else None)
    def panel() -> None:
        found, damaged = list_jobs(jobs_store)
        for line in damaged:
            st.warning(line)
        job = pick(found, job_type, st.session_state.get(watch_key))
        still_active = any(j["status"] in J.ACTIVE for j in found)
        if active and not still_active:
            st.rerun()  # a job just ended: redraw the whole page (history, plots), and stop polling
        if job is None:
            st.caption("No job yet.")
            return
        _job_header(jobs_store, job, found)
        with ui.shown_errors():
            render(job)

    panel()


def _job_header(jobs_store: J.JobStore, job: dict[str, Any], found: list[dict[str, Any]]) -> None:
    status = job["status"]
    progress = job.get("progress") or {}
    st.markdown(f"{STATUS_ICON.get(status, '')} **Job {job['job_id']}** ({job.get('label', job['type'])}): **{status}**")
    queued = [j for j in found if j["status"] == "queued"]
    if status == "queued":
        ahead = [j for j in found if j["status"] == "running"] + queued[: [q["job_id"] for q in queued].index(job["job_id"])]
        st.caption(f"Waiting for {len(ahead)} job(s) ahead of it: each worker runs one job at a time.")
    if status == "running" and job.get("lease"):  # who holds it: Resume is refused while this lease is alive
        lease = job["lease"]
        st.caption(f"Running in worker pid {lease.get('pid')} on {lease.get('host')}.")
    if status in ("running", "queued") or (status in ("stopped", "interrupted") and progress):
        st.progress(min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0), text=str(progress.get("message") or status))
    if status == "failed":
        err = job.get("error") or {}
        ui.show_error(DietError(str(err.get("message") or "the job failed"), err.get("hint")))
    if status == "interrupted":
        st.warning(
            "This job was interrupted (its worker stopped, e.g. the app was restarted). Resume continues it; "
            "a job whose worker died is also requeued once by the next worker."
        )
    c1, c2, _ = st.columns([1, 1, 4])
    if status in J.ACTIVE and c1.button(
        "Stop", key="job_stop", help="stop after the current forward pass; partial results are kept"
    ):
        with ui.shown_errors():
            jobs_store.stop(job["job_id"])
            st.rerun()
    if status in J.RESUMABLE and c2.button("Resume", key="job_resume", help="queue it again; what it scored is reused"):
        with ui.shown_errors():
            jobs_store.resume(job["job_id"])
            J.EXECUTOR.ensure_worker(jobs_store)
            st.rerun()
    if job.get("log"):
        with st.expander("Log", expanded=False):
            st.code("\n".join(job["log"]), language=None)


def jobs_table(found: list[dict[str, Any]]) -> pd.DataFrame:
    """Every job as a table, newest first."""
    rows = [
        {
            "job": j["job_id"],
            "type": j["type"],
            "status": j["status"],
            "progress": float((j.get("progress") or {}).get("fraction") or 0.0),
            "label": j.get("label", ""),
            "created": j["created"],
        }
        for j in found
    ]
    frame = pd.DataFrame(rows, columns=["job", "type", "status", "progress", "label", "created"])
    return frame.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def all_jobs(jobs_store: J.JobStore) -> None:
    """An expander with every job of the store."""
    found, _ = list_jobs(jobs_store)
    if not found:
        return
    with st.expander(f"All jobs ({len(found)})", expanded=False):
        st.dataframe(
            jobs_table(found),
            hide_index=True,
            key="jobs_all",
            column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
        )
