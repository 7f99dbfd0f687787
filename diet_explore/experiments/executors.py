"""Executors: where jobs run. The job record is the truth (``jobs.JobStore``); an executor only
claims jobs by id and calls ``jobs.run_job`` on them, so any of them can serve the same store.

* ``local`` (the default): worker processes on this machine (``python -m diet_explore.experiments.jobs
  --shared``), each keeping the last model it loaded;
* ``ray`` (``pip install 'diet-explore[ray]'``): one Ray actor per worker, which keeps its model
  loaded between jobs; on a cluster with GPUs each actor holds one (``num_gpus=1``), else one CPU.
  Ray is imported only here, when chosen: the library imports without it.

A sweep (``compare``) splits into one ``compare_run`` job per (method, sparsity), all writing into
one ``--out``: rows merge in its results.jsonl under its lock (``results.append_result``). The
dense model is scored once: the first job to need it scores it under a lock while the others wait
for its row (and the evaluation cache keeps it for later sweeps).

The app's Sweeps page queues one ``sweep`` job (``queue_sweep``): on the local process it runs the
sweep itself, as one job; on Ray it is the driver of ``run_sweep`` (the function ``compare
--executor ray`` calls), so the sweep splits the same way and the page follows one job, whose
progress counts its runs' jobs.

Ray moves only job ids and folder names between processes; models and results stay in files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.experiments import jobs as J
from diet_explore.experiments.jobs import EXECUTOR_ENV, EXECUTORS, WORKERS_ENV, executor_setting  # noqa: F401  (re-exported)

POLL_S = 0.5  # how often a driver looks at its jobs' records
DENSE_WAIT_S = 24 * 3600.0  # a job waits this long for another job to finish scoring the dense model


# --------------------------------------------------------------------------------------------
# A sweep as jobs
# --------------------------------------------------------------------------------------------
def submit_sweep(
    store: J.JobStore, config, out: str | Path, eval_cache: str | Path | None = None, use_eval_cache: bool = True
) -> list[str]:
    """Queue ``config`` (a ``sweep.CompareConfig``) as one job per (method, sparsity) into ``out``;
    returns the job ids, in grid order (a run already in ``out`` gets no job). Re-submitting while
    they are queued or running returns the same jobs."""
    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.experiments.results import read_results
    from diet_explore.experiments.sweep import check_sweep_folder, combo_key, sweep_grid
    from diet_explore.profiling.cache import load_cache

    out = Path(out).resolve()
    atomic.check_writable(out, "--out", folder=True)
    check_sweep_folder(out)
    load_cache(config.cache)  # a bad cache is refused here, not in every job
    if use_eval_cache:
        EvalCache(eval_cache).check()
    done = {r.get("key") for r in read_results(out)}
    ids = []
    for method, sparsity in sweep_grid(config):
        key = combo_key(method, sparsity)
        if key in done:
            continue
        job_config = {
            "compare": config.to_dict(),
            "out": str(out),
            "run": key,
            "eval_cache": None if not use_eval_cache else str(EvalCache(eval_cache).root),
            "use_eval_cache": use_eval_cache,
        }
        job_id, _ = store.submit("compare_run", job_config, f"compare {key} → {out.name}")
        ids.append(job_id)
    return ids


def run_compare_run_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """One (method, sparsity) of a split sweep (``ctx``: ``jobs.JobContext``): ``run_compare`` with
    ``only`` that run, into the sweep's shared ``out``, with the worker's model; the dense row is
    scored by the first job that needs it, under a lock the others wait on."""
    from diet_explore.evaluation.blocks import ScoreLog
    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.experiments.results import read_results
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare

    cfg = CompareConfig.from_dict(config["compare"])
    out = Path(config["out"])
    ctx.log(f"Loading {cfg.model}…")
    model, tokenizer, info = ctx.load_model(cfg.model, cfg.device, cfg.dtype)
    common = {
        "model": model,
        "tokenizer": tokenizer,
        "info": info,
        "store": RunStore(ctx.runs.root),
        "progress": ctx.progress,
        "log": ctx.log,
        "eval_cache": EvalCache(config["eval_cache"]) if config.get("use_eval_cache", True) else None,
        "blocks": ScoreLog(ctx.folder / "blocks"),
        "should_stop": ctx.should_stop,
    }
    if not any(r.get("key") == "dense" for r in read_results(out)):
        ctx.log("waiting for the dense model's row (scored once, by the first job of the sweep)")
        with atomic.locked(dense_lock(ctx.store, out), timeout=DENSE_WAIT_S):
            if not any(r.get("key") == "dense" for r in read_results(out)):
                run_compare(cfg, out, only=[], **common)
    rows = run_compare(cfg, out, only=[config["run"]], **common)
    row = next((r for r in rows if r.get("key") == config["run"]), None)
    return {"out": str(out), "run": config["run"], "run_id": (row or {}).get("run_id")}


def dense_lock(store: J.JobStore, out: Path) -> Path:
    """The lock the jobs of one sweep take to score its dense model once (in the job store, not in ``out``)."""
    return store.root / f"dense-{hashlib.sha256(str(out).encode()).hexdigest()[:16]}"


SPLIT_KEY = "split"  # a sweep job's config field: the executor its runs' jobs go to (absent: run in the job)


def queue_sweep(store: J.JobStore, config, label: str, executor: str = "local", workers: int = 1) -> tuple[str, bool]:
    """The app's sweep (``config``: a ``sweep.CompareConfig``) as one ``sweep`` job, started by the
    app's worker; returns (job id, whether it is new). ``executor`` ``local``: the job runs the
    whole sweep in that worker, with its model. ``ray``: the job drives ``run_sweep`` on
    ``workers`` Ray actors (``run_split_sweep_job``): one job per (method, sparsity) into the job's
    folder, dense scored once. A missing Ray or a bad count is refused here, before anything is queued."""
    make_executor(executor, workers)
    job_config = config.to_dict()
    if executor != "local":
        job_config[SPLIT_KEY] = {"executor": executor, "workers": int(workers)}
    return J.submit(store, "sweep", job_config, label + ("" if executor == "local" else f", on {executor} × {workers}"))


def split_setting(config: dict[str, Any]) -> tuple[str, int] | None:
    """(executor, workers) a ``sweep`` job splits onto, or None when the job runs the sweep itself."""
    split = config.get(SPLIT_KEY)
    return (str(split["executor"]), int(split["workers"])) if isinstance(split, dict) else None


def run_sweep_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The ``sweep`` job (the app's Sweeps page): split onto the executor ``queue_sweep`` gave it
    (one job per run), or run in this worker as one job (``sweep.run_sweep_job``)."""
    if split_setting(config):
        return run_split_sweep_job(config, ctx)
    from diet_explore.experiments.sweep import run_sweep_job as run_whole

    return run_whole(config, ctx)


