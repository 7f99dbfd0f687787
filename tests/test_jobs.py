"""Background jobs (experiments/jobs.py): the on-disk store, the one-at-a-time FIFO worker process,
stop / interrupt / resume, failures, damaged records, concurrent sessions, and `diet-explore jobs`.

Jobs run on the tiny random llama profiled into a real score cache (``tiny_cache_root``). A test
that needs a job caught mid-run pauses the worker process with SIGSTOP (the worker pid is in the
store's worker.json) rather than hoping to be fast enough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from job_helpers import prune_eval_config, scored, stop_workers, wait_job, wait_worker_alive, worker_pid

from diet_explore.cli import main as cli
from diet_explore.experiments import jobs as J
from diet_explore.experiments.history import run_view
from diet_explore.experiments.jobs import JobStore, run_worker


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "runs")
    yield s
    stop_workers(s)


def _big(tiny_cache_root, tasks=("arc_easy", "rte"), limit=60, **kw):
    """A job with enough blocks to be caught mid-run (arc_easy has thousands of held-out examples)."""
    return prune_eval_config(tiny_cache_root, tasks=tasks, limit=limit, **kw)


# --------------------------------------------------------------------------------------------
# Running, in order
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_stores_the_run_the_library_computes_under_its_run_id(store, tiny_cache_root):
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_pair
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.models.loading import load_model
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.slicing import prune_model

    config = prune_eval_config(tiny_cache_root, limit=5, tasks=("rte", "arc_easy"), ppl=True)
    job_id, new = store.submit("prune_eval", config, "tiny")
    assert new and store.get(job_id)["status"] == "queued"
    assert run_worker(store, until_empty=True) == 1
    job = store.get(job_id)
    assert job["status"] == "done" and job["result"]["run_id"] == job["run_id"]
    run = store.runs.load(job["run_id"])

    cache = load_cache(tiny_cache_root / "tiny")
    mask = build_mask(cache, MaskConfig(sparsity=0.25))
    dense, tok, _ = load_model(cache.model_name, device="cpu")
    ecfg = EvalConfig.from_dict(config["eval"])
    pair = evaluate_pair(dense, prune_model(dense, mask.keep, saveable=False), tok, ecfg)
    assert run["n_keep"] == mask.n_keep and run["tasks"] == ["rte", "arc_easy"] and run["limit"] == 5
    view = run_view(run)  # the deltas are derived on read, not stored beside the paired results
    assert "delta_avg" not in run and view["delta_avg"] == pytest.approx(pair.average_delta()[0])
    assert run["target_sparsity"] == 0.25 and run["actual_sparsity"] == pytest.approx(1 - mask.n_keep / 64)
    assert run["mask_config"] == MaskConfig(sparsity=0.25).to_dict() and run["eval_config"] == ecfg.to_dict()
    assert run["pruned_ppl"] == pytest.approx(pair.pruned.perplexity, rel=1e-4)
    for row in run["task_results"]:
        assert row["examples"]["pruned"]["doc_id"] == [s.doc_id for s in pair.pruned.task_scores(row["task"])]
    # the last running numbers cover every example and equal the stored run's paired metrics
    partial = job["partial"]
    assert partial["scored"] == {"dense": 10, "pruned": 10} and partial["total"] == 10
    assert partial["average"]["main"]["delta"] == pytest.approx(run["paired"]["average"]["main"]["delta"])
    assert partial["average"]["gold_ll_per_char"]["delta"] == pytest.approx(run["paired"]["average"]["gold_ll_per_char"]["delta"])


def test_comparison_masks_are_scored_in_the_same_job_and_paired_with_the_mask(store, tiny_cache_root):
    from diet_explore.experiments.tuning import other_run_id
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.profiling.cache import load_cache

    config = prune_eval_config(tiny_cache_root, limit=6, tasks=("rte", "arc_easy"))
    cache = load_cache(tiny_cache_root / "tiny")
    other = MaskConfig(method="random", sparsity=1 - config["n_keep"] / 64)
    assert build_mask(cache, other).n_keep == config["n_keep"]  # the same kept count
    config["others"] = {"random": {"mask": other.to_dict(), "n_keep": config["n_keep"]}}
    job_id, _ = store.submit("prune_eval", config, "diet vs random")
    assert run_worker(store, until_empty=True) == 1
    job = store.get(job_id)
    assert job["status"] == "done", job.get("error")
    ids = job["result"]["others"]
    assert ids == {"random": other_run_id(job["run_id"], "random")}
    main, rand = store.runs.load(job["run_id"]), store.runs.load(ids["random"])
    assert rand["method"] == "random" and rand["n_keep"] == main["n_keep"] and len(store.runs.records()) == 2
    versus = job["partial"]["others"]["random"]["versus"]
    for task in ("rte", "arc_easy"):  # recomputed by hand from the two runs' stored examples: mask − random
        em = next(r for r in main["task_results"] if r["task"] == task)["examples"]["pruned"]
        er = next(r for r in rand["task_results"] if r["task"] == task)["examples"]["pruned"]
        norm = task == "arc_easy"

        def correct(ex, norm=norm):
            lls = np.array(ex["lls"]) / (np.array(ex["chars"]) if norm else 1.0)
            return (lls.argmax(axis=1) == np.array(ex["gold"])).astype(float)

        assert versus["tasks"][task]["main"]["delta"] == pytest.approx(float(np.mean(correct(em) - correct(er))))
        gold = np.array(em["gold"])
        rows = np.arange(len(gold))
        chars = np.array(em["chars"], dtype=float)[rows, gold]
        per_char = (np.array(em["lls"])[rows, gold] - np.array(er["lls"])[rows, gold]) / chars
        assert versus["tasks"][task]["gold_ll_per_char"]["delta"] == pytest.approx(float(per_char.mean()))
    assert job["partial"]["others"]["random"]["vs_dense"]["average"]["main"]["delta"] == pytest.approx(
        run_view(rand)["delta_avg"]
    )


def test_the_same_job_while_active_is_one_job_and_jobs_run_one_at_a_time_in_order(store, tiny_cache_root):
    first = prune_eval_config(tiny_cache_root, sparsity=0.25)
    second = prune_eval_config(tiny_cache_root, sparsity=0.5)
    a, new_a = store.submit("prune_eval", first, "a")
    b, new_b = store.submit("prune_eval", second, "b")
    again, new_again = store.submit("prune_eval", first, "a, clicked twice")  # a second tab, a double click
    assert (new_a, new_b, new_again) == (True, True, False) and again == a
    assert [j["job_id"] for j in store.jobs()] == [a, b]
    seen: list[str] = []
    assert run_worker(store, until_empty=True, on_job=lambda j: seen.append(j["job_id"])) == 2
    ja, jb = store.get(a), store.get(b)
    assert seen == [a, b] and ja["status"] == jb["status"] == "done"
    assert ja["finished"] <= jb["started"]  # never side by side
    _, new_after = store.submit("prune_eval", first, "a, again")  # finished: the same config is a new run
    assert new_after


def test_a_second_worker_never_runs_alongside_the_first(store, tiny_cache_root):
    store.submit("prune_eval", prune_eval_config(tiny_cache_root), "a")
    assert J.EXECUTOR.ensure_worker(store)
    wait_worker_alive(store)
    assert not J.EXECUTOR.ensure_worker(store)  # one is alive: nothing started
    assert run_worker(store, until_empty=True) == -1  # and a worker in this process is refused


def test_a_queued_job_stopped_is_cancelled_and_never_runs(store, tiny_cache_root):
    a, _ = store.submit("prune_eval", prune_eval_config(tiny_cache_root), "a")
    assert store.stop(a)["status"] == "cancelled"
    assert run_worker(store, until_empty=True) == 0
    assert store.get(a)["status"] == "cancelled" and not store.runs.records()


# --------------------------------------------------------------------------------------------
# Stop, interrupt, resume
# --------------------------------------------------------------------------------------------
def _caught_running(store, job_id: str) -> int:
    """Wait until the job has running numbers, then pause its worker; returns the worker pid."""
    job = wait_job(store, job_id, lambda j: scored(j) > 0 or j["status"] not in J.ACTIVE)
    pid = worker_pid(store)
    os.kill(pid, signal.SIGSTOP)
    job = store.get(job_id)
    assert job["status"] == "running" and 0 < scored(job) < job["partial"]["total"], job["status"]
    return pid


@pytest.mark.slow
def test_stop_ends_a_running_job_with_its_partial_results_kept_and_marked(store, tiny_cache_root):
    job_id, _ = J.submit(store, "prune_eval", _big(tiny_cache_root), "big")
    pid = _caught_running(store, job_id)
    stopper = threading.Thread(target=store.stop, args=(job_id,))  # waits if the paused worker holds the lock
    stopper.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGCONT)
    stopper.join()
    job = wait_job(store, job_id, ("stopped",))
    assert job["result"]["partial"] is True and 0 < job["result"]["scored"]["pruned"] < job["result"]["total"]
    assert job["result"]["average"]["main"]["n"] == job["result"]["scored"]["pruned"]
    assert not store.runs.records()  # a partial run is the job's, not the history's
    with pytest.raises(Exception, match="not queued or running"):
        store.stop(job_id)


@pytest.mark.slow
def test_an_interrupted_job_resumes_from_its_blocks_to_the_numbers_of_an_uninterrupted_run(
    store, tiny_cache_root, tmp_path, monkeypatch
):
    from diet_explore.evaluation.scoring import LoglikelihoodScorer

    config = _big(tiny_cache_root)
    job_id, _ = J.submit(store, "prune_eval", config, "big")
    pid = _caught_running(store, job_id)
    os.kill(pid, signal.SIGKILL)  # the server went away hard: no chance to record anything
    deadline = time.monotonic() + 30
    while store.live_worker() and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted = store.get(job_id)
    assert interrupted["status"] == "interrupted"  # shown so at once, though the record still says running
    done_before = scored(interrupted)

    rows: list[int] = []
    real = LoglikelihoodScorer._run_batch
    monkeypatch.setattr(LoglikelihoodScorer, "_run_batch", lambda self, batch: rows.append(len(batch)) or real(self, batch))
    store.resume(job_id)
    assert run_worker(store, until_empty=True) == 1
    resumed = store.get(job_id)
    assert resumed["status"] == "done" and resumed["attempts"] == 2
    total = 2 * resumed["partial"]["total"]  # dense and pruned
    assert sum(rows) <= total - done_before  # what was scored before the kill was not scored again

    fresh = JobStore(tmp_path / "fresh")
    other, _ = fresh.submit("prune_eval", config, "uninterrupted")
    run_worker(fresh, until_empty=True)
    a, b = store.runs.load(resumed["run_id"]), fresh.runs.load(fresh.get(other)["run_id"])
    va, vb = run_view(a), run_view(b)
    assert [va[k] for k in ("delta_avg", "ci_low", "ci_high")] == pytest.approx(
        [vb[k] for k in ("delta_avg", "ci_low", "ci_high")]
    )
    for ra, rb in zip(a["task_results"], b["task_results"]):
        assert ra["examples"]["pruned"]["doc_id"] == rb["examples"]["pruned"]["doc_id"]
        np.testing.assert_allclose(
            np.concatenate(ra["examples"]["pruned"]["lls"]), np.concatenate(rb["examples"]["pruned"]["lls"]), atol=1e-4
        )
    assert a["paired"]["average"]["gold_ll_per_char"]["delta"] == pytest.approx(
        b["paired"]["average"]["gold_ll_per_char"]["delta"], abs=1e-6
    )


@pytest.mark.slow
def test_a_worker_stops_its_job_as_interrupted_when_the_process_that_started_it_goes_away(store, tiny_cache_root, tmp_path):
    """What a server restart does: the worker's parent is gone, so its job is recorded interrupted."""
    job_id, _ = store.submit("prune_eval", _big(tiny_cache_root, tasks=("arc_easy",), limit=400), "big")
    script = (
        "import sys, time; from diet_explore.experiments.jobs import JobStore, EXECUTOR; "
        f"EXECUTOR.ensure_worker(JobStore({str(store.runs.root)!r})); time.sleep(600)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": _package_parent()}
    )
    try:
        wait_job(store, job_id, lambda j: scored(j) > 0)
    finally:
        owner.kill()
        owner.wait()
    job = wait_job(store, job_id, lambda j: j["status"] == "interrupted" and "stored_status" not in j, timeout=60)
    assert job["result"]["partial"] is True and scored(job) > 0
    deadline = time.monotonic() + 30
    while store.live_worker() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.live_worker()  # and the worker exited


