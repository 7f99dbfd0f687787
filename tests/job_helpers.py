"""Helpers for the job tests: a Prune & evaluate job config on the tiny profiled cache, waiting on a
job's record, and stopping the worker processes a test started (by their pid, from worker.json)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

JOB_WAIT_S = 300.0  # a worker imports torch first: seconds to a minute on 2 shared cores


def prune_eval_config(cache_root: Path, sparsity: float = 0.25, limit: int = 4, tasks=("rte",), ppl: bool = False) -> dict:
    from diet_explore.evaluation.evaluate import EvalConfig
    from diet_explore.experiments.tuning import PruneEvalJob
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.profiling.cache import load_cache

    folder = cache_root / "tiny"
    cache = load_cache(folder)
    mask_config = MaskConfig(sparsity=sparsity)
    mask = build_mask(cache, mask_config)
    ecfg = EvalConfig(tasks=list(tasks), limit=limit, perplexity=ppl, ppl_windows=2, exclude_cache=str(folder))
    return PruneEvalJob(
        model=cache.model_name,
        cache=str(folder),
        cache_display="tiny",
        manifest_hash=cache.manifest_hash,
        mask=mask_config.to_dict(),
        n_keep=mask.n_keep,
        eval=ecfg.to_dict(),
    ).to_dict()


def wait_job(store, job_id: str, until, timeout: float = JOB_WAIT_S, poll: float = 0.02) -> dict:
    """Poll the job's record until ``until(job)`` holds (a status tuple or a predicate); returns the job."""
    test = until if callable(until) else (lambda j: j["status"] in until)
    deadline = time.monotonic() + timeout
    job = store.get(job_id)
    while not test(job):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} did not reach the state in {timeout:.0f} s: {job['status']}, {job.get('progress')}"
            )
        time.sleep(poll)
        job = store.get(job_id)
    return job


def scored(job: dict) -> int:
    return int(((job.get("partial") or {}).get("scored") or {}).get("pruned") or 0)


def paired(job: dict) -> int:
    """Examples both models have scored so far (what the running numbers are computed on)."""
    return int((((job.get("partial") or {}).get("average") or {}).get("main") or {}).get("n") or 0)


def worker_pid(store) -> int | None:
    try:
        return int(json.loads((store.root / "worker.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def wait_worker_alive(store, timeout: float = JOB_WAIT_S) -> int:
    deadline = time.monotonic() + timeout
    while not store.live_worker():
        if time.monotonic() > deadline:
            raise AssertionError("the worker did not start")
        time.sleep(0.05)
    return worker_pid(store)


def stop_workers(store) -> None:
    """End the worker process a test started for ``store`` (SIGTERM: it stops its job as
    interrupted and exits; SIGKILL if it does not within 30 s). Only that pid, never by name."""
    pid = worker_pid(store)
    if pid is None or pid == os.getpid() or not _alive(pid):  # a worker run in this process has ended
        return
    with _suppress():
        os.kill(pid, signal.SIGCONT)  # a test may have paused it
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with _suppress():
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


def sleepy_job(config: dict, ctx) -> dict:
    """A stand-in job handler (registered by tests as type ``sleepy``): waits ``seconds`` in small
    steps, writing progress and checking Stop as a real handler does between forward passes."""
    from diet_explore.evaluation.blocks import Stopped

    seconds = config["seconds"] if int(ctx.job.get("attempts", 1)) <= 1 else config.get("retry_seconds", config["seconds"])
    steps = max(1, int(seconds / 0.05))
    for i in range(steps):
        why = ctx.should_stop()
        if why:
            raise Stopped(why)
        if not config.get("quiet"):  # quiet: no write renews the lease, only the heartbeat does
            ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
        time.sleep(0.05)
    return {"slept": seconds, "pid": os.getpid()}


def register_sleepy(monkeypatch) -> None:
    from diet_explore.experiments import jobs as J

    monkeypatch.setitem(J.HANDLERS, "sleepy", "job_helpers:sleepy_job")
    monkeypatch.setitem(J.CONFIG_FIELDS, "sleepy", {"seconds": lambda v: isinstance(v, (int, float))})


def register_sleepy_handler() -> None:
    """``register_sleepy`` without pytest (in an app script a test runs)."""
    from diet_explore.experiments import jobs as J

    J.HANDLERS["sleepy"] = "job_helpers:sleepy_job"
    J.CONFIG_FIELDS["sleepy"] = {"seconds": lambda v: isinstance(v, (int, float))}