def run_split_sweep_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """A ``sweep`` job that ``queue_sweep`` gave an executor: ``run_sweep`` into the job's folder (one
    ``compare_run`` job per run, rows merged in one results.jsonl), its progress the share of its
    runs' jobs done. Stop (or the worker's end) stops its runs' jobs; finished runs are kept."""
    from diet_explore.evaluation.blocks import Stopped
    from diet_explore.experiments.sweep import CompareConfig

    name, workers = split_setting(config)
    cfg = CompareConfig.from_dict({k: v for k, v in config.items() if k != SPLIT_KEY})
    out = (ctx.folder / "sweep").resolve()
    executor = make_executor(name, workers)
    stopping: list[str] = []

    def on_poll() -> None:
        latest: dict[str, dict[str, Any]] = {}  # a run's newest job (a stopped one is replaced on Resume)
        for job in sorted(ctx.store.jobs(), key=lambda j: (j["created"], j.get("queue_seq", 0))):
            if job["type"] == "compare_run" and job["config"].get("out") == str(out):
                latest[job["config"]["run"]] = job
        mine = list(latest.values())
        why = ctx.should_stop()
        if why and not stopping:
            stopping.append(why)
            for job in mine:
                if job["status"] in J.ACTIVE:
                    with contextlib.suppress(DietError):  # it ended meanwhile
                        ctx.store.stop(job["job_id"])
        ctx.progress(*split_progress(mine, name, workers))

    try:
        rows = run_sweep(cfg, out, executor, ctx.store, log=ctx.log, on_poll=on_poll)
    except DietError:
        if stopping:
            raise Stopped(stopping[0]) from None
        raise
    finally:
        executor.release()
    return {"out": str(out), "runs": len(rows) - 1}


def split_progress(jobs: list[dict[str, Any]], executor: str, workers: int) -> tuple[float, str]:
    """(fraction, message) of a split sweep: the mean of its runs' jobs' shares (a finished job
    counts whole), and which runs are done and running."""
    if not jobs:
        return 0.0, "queueing the runs"
    share = [1.0 if j["status"] in J.FINISHED else float((j.get("progress") or {}).get("fraction") or 0.0) for j in jobs]
    done = sum(j["status"] == "done" for j in jobs)
    running = [j["config"]["run"] for j in jobs if j["status"] == "running"]
    return sum(share) / len(jobs), (
        f"{done} of {len(jobs)} run(s) done, one job each on {executor} × {workers}"
        + (f"; running {', '.join(running)}" if running else "")
    )


