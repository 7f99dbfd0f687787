"""A background job in a real headless Chromium (Playwright + Debian's chromium): start a Prune &
evaluate run, switch page and come back, reload, see its running numbers and then its result;
Stop it and Resume it; restart the server mid-run and Resume the interrupted job. Every finished
run must show the numbers of the same run done in one go.

Runs on the tiny random llama profiled into a real score cache (``tiny_cache_root``). To look at a
job mid-run, the test pauses the worker process (pid from the store's worker.json) with SIGSTOP.
Missing Chromium/Playwright skips locally but fails when CI=true."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from app_helpers import CHROME_ARGS, CHROMIUM, WAIT_MS, goto_page, idle, metric, require_browser, start_app_server
from job_helpers import paired, wait_job, worker_pid

from diet_explore.evaluation.decision import format_entry, format_estimate
from diet_explore.experiments.history import run_view
from diet_explore.experiments.jobs import JobStore

pytestmark = pytest.mark.browser
RUN_MS = 600_000  # a job on 2 loaded cores: the worker's imports, then seconds of scoring


@pytest.fixture
def env(tmp_path, tiny_cache_root):
    return {
        "DIET_EXPLORE_CACHE_DIR": str(tiny_cache_root),
        "DIET_EXPLORE_EXPORT_DIR": str(tmp_path / "export"),
        "DIET_EXPLORE_RUNS_DIR": str(tmp_path / "runs"),
        "DIET_EXPLORE_EVAL_CACHE": str(tmp_path / "eval-cache"),
    }


def _open(browser, url: str):
    page = browser.new_context(viewport={"width": 1440, "height": 1400}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/prune_eval", wait_until="domcontentloaded")
    page.get_by_role("heading", name="Prune & evaluate").first.wait_for(timeout=WAIT_MS)
    idle(page)
    return page, errors


# Examples per task: the test holds the worker the moment the first paired numbers are on disk, so
# the job is still running then (more would exceed a held-out split of the tiny cache's tasks).
LIMIT = 150


def _start(page, limit: int) -> None:
    box = page.get_by_label("Held-out examples per task")
    box.fill(str(limit))
    box.press("Enter")
    idle(page)
    toggle = page.get_by_text("Wiki perplexity", exact=True)
    toggle.click()
    idle(page)
    page.get_by_role("button", name="Prune and evaluate").click()


def _final(page) -> str:
    page.get_by_text("Mean Δ main metric", exact=True).wait_for(timeout=RUN_MS)
    idle(page)
    return metric(page, "Mean Δ main metric")


def _newest(store) -> dict:
    return max(store.jobs(), key=lambda j: j["queue_seq"])


def _hold_when_paired(store, before: set[str]) -> tuple[dict, int]:
    """Wait for the job just submitted (not in ``before``) to have paired numbers, then hold its
    worker at once (SIGSTOP); returns the job and the worker's pid. Waiting for the page first
    would leave a refresh or two in which a small job can finish."""
    deadline = time.monotonic() + RUN_MS / 1000
    while not (new := [j for j in store.jobs() if j["job_id"] not in before]):
        assert time.monotonic() < deadline, "the job was never submitted"
        time.sleep(0.02)
    job = wait_job(store, new[0]["job_id"], lambda j: paired(j) > 0 or j["status"] != "running" and j["status"] != "queued")
    pid = worker_pid(store)
    os.kill(pid, signal.SIGSTOP)
    job = store.get(job["job_id"])
    assert job["status"] == "running", f"the job was {job['status']} before it could be held"
    return job, pid


def test_a_job_survives_page_switches_reloads_stop_and_a_server_restart(env, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    store = JobStore(env["DIET_EXPLORE_RUNS_DIR"])
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        try:
            with start_app_server(tmp_path / "s1", env) as url:
                page, errors = _open(browser, url)
                # 1. start, switch page, come back, reload: the running job and its numbers stay
                _start(page, limit=LIMIT)
                first, pid = _hold_when_paired(store, set())
                try:
                    page.get_by_text("Mean Δ main metric so far", exact=True).wait_for(timeout=RUN_MS)
                    job = store.get(first["job_id"])
                    goto_page(page, "Mask builder")
                    goto_page(page, "Prune & evaluate")
                    page.get_by_text(f"Job {first['job_id']}", exact=False).first.wait_for(timeout=WAIT_MS)
                    page.get_by_text("running", exact=True).first.wait_for(timeout=WAIT_MS)
                    expected = format_entry(job["partial"]["average"]["main"])
                    page.wait_for_function(
                        "(v) => document.body.innerText.includes(v)", arg=expected, timeout=WAIT_MS
                    )  # the running number, after the page switch
                    page.reload(wait_until="domcontentloaded")
                    page.get_by_role("heading", name="Prune & evaluate").first.wait_for(timeout=WAIT_MS)
                    idle(page)
                    page.get_by_text(f"Job {first['job_id']}", exact=False).first.wait_for(timeout=WAIT_MS)
                    assert metric(page, "Mean Δ main metric so far") == expected  # and after a reload
                    assert page.locator('[data-testid="stProgress"]').count() >= 1
                finally:
                    os.kill(pid, signal.SIGCONT)
                one_go = _final(page)  # the page refreshes itself to the result
                done = store.get(first["job_id"])
                assert done["status"] == "done"
                view = run_view(store.runs.load(done["run_id"]))
                assert one_go == format_estimate(view["delta_avg"], view["ci_low"], view["ci_high"])

                # 2. Stop keeps the partial numbers; Resume finishes with the same numbers (the reload
                # started a new session: its settings are the defaults again)
                _start(page, limit=LIMIT)
                second, pid = _hold_when_paired(store, {first["job_id"]})  # still running when Stop arrives
                try:
                    page.get_by_text("Mean Δ main metric so far", exact=True).wait_for(timeout=RUN_MS)
                    page.get_by_role("button", name="Stop").click()
                    page.wait_for_timeout(1500)
                finally:
                    os.kill(pid, signal.SIGCONT)
                page.get_by_text("Mean Δ main metric (partial)", exact=True).wait_for(timeout=RUN_MS)
                assert store.get(second["job_id"])["status"] == "stopped"
                page.get_by_role("button", name="Resume").click()
                assert _final(page) == one_go

                # 3. the server stops mid-run: the job is interrupted
                before = {j["job_id"] for j in store.jobs()}
                page.get_by_role("button", name="Prune and evaluate").click()
                third, pid = _hold_when_paired(store, before)  # held mid-run while the server goes away
                page.get_by_text("Mean Δ main metric so far", exact=True).wait_for(timeout=RUN_MS)
                assert errors == [], errors
            os.kill(pid, signal.SIGCONT)  # its parent is gone: it records the job interrupted and exits
            wait_job(store, third["job_id"], ("interrupted", "done"))
            assert store.get(third["job_id"])["status"] == "interrupted", "the job ended before the server stopped"
            with start_app_server(tmp_path / "s2", env) as url:
                page, errors = _open(browser, url)
                page.get_by_text("was interrupted", exact=False).first.wait_for(timeout=WAIT_MS)
                page.get_by_role("button", name="Resume").click()
                assert _final(page) == one_go  # the same numbers as the run done in one go
                assert errors == [], errors
            assert [j["status"] for j in store.jobs()] == ["done", "done", "done"]
            assert len(store.runs.records()) == 3
            assert re.fullmatch(r"[+−]?\d+\.\d \[[+−]?\d+\.\d, [+−]?\d+\.\d\]", one_go), one_go  # points [95% CI]
        finally:
            browser.close()
