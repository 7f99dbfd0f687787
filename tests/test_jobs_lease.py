"""Per-job liveness (experiments/jobs.py): leases, claim by id, several workers on one store, a
stale lease requeued exactly once, Resume refusing a live job, and a read-only store.

Most tests use a stand-in handler (``job_helpers.sleepy_job``, job type ``sleepy``) run in this
process: the rules under test are the store's, not a model's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from job_helpers import register_sleepy, stop_workers, wait_job

from diet_explore.cli import main as cli
from diet_explore.core.errors import DietError
from diet_explore.experiments import jobs as J
from diet_explore.experiments.jobs import JobStore, LeaseLost, run_worker


@pytest.fixture
def store(tmp_path, monkeypatch):
    register_sleepy(monkeypatch)
    return JobStore(tmp_path / "runs")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set_lease(store: JobStore, job_id: str, **lease) -> None:
    """Rewrite a running job's lease as a worker elsewhere (or a dead one) would have left it."""
    record = store.get(job_id)
    store._write(
        {k: v for k, v in record.items() if k != "stored_status"} | {"status": "running", "lease": record["lease"] | lease}
    )


def test_claim_by_id_is_a_compare_and_swap_and_the_lease_names_its_worker(store):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    got = store.claim(a, "w1")
    assert got["status"] == "running" and got["lease"]["token"] == "w1" and got["lease"]["pid"] == os.getpid()
    assert got["lease"]["host"] == J.HOST and got["lease"]["expires"] > time.time() + J.lease_s() - 5
    assert store.claim(a, "w2") is None  # already running: the second claimer gets nothing
    assert store.get(a)["lease"]["token"] == "w1" and store.get(a)["status"] == "running"
    with pytest.raises(LeaseLost):
        store.update(a, owner="w2", progress={"fraction": 0.5, "message": "not mine"})


def test_a_running_job_with_a_live_lease_cannot_be_resumed_from_the_store_or_the_cli(store, capsys):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.claim(a, "w1")
    _set_lease(store, a, host="another-machine", pid=1)  # alive by its lease alone
    with pytest.raises(DietError, match=f"job {a} is running .*renewed its lease"):
        store.resume(a)
    assert cli(["jobs", "--runs", str(store.runs.root), "--resume", a]) == 2
    assert capsys.readouterr().err.startswith(f"error: job {a} is running")
    assert store.get(a)["status"] == "running" and store.get(a)["attempts"] == 1  # not queued a second time


def test_an_expired_lease_is_requeued_exactly_once_and_the_stale_worker_can_no_longer_write(store):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.claim(a, "w1")
    _set_lease(store, a, host="another-machine", expires=time.time() - 1)
    assert store.get(a)["status"] == "interrupted"  # shown so at once
    again = store.claim_next("w2")  # the next worker requeues it and takes it
    assert again["job_id"] == a and again["lease"]["token"] == "w2" and again["attempts"] == 2 and again["requeues"] == 1
    assert "requeued" in again["log"][-1]
    with pytest.raises(LeaseLost):  # the first worker wakes up: its writes are refused
        store.update(a, owner="w1", status="done")
    _set_lease(store, a, host="another-machine", expires=time.time() - 1)  # and its second worker dies too
    assert store.claim_next("w3") is None  # not requeued a second time
    job = store.get(a)
    assert job["status"] == "interrupted" and "stored_status" not in job and "died again" in job["progress"]["message"]
    assert job["attempts"] == 2
    store.resume(a)  # a person's decision: queued again, with the automatic requeue available
    assert store.claim_next("w4")["requeues"] == 0


def test_a_local_worker_whose_pid_is_gone_is_dead_before_its_lease_expires(store):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.claim(a, "w1")
    assert store.get(a)["status"] == "running"
    _set_lease(store, a, pid=_dead_pid())  # this host, lease not expired, process gone
    assert store.get(a)["status"] == "interrupted"