def finish_sweep(config, out: str | Path, statuses: dict[str, str]) -> list[dict[str, Any]]:
    """After a split sweep's jobs ended: the reports from every merged row; a failed job is named."""
    from diet_explore.experiments.reports import write_reports
    from diet_explore.experiments.results import read_results

    rows = read_results(Path(out))
    if rows:
        write_reports(rows, Path(out), config)
    bad = {j: s for j, s in statuses.items() if s != "done"}
    if bad:
        raise DietError(
            f"{len(bad)} of {len(statuses)} sweep job(s) did not finish: "
            + ", ".join(f"{j} {s}" for j, s in sorted(bad.items())),
            "see `diet-explore jobs` for why; re-run the same command: finished runs are kept",
        )
    return rows


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
class LocalExecutor:
    """``workers`` worker processes on this machine, each claiming only the given jobs."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def run(self, store: J.JobStore, job_ids: list[str], on_poll: Callable[[], None] | None = None) -> dict[str, str]:
        cmd = [sys.executable, "-m", "diet_explore.experiments.jobs", "--root", str(store.runs.root), "--shared"]
        cmd += ["--until-empty", "--only", ",".join(job_ids)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_package_parent(), os.environ.get("PYTHONPATH", "")])}
        store.root.mkdir(parents=True, exist_ok=True)
        with open(store.root / "worker.log", "ab") as log:
            procs = [
                subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
                for _ in range(min(self.workers, len(job_ids)))
            ]
        try:
            while any(p.poll() is None for p in procs):
                if on_poll:
                    on_poll()
                time.sleep(POLL_S)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()  # Ctrl-C: the jobs stop as interrupted, resumable
                    p.wait()
        return {j: store.get(j)["status"] for j in job_ids}

    def release(self) -> None:
        """Nothing is kept between runs: each run starts its own processes."""


class JobActor:
    """A Ray actor: claims jobs by id and runs them, keeping the last model it loaded."""

    def __init__(self, runs_root: str, handlers: dict[str, str] | None = None):
        from diet_explore.experiments.runs import new_run_id

        J.HANDLERS.update(handlers or {})
        self.store = J.JobStore(runs_root)
        self.models: dict = {}
        self.token = new_run_id(f"ray-{os.getpid()}")

    def pid(self) -> int:
        return os.getpid()

    def run(self, job_id: str) -> str:
        job = self.store.claim(job_id, self.token)
        if job is None:  # another worker claimed it first, or it was stopped
            return "not claimed"
        return J.run_job(self.store, job, models=self.models)


class RayExecutor:
    """One Ray actor per worker (``num_gpus=1`` each where the cluster has GPUs, else one CPU).
    Uses the Ray cluster this process is connected to, else ``RAY_ADDRESS``, else starts a local
    one. An actor that dies (its process killed, its node lost) is replaced; its job, whose lease
    died with it, is requeued once by the store and given to a live actor."""

    def __init__(self, workers: int = 1, handlers: dict[str, str] | None = None):
        self.workers = workers
        self.handlers = handlers or {}
        self._idle: list = []  # actors kept between runs: each keeps its model loaded

    def _actors(self, ray, store: J.JobStore, n: int) -> list:
        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": _package_parent()}},
            )
        gpus = ray.cluster_resources().get("GPU", 0)
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        actor = ray.remote(**options, max_restarts=0)(JobActor)
        return [actor.remote(str(store.runs.root), self.handlers) for _ in range(n)]

    def run(self, store: J.JobStore, job_ids: list[str], on_poll: Callable[[], None] | None = None) -> dict[str, str]:
        ray = import_ray()
        idle, self._idle = self._idle, []
        idle += self._actors(ray, store, max(0, min(self.workers, len(job_ids)) - len(idle)))
        running: dict[Any, tuple[Any, str]] = {}  # object ref -> (actor, job id)
        try:
            while True:
                now = {j: store.get(j)["status"] for j in job_ids}
                if not running and not any(s in J.ACTIVE for s in now.values()):
                    self._idle = idle
                    return now
                if any(s == "interrupted" and j not in {v[1] for v in running.values()} for j, s in now.items()):
                    store.requeue_stale()  # a dead actor's job: back in the queue, once
                    now = {j: store.get(j)["status"] for j in job_ids}
                given = {v[1] for v in running.values()}
                for job_id in [j for j, s in now.items() if s == "queued" and j not in given]:
                    if not idle:
                        break
                    actor = idle.pop()
                    running[actor.run.remote(job_id)] = (actor, job_id)
                if on_poll:
                    on_poll()
                if not running:
                    time.sleep(POLL_S)  # its jobs run elsewhere (another worker of the store)
                    continue
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    actor, job_id = running.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except ray.exceptions.RayActorError:  # its process died: a fresh actor takes its place
                        idle.extend(self._actors(ray, store, 1))
        finally:
            for actor, _ in running.values():
                ray.kill(actor)

    def release(self) -> None:
        """End the actors kept between runs, giving back the CPUs or GPUs they hold."""
        if self._idle:
            ray = import_ray()
            for actor in self._idle:
                ray.kill(actor)
            self._idle = []


def ray_missing() -> str | None:
    """Why Ray cannot be chosen here (with the install command), or None when it can: looked up
    without importing it."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "Ray is not installed: pip install 'diet-explore[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise DietError(
            "--executor ray needs Ray, which is not installed", "pip install 'diet-explore[ray]', or use --executor local"
        ) from None
    return ray


