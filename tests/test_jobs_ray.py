"""Jobs on a local Ray cluster (``experiments/executors.py``, ``ray.init(num_cpus=2)``): two jobs
run at once on two actors with correct statuses, a killed actor's job is requeued exactly once and
finished by another, and no job record is duplicated or lost. The jobs are the stand-in handler
(``job_helpers.sleepy_job``): the rules under test are the executor's and the store's."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from job_helpers import register_sleepy

from diet_explore.experiments.executors import RayExecutor
from diet_explore.experiments.jobs import JobStore

ray = pytest.importorskip("ray")
# a local Ray cluster takes 10-30 s to start on 2 busy cores: in make test, not in make test-fast
pytestmark = pytest.mark.slow
HANDLERS = {"sleepy": "job_helpers:sleepy_job"}


@pytest.fixture(scope="module")
def cluster():
    import diet_explore

    tests = str(Path(__file__).resolve().parent)
    package = str(Path(diet_explore.__file__).resolve().parents[1])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, package])}},
    )
    yield
    ray.shutdown()


@pytest.fixture
def store(tmp_path, monkeypatch):
    register_sleepy(monkeypatch)
    return JobStore(tmp_path / "runs")


def _in_thread(executor, store, ids) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(executor.run(store, ids)))
    thread.start()
    return thread, out


def _wait(predicate, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_jobs_run_at_once_on_two_actors_and_a_killed_actors_job_is_requeued_once_and_no_record_is_lost(cluster, store):
    """Both jobs running at once, each on its own actor; then one actor is killed: its job is requeued
    once and finished by another actor, the other job is untouched, and no record is duplicated or lost
    (one pair of actors serves both rules)."""
    short, _ = store.submit("sleepy", {"seconds": 4.0}, "short")
    long, _ = store.submit("sleepy", {"seconds": 120.0, "retry_seconds": 0.3}, "killed")
    ids = [short, long]
    thread, statuses = _in_thread(RayExecutor(2, HANDLERS), store, ids)
    both: list[dict] = []

    def both_running() -> bool:
        jobs = [store.get(i) for i in ids]
        if all(j["status"] == "running" for j in jobs):
            both.extend(jobs)
            return True
        return False

    _wait(both_running)
    assert len({j["lease"]["pid"] for j in both}) == 2  # two actor processes, each holding its job's lease
    pid = both[1]["lease"]["pid"]
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert statuses == {short: "done", long: "done"}
    job = store.get(short)
    assert job["attempts"] == 1 and job["result"]["pid"] == both[0]["lease"]["pid"] != os.getpid()
    job = store.get(long)
    assert job["attempts"] == 2 and job["requeues"] == 1 and job["result"]["pid"] not in (pid, os.getpid())
    assert sum("requeued" in line for line in job["log"]) == 1
    records, damaged = store.scan()
    assert sorted(r["job_id"] for r in records) == sorted(ids) and not damaged


def test_the_apps_worker_runs_its_jobs_on_ray_actors_when_the_setting_says_ray(cluster, tiny_cache_root, tmp_path, monkeypatch):
    """``diet-explore app --executor ray``: the app starts one process that drives Ray actors, on the
    cluster RAY_ADDRESS names (this module's; a worker that starts its own cluster is
    test_app_sweep_executor's)."""
    import json

    from job_helpers import prune_eval_config, stop_workers, wait_job

    from diet_explore.experiments import jobs as J

    monkeypatch.setenv("DIET_EXPLORE_EXECUTOR", "ray")
    monkeypatch.setenv("DIET_EXPLORE_WORKERS", "1")
    monkeypatch.setenv("DIET_EXPLORE_WORKER_IDLE_S", "30")
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    store = JobStore(tmp_path / "runs")
    try:
        job_id, _ = J.submit(store, "prune_eval", prune_eval_config(tiny_cache_root), "on ray")
        job = wait_job(store, job_id, ("done", "failed"))
        info = json.loads((store.root / "worker.json").read_text())
        assert job["status"] == "done", job.get("error")
        assert info["executor"] == "ray" and info["workers"] == 1 and store.live_worker()
        assert job["worker"]["pid"] not in (info["pid"], os.getpid())  # run by an actor, not the driving process
    finally:
        stop_workers(store)


def test_compare_on_two_ray_actors_merges_one_results_file_with_the_dense_model_scored_once(
    cluster, tiny_cache_root, tmp_path, capsys
):
    from test_jobs_executors import _argv, check_split_sweep

    from diet_explore.cli import main as cli

    assert cli(["compare", *_argv(tiny_cache_root, tmp_path, "out"), "--executor", "ray", "--workers", "2"]) == 0
    assert "on RayExecutor (2 worker(s))" in capsys.readouterr().out
    store = JobStore(tmp_path / "runs")
    check_split_sweep(store, tmp_path / "out", tiny_cache_root, tmp_path)
    assert os.getpid() not in {j["worker"]["pid"] for j in store.jobs()}  # run by the actors