def _worker_process(store, tmp_path, before: str = "") -> subprocess.Popen:
    """``run_worker`` in a process of its own (``before``: Python run first, e.g. a slow warm-up)."""
    run = f"jobs.run_worker(jobs.JobStore({str(store.runs.root)!r}))"
    script = "; ".join(["import time", "from diet_explore.experiments import jobs", *([before] if before else []), run])
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": _package_parent()}
    )


@pytest.mark.slow
def test_sigterm_stops_a_running_job_as_interrupted_and_the_worker_exits(store, tiny_cache_root, tmp_path):
    """A supervisor's SIGTERM mid-job: the job is recorded interrupted, its partial results kept, resumable."""
    job_id, _ = store.submit("prune_eval", _big(tiny_cache_root, tasks=("arc_easy",), limit=400), "big")
    worker = _worker_process(store, tmp_path)
    try:
        wait_job(store, job_id, lambda j: scored(j) > 0)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    job = store.get(job_id)
    assert job["status"] == "interrupted" and job["result"]["partial"] is True and scored(job) > 0


def test_sigterm_while_the_worker_warms_up_exits_at_once(store, tmp_path):
    """Nothing runs yet (importing torch, loading the model to preload): SIGTERM does not wait for that."""
    worker = _worker_process(store, tmp_path, before="jobs._warm_up = lambda: time.sleep(120)")
    try:
        deadline = time.monotonic() + 60
        while worker_pid(store) != worker.pid and time.monotonic() < deadline:  # worker.json: it holds the lock
            time.sleep(0.05)
        assert worker_pid(store) == worker.pid
        start = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert time.monotonic() - start < 10  # not after the 120 s warm-up
    finally:
        worker.kill()
    assert run_worker(store, until_empty=True) == 0  # and it let go of the worker lock