def make_executor(name: str, workers: int = 1):
    """The executor a setting names (``--executor``, the app's setting)."""
    if name not in EXECUTORS:
        raise DietError(f"unknown executor {name!r}", f"one of {', '.join(EXECUTORS)}")
    if int(workers) < 1:
        raise DietError(f"--workers must be at least 1, got {workers}", "e.g. --workers 2")
    if name == "ray":
        import_ray()  # refused now, before anything is queued
        return RayExecutor(int(workers))
    return LocalExecutor(int(workers))


def serve(store: J.JobStore, owner: int | None = None, idle_exit_s: float | None = None) -> int:
    """The app's worker when its setting is not one local process (``executor_setting``): holds the
    store's worker lock as the local worker does (so the app starts no second one), and runs what is
    queued on the chosen executor, batch by batch, until idle for ``idle_exit_s`` or ``owner`` (a
    pid) is no longer its parent. Returns the number of jobs run; -1 when a worker already serves."""
    from filelock import Timeout

    from diet_explore.core.clock import utc_timestamp
    from diet_explore.experiments.runs import new_run_id

    name, workers = executor_setting()
    executor = make_executor(name, workers)
    idle_exit_s = J.worker_idle_s() if idle_exit_s is None else idle_exit_s
    store.root.mkdir(parents=True, exist_ok=True)
    lock = store._worker_lock()
    try:
        lock.acquire(timeout=2.0)
    except Timeout:
        return -1
    ran = 0
    try:
        info = {"pid": os.getpid(), "host": J.HOST, "token": new_run_id(f"serve-{os.getpid()}"), "owner": owner}
        atomic.write_json(store.root / "worker.json", info | {"started": utc_timestamp(), "executor": name, "workers": workers})
        idle_since = time.monotonic()
        while owner is None or os.getppid() == owner:
            store.requeue_stale()
            found = [j for j in store.jobs() if j["status"] == "queued"]
            drivers = [j["job_id"] for j in found if j["type"] == "sweep" and split_setting(j["config"])]
            queued = [j["job_id"] for j in found if j["job_id"] not in drivers]
            if drivers:  # a split sweep drives its own actors: run here, never nested in an actor
                executor.release()
                job = store.claim(drivers[0], info["token"])
                if job is not None:
                    J.run_job(store, job)
                    ran += 1
                idle_since = time.monotonic()
            elif queued:
                ran += len(executor.run(store, queued))
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_exit_s:
                break
            else:
                time.sleep(J.POLL_S)
    finally:
        lock.release()
    return ran


def run_sweep(
    config,
    out: str | Path,
    executor,
    store: J.JobStore,
    eval_cache=None,
    use_eval_cache: bool = True,
    log=print,
    on_poll: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """``compare`` on an executor: the sweep split into jobs, run, and its reports written
    (``on_poll``: called while they run, e.g. a driving job's progress)."""
    ids = submit_sweep(store, config, out, eval_cache, use_eval_cache)
    log(f"{len(ids)} run(s) queued as jobs in {store.root} on {type(executor).__name__} ({executor.workers} worker(s))")
    statuses = executor.run(store, ids, on_poll) if ids else {}
    return finish_sweep(config, out, statuses)


def _package_parent() -> str:
    return str(Path(__file__).resolve().parents[2])


def main(argv: list[str] | None = None) -> int:
    """``python -m diet_explore.experiments.executors --root RUNS [--owner PID]``: ``serve``."""
    import argparse

    ap = argparse.ArgumentParser(description="diet-explore jobs on the executor DIET_EXPLORE_EXECUTOR names")
    ap.add_argument("--root", required=True, help="the run store folder whose jobs/ to serve")
    ap.add_argument("--owner", type=int, default=None, help="stop when this process is no longer the parent")
    args = ap.parse_args(argv)
    try:
        ran = serve(J.JobStore(args.root), owner=args.owner)
    except DietError as exc:
        print(f"executor {os.getpid()}: error: {exc}", flush=True)
        return 2
    print(f"executor {os.getpid()}: {'another worker serves this store' if ran < 0 else f'{ran} job(s) run'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