def test_racing_workers_requeue_and_claim_a_stale_job_once(store):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.claim(a, "w0")
    _set_lease(store, a, pid=_dead_pid())
    got: list = []
    threads = [threading.Thread(target=lambda i=i: got.append(store.claim_next(f"w{i + 1}"))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [g for g in got if g is not None]
    assert len(claimed) == 1 and store.get(a)["requeues"] == 1 and store.get(a)["attempts"] == 2


def test_several_workers_share_one_store_and_each_job_runs_once(store):
    ids = [store.submit("sleepy", {"seconds": 0.2 + i / 100}, f"j{i}")[0] for i in range(6)]
    seen: list[str] = []
    workers = [
        threading.Thread(
            target=run_worker,
            args=(store,),
            kwargs={"until_empty": True, "exclusive": False, "on_job": lambda j: seen.append(j["job_id"])},
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(seen) == sorted(ids)  # each job claimed once, none lost
    jobs = [store.get(i) for i in ids]
    assert all(j["status"] == "done" and j["attempts"] == 1 and j.get("lease") is None for j in jobs)
    assert len({j["worker"]["token"] for j in jobs}) > 1  # shared out between the workers


def test_the_heartbeat_keeps_a_long_job_alive_past_its_lease(store, monkeypatch):
    monkeypatch.setenv(J.LEASE_ENV, "1.5")  # renewed every 0.3 s: slack for a thread on 2 busy cores
    a, _ = store.submit("sleepy", {"seconds": 4.0, "quiet": True}, "long")
    seen: list[str] = []

    def watch():
        while (status := store.get(a)["status"]) not in ("done", "failed"):  # an interrupted one still ends done
            seen.append(status)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert run_worker(store, until_empty=True, exclusive=False) == 1
    watcher.join()
    assert store.get(a)["status"] == "done" and "interrupted" not in seen and seen.count("running") > 5


def test_a_worker_that_lost_its_lease_drops_the_job_without_writing(store, monkeypatch):
    monkeypatch.setenv(J.LEASE_ENV, "0.4")
    a, _ = store.submit("sleepy", {"seconds": 3}, "long")
    job = store.claim(a, "w1")
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(J.run_job(store, job)))
    runner.start()
    time.sleep(0.3)
    with store._locked():  # meanwhile the job went stale and another worker took it over
        store.update(a, lease=job["lease"] | {"token": "w2", "expires": time.time() + 600})
    runner.join(timeout=30)
    assert result == ["lost"]
    after = store.get(a)
    assert after["status"] == "running" and after["lease"]["token"] == "w2" and "result" not in after


def test_a_read_only_store_lists_its_jobs_and_refuses_changes_in_one_line(store, monkeypatch, capsys):
    """On a read-only file system no lock file can be opened (EROFS): as root a chmod would not
    show it, so the lock's open fails as the OS makes it fail there."""
    import errno

    from filelock import FileLock

    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    (store.root / "worker.lock").write_text("")  # a store the app's worker used

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.lock_file)

    monkeypatch.setattr(FileLock, "acquire", read_only)
    assert cli(["jobs", "--runs", str(store.runs.root)]) == 0 and a in capsys.readouterr().out
    assert store.live_worker() is None
    for argv in (["--stop", a], ["--resume", a]):
        assert cli(["jobs", "--runs", str(store.runs.root), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: the job store {store.root} cannot be changed (Read-only file system)"), err
        assert "Traceback" not in err


def test_resume_of_a_record_copied_into_another_folder_quotes_the_typed_id(store, capsys):
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.stop(a)
    b = "20990101T000000-0000beef"
    (store.root / b).mkdir()
    (store.root / b / "job.json").write_text((store.root / a / "job.json").read_text())  # says job_id a
    assert cli(["jobs", "--runs", str(store.runs.root), "--resume", b]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: job record {store.root / b / 'job.json'} is damaged") and f"job {a}" not in err
    assert store.get(a)["status"] == "cancelled"  # the other job's record was not touched


def test_a_bad_lease_time_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(J.LEASE_ENV, "-3")
    with pytest.raises(DietError, match="DIET_EXPLORE_LEASE_S='-3' is not a number of seconds > 0"):
        J.lease_s()


@pytest.mark.slow  # the app's worker process imports torch: tens of seconds on 2 busy cores
def test_export_prune_and_save_runs_as_a_job_and_saves_the_folder_prune_model_makes(tmp_path, tiny_cache_root):
    import torch
    from transformers import AutoModelForCausalLM

    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.maskfile import mask_file_from_result
    from diet_explore.models.loading import load_model
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.saving import PRUNE_INFO_FILE
    from diet_explore.pruning.slicing import prune_model

    cache = load_cache(tiny_cache_root / "tiny")
    mask_file = mask_file_from_result(build_mask(cache, MaskConfig(sparsity=0.25, multiple_of=16)), cache)
    jobs = JobStore(tmp_path / "runs")
    folder = tmp_path / "export" / "pruned"
    try:
        job_id, new = J.submit_prune_job(jobs, cache.model_name, mask_file, folder)  # and the app's worker started
        assert new and jobs.get(job_id)["type"] == "prune_save"
        job = wait_job(jobs, job_id, ("done", "failed"))
    finally:
        stop_workers(jobs)
    assert job["status"] == "done", job.get("error")
    assert job["result"]["folder"] == str(folder.resolve()) and (folder / PRUNE_INFO_FILE).is_file()
    saved = AutoModelForCausalLM.from_pretrained(folder).eval()
    dense, _, _ = load_model(cache.model_name, device="cpu")
    expected = prune_model(dense, mask_file.keep).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, expected(ids).logits, atol=1e-5, rtol=1e-4)
    assert saved.config.hidden_size == mask_file.n_keep


PANEL = """
import sys
sys.path.insert(0, {tests!r})
from job_helpers import register_sleepy_handler
register_sleepy_handler()
from diet_explore.experiments.jobs import JobStore
from diet_explore_app import jobs_ui
jobs_ui.job_panel(JobStore({root!r}), "sleepy", "watched", render=lambda job: None)
"""


def test_the_apps_resume_button_is_offered_for_a_dead_lease_only_and_refuses_a_job_that_came_alive(store, monkeypatch):
    """The job panel (every page's): a live lease shows running with Stop and no Resume; a dead one
    shows Resume, and a click after another worker took the job over resumes nothing (the store
    refuses a resume of a live job too: test_a_running_job_with_a_live_lease_cannot_be_resumed...)."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(J.LocalProcessExecutor, "ensure_worker", lambda self, store, preload=None: False)
    a, _ = store.submit("sleepy", {"seconds": 0.1}, "a")
    store.claim(a, "w1")
    _set_lease(store, a, host="another-machine", pid=1)
    script = PANEL.format(tests=str(Path(__file__).parent), root=str(store.runs.root))
    at = AppTest.from_string(script, default_timeout=60).run()
    labels = [b.label for b in at.button]
    assert "Stop" in labels and "Resume" not in labels and "running" in at.markdown[0].value
    _set_lease(store, a, expires=time.time() - 1)  # its worker died
    at.run()
    assert "interrupted" in at.markdown[0].value and "Resume" in [b.label for b in at.button]
    _set_lease(store, a, expires=time.time() + 60)  # meanwhile another worker requeued and claimed it
    at.button(key="job_resume").click().run()  # the page re-reads the job: running, so the click resumes nothing
    assert "running" in at.markdown[0].value and "Resume" not in [b.label for b in at.button]
    assert store.get(a)["status"] == "running" and store.get(a)["attempts"] == 1 and store.get(a)["lease"]["token"] == "w1"