def _package_parent() -> str:
    import diet_explore

    return str(os.path.dirname(os.path.dirname(diet_explore.__file__)))


# --------------------------------------------------------------------------------------------
# Bad input and safety
# --------------------------------------------------------------------------------------------
def test_a_model_that_fails_to_load_ends_failed_with_its_message_and_the_store_stays_consistent(store, tiny_cache_root, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_cache_root.parent / "models" / "tiny-llama", broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    bad = prune_eval_config(tiny_cache_root) | {"model": str(broken)}
    failed, _ = store.submit("prune_eval", bad, "broken")
    good, _ = store.submit("prune_eval", prune_eval_config(tiny_cache_root), "good")
    assert run_worker(store, until_empty=True) == 2
    job = store.get(failed)
    assert job["status"] == "failed" and job["error"]["message"]
    assert "safetensors" in job["error"]["message"].lower() or "load" in job["error"]["message"].lower()
    assert store.get(good)["status"] == "done"  # the queue went on
    assert [r["run_id"] for r in store.runs.records()] == [store.get(good)["run_id"]]  # nothing half-stored


def test_a_damaged_job_record_is_reported_and_skipped(store, tiny_cache_root, capsys):
    good, _ = store.submit("prune_eval", prune_eval_config(tiny_cache_root), "good")
    damaged = store.root / "20260101T000000-deadbeef"
    damaged.mkdir()
    (damaged / "job.json").write_text('{"kind": "diet-explore-job", "job_id": "20260101T000000-dead')  # cut short
    with pytest.warns(UserWarning, match="skipping damaged job record .*deadbeef"):
        assert [j["job_id"] for j in store.jobs()] == [good]
    assert run_worker(store, until_empty=True) == 1 and store.get(good)["status"] == "done"
    assert cli(["jobs", "--runs", str(store.runs.root)]) == 0
    out = capsys.readouterr()
    assert "warning: skipping damaged job record" in out.err and good in out.out and "done" in out.out
    with pytest.raises(Exception, match="is damaged"):
        store.get("20260101T000000-deadbeef")


BARE_CONFIG = {"model": "m", "cache": "c", "cache_display": "c", "manifest_hash": "h", "mask": {}, "n_keep": 8, "eval": {}}


@pytest.mark.parametrize(
    "field, value",
    [
        ("progress", "halfway"),  # crashed the listing (AttributeError) and --stop (_msg: TypeError)
        ("progress", [1]),
        ("progress", {"fraction": "x", "message": "m"}),  # the listing's float(): ValueError
        ("progress", {"fraction": True}),
        ("progress", {"fraction": 0.5, "message": 3}),
        ("error", "boom"),  # a failed job's error must be a dict: the listing called .get on it
        ("error", {"message": ["m"]}),
        ("worker", "w"),
        ("worker", {"pid": 1, "token": 5}),
        ("config", {}),  # --resume: PruneEvalJob.__init__() missing 7 required positional arguments, rc 1
        ("config", BARE_CONFIG | {"n_keep": "8"}),
        ("log", "line"),
        ("log", [1]),
        ("label", {"a": 1}),
        ("result", [1]),
    ],
)
def test_a_job_record_with_a_wrongly_typed_field_is_damaged_reported_and_skipped(store, capsys, field, value):
    store.runs.root.mkdir(parents=True)
    good, _ = store.submit("prune_eval", BARE_CONFIG, "good")
    bad = "20260101T000000-deadbeef"
    record = json.loads((store.root / good / "job.json").read_text())
    status = "failed" if field == "error" else "stopped"  # a failed job shows its error; a stopped one can be resumed
    record |= {"job_id": bad, "status": status, field: value}
    (store.root / bad).mkdir()
    (store.root / bad / "job.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=f"skipping damaged job record .*{bad}"):
        assert [j["job_id"] for j in store.jobs()] == [good]
    root = str(store.runs.root)
    assert cli(["jobs", "--runs", root]) == 0
    out = capsys.readouterr()
    assert "warning: skipping damaged job record" in out.err and good in out.out and bad not in out.out
    for action in ("--stop", "--resume"):
        assert cli(["jobs", "--runs", root, action, bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: job record {store.root / bad / 'job.json'} is damaged") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 2  # the line and its hint
    assert json.loads((store.root / bad / "job.json").read_text())[field] == value  # left as it was


def test_the_config_fields_a_job_record_needs_are_those_its_handler_requires(store):
    import dataclasses

    from diet_explore.experiments.sweep import CompareConfig
    from diet_explore.experiments.tuning import PruneEvalJob

    required = {f.name for f in dataclasses.fields(PruneEvalJob) if f.default is f.default_factory is dataclasses.MISSING}
    assert set(J.CONFIG_FIELDS["prune_eval"]) == required
    assert set(J.CONFIG_FIELDS["sweep"]) <= {f.name for f in dataclasses.fields(CompareConfig)}
    with pytest.raises(J.DietError, match="config lacks one of"):
        store.submit("prune_eval", {"model": "m"}, "x")
    assert not store.root.exists()


def test_a_bad_worker_idle_time_breaks_no_import_and_is_refused_where_a_worker_starts(store, monkeypatch, capsys):
    env = {**os.environ, "DIET_EXPLORE_WORKER_IDLE_S": "abc"}
    code = "import diet_explore.experiments.jobs"  # read at import, it broke every command (ValueError)
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).returncode == 0
    monkeypatch.setenv("DIET_EXPLORE_WORKER_IDLE_S", "abc")
    store.runs.root.mkdir(parents=True)
    assert cli(["jobs", "--runs", str(store.runs.root)]) == 0 and "no jobs" in capsys.readouterr().out  # listing: unused
    message = "DIET_EXPLORE_WORKER_IDLE_S='abc' is not a number of seconds > 0"
    with pytest.raises(J.DietError, match=message) as refused:
        J.submit(store, "prune_eval", BARE_CONFIG, "x")  # refused before the job is queued with no worker for it
    assert "set it to a number of seconds > 0" in str(refused.value) and not store.root.exists()
    with pytest.raises(J.DietError, match=message):
        run_worker(store)
    with pytest.raises(J.DietError, match=message):
        J.EXECUTOR.ensure_worker(store)
    assert not store.root.exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e999"])
def test_the_worker_idle_time_must_be_a_number_of_seconds_above_zero(monkeypatch, value):
    monkeypatch.setenv("DIET_EXPLORE_WORKER_IDLE_S", value)
    with pytest.raises(J.DietError, match=f"DIET_EXPLORE_WORKER_IDLE_S='{value}' is not a number of seconds > 0"):
        J.worker_idle_s()


def test_the_worker_idle_time_is_read_when_used(monkeypatch):
    monkeypatch.setenv("DIET_EXPLORE_WORKER_IDLE_S", " 90 ")
    assert J.worker_idle_s() == 90.0
    monkeypatch.delenv("DIET_EXPLORE_WORKER_IDLE_S")
    assert J.worker_idle_s() == J.IDLE_EXIT_S == 1800.0


def test_two_sessions_submitting_at_once_neither_lose_nor_duplicate_a_record(store, tiny_cache_root):
    """Four app sessions (threads of one server) and two other processes submit at the same time."""
    configs = [prune_eval_config(tiny_cache_root, sparsity=s) for s in (0.25, 0.5)]
    ids: list[str] = []
    barrier = threading.Barrier(4)

    def session(i: int) -> None:
        barrier.wait()
        for k in range(3):
            ids.append(store.submit("prune_eval", configs[0], f"s{i}")[0])  # the same job
            ids.append(store.submit("prune_eval", {**configs[1], "source": f"session-{i}-{k}"}, f"s{i}-{k}")[0])

    script = (
        "import json, sys; from diet_explore.experiments.jobs import JobStore; s = JobStore(sys.argv[1]); "
        "c = json.loads(sys.argv[2]); [s.submit('prune_eval', c | {'source': f'proc-{sys.argv[3]}-{k}'}, 'p') for k in range(3)]"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store.runs.root), json.dumps(configs[1]), str(p)],
            env={**os.environ, "PYTHONPATH": _package_parent()},
        )
        for p in range(2)
    ]
    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    jobs = store.jobs()
    sources = sorted(j["config"]["source"] for j in jobs)
    assert sources == sorted(
        ["app"] + [f"session-{i}-{k}" for i in range(4) for k in range(3)] + [f"proc-{p}-{k}" for p in range(2) for k in range(3)]
    )
    assert len({j["job_id"] for j in jobs}) == len(jobs) == 1 + 12 + 6
    assert len({j["queue_seq"] for j in jobs}) == len(jobs)  # one place in the queue each
    assert set(ids) <= {j["job_id"] for j in jobs}


# --------------------------------------------------------------------------------------------
# A sweep job
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_job_resumes_after_an_interruption_to_the_rows_of_an_uninterrupted_sweep(store, tiny_cache_root, tmp_path):
    from diet_explore.experiments.results import read_results
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.masking.config import MaskConfig

    config = CompareConfig(
        model=str(tiny_cache_root.parent / "models" / "tiny-llama"),
        cache=str(tiny_cache_root / "tiny"),
        sparsities=[0.25, 0.5],
        methods=["diet", "random"],
        tasks=["arc_easy"],
        limit=48,  # ~3 runs' time to go when the test sees 2 rows: it pauses the worker well before the end
        perplexity=False,
        mask=MaskConfig(exact=True, multiple_of=4),
        round_to_model=False,
        device="cpu",
    )
    job_id, _ = J.submit(store, "sweep", config.to_dict(), "sweep")
    out = store.folder(job_id) / "sweep"
    wait_job(store, job_id, lambda j: len(read_results(out)) >= 2 or j["status"] not in J.ACTIVE)  # dense + a first run
    pid = worker_pid(store)
    os.kill(pid, signal.SIGSTOP)
    before = read_results(out)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while store.live_worker() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.get(job_id)["status"] == "interrupted"
    assert 2 <= len(before) < 5
    store.resume(job_id)
    assert run_worker(store, until_empty=True) == 1
    assert store.get(job_id)["status"] == "done"
    rows = {r["key"]: r for r in read_results(out)}
    assert sorted(rows) == ["dense", "diet@0.25", "diet@0.5", "random@0.25", "random@0.5"]
    assert all(rows[r["key"]]["wall_time_s"] == r["wall_time_s"] for r in before)  # finished runs were kept, not rerun
    reference = {
        r["key"]: r
        for r in run_compare(config, tmp_path / "reference", store=RunStore(tmp_path / "ref-runs"), log=lambda m: None)
    }
    for key, row in rows.items():
        assert row["tasks"]["arc_easy"]["correct"] == reference[key]["tasks"]["arc_easy"]["correct"], key
        assert row["avg"] == pytest.approx(reference[key]["avg"])
    assert len([r for r in store.runs.records() if r["source"] == "compare"]) == 4  # each run once in the history


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------
def test_cli_jobs_lists_stops_and_resumes(store, tiny_cache_root, capsys):
    root = str(store.runs.root)
    assert cli(["jobs", "--runs", root]) == 2 and "no such folder" in capsys.readouterr().err  # not an empty store
    store.runs.root.mkdir(parents=True)
    assert cli(["jobs", "--runs", root]) == 0 and "no jobs" in capsys.readouterr().out
    a, _ = store.submit("prune_eval", prune_eval_config(tiny_cache_root), "first")
    assert cli(["jobs", "--runs", root, "--stop", a]) == 0 and "cancelled" in capsys.readouterr().out
    assert cli(["jobs", "--runs", root, "--resume", a]) == 0  # runs the queue here: no worker is alive
    out = capsys.readouterr()
    assert f"job {a}: done, run {store.get(a)['run_id']}" in out.out
    listing = json.loads(cli(["jobs", "--runs", root, "--json"]) == 0 and capsys.readouterr().out)
    assert [(j["job_id"], j["status"]) for j in listing] == [(a, "done")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stop", "20990101T000000-00000000"], "error: job 20990101T000000-00000000 is not in"),
        (["--stop", "../etc"], "error: '../etc' is not a job id"),
        (["--resume", "nope"], "error: 'nope' is not a job id"),
    ],
)
def test_cli_jobs_refuses_unknown_jobs_in_one_line(store, argv, message, capsys):
    store.runs.root.mkdir(parents=True, exist_ok=True)  # a run store with no job yet, or any folder
    assert cli(["jobs", "--runs", str(store.runs.root), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    assert list(store.runs.root.iterdir()) == []  # no jobs/.jobs.lock left in a folder that was no run store


def test_cli_jobs_refuses_a_run_store_from_the_environment_that_is_no_folder_naming_the_variable(tmp_path, monkeypatch, capsys):
    """DIET_EXPLORE_RUNS_DIR=<a file> listed `no jobs in <file>/jobs` (rc 0) where --runs <file> is refused."""
    (tmp_path / "file").write_text("")
    for value, said in ((tmp_path / "file", " is not a folder"), (tmp_path / "typo", ": no such folder")):
        monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(value))
        for argv in ([], ["--stop", "20990101T000000-00000000"]):
            assert cli(["jobs", *argv]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: DIET_EXPLORE_RUNS_DIR {value}{said}") and "unset it" in err and "--runs" in err
        assert not (tmp_path / "typo").exists()
    monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(tmp_path / "file"))
    with pytest.raises(J.DietError, match="^DIET_EXPLORE_RUNS_DIR .*file is not a folder"):  # compare, submit: the same name
        J.RunStore().check("--runs")
    with pytest.raises(J.DietError, match="^--runs .*file is not a folder"):
        J.RunStore(tmp_path / "file").check("--runs")


def test_cli_jobs_refuses_to_resume_a_finished_job(store, tiny_cache_root, capsys):
    a, _ = store.submit("prune_eval", prune_eval_config(tiny_cache_root), "first")
    run_worker(store, until_empty=True)
    assert cli(["jobs", "--runs", str(store.runs.root), "--resume", a]) == 2
    assert f"error: job {a} is done" in capsys.readouterr().err
