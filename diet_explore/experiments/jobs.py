"""Background jobs: a prune + evaluate or a sweep runs in a worker process, with its state on disk.

The app's pages only submit, poll and render jobs; the work runs in a separate process that this
module owns, so a page switch, a reload or a second tab never touches it, and every page (any
session, any tab, the CLI) sees the same jobs because their state is files:

    <run store>/jobs/
      .jobs.lock               the store's lock (``atomic.locked``): every change of a record holds it
      <job id>/job.json        the record: type, config, status, progress, partial results, result, error
      <job id>/blocks/         finished blocks of examples (``evaluation.blocks.ScoreLog``): what a resume reuses
      <job id>/sweep/          a sweep's ``compare`` folder (results.jsonl, tables)
      worker.lock              held (flock) by the app's local worker while it lives; the OS frees it when it dies
      worker.json, worker.log  the last local worker the app started: pid, owner, start time; its output

Statuses: ``queued`` → ``running`` → ``done`` | ``failed`` | ``stopped`` (Stop: the partial results
are kept, marked partial); ``queued`` → ``cancelled`` (Stop before it ran). ``resume`` puts an
interrupted, stopped, failed or cancelled job back in the queue; its finished blocks are reused.

Liveness is per job: a running record holds a lease (``lease``: the worker's token, pid, host and
an expiry time), which its worker renews every ``lease_s() / 5`` seconds (``DIET_EXPLORE_LEASE_S``,
default ``LEASE_S``). A lease is dead when it expired, or at once when its worker's pid is gone on
this host. A running job with a dead lease is shown ``interrupted``; the next claim requeues it,
once (``MAX_REQUEUES``): if it dies again it stays interrupted for a person to resume. So any number
of workers, on any machines that share the folder, can serve one store: claiming is a
compare-and-swap on the record under the store's lock (``claim(job_id)`` or ``claim_next``), and
every write a worker makes to its job checks that it still holds the lease (``LeaseLost`` when a
stale worker wakes up after its job was requeued: it drops the job without writing).

The app starts one local worker (``LocalProcessExecutor``, a child process of the server that
stops with it); ``diet-explore jobs work`` starts more; ``executors.RayExecutor`` runs jobs on Ray
actors. A job itself is ``run_job(store, job)``: a function of files, so any executor can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diet_explore.core import atomic
from diet_explore.core.clock import utc_now, utc_timestamp
from diet_explore.core.config import is_finite_number, is_whole_number, parse_float, parse_int
from diet_explore.core.errors import DietError
from diet_explore.experiments.runs import RunStore, new_run_id

JOB_KIND = "diet-explore-job"
JOB_SCHEMA_VERSION = 1
JOBS_DIR = "jobs"
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "stopped", "cancelled", "interrupted")
RESUMABLE = ("interrupted", "stopped", "failed", "cancelled")
# job type -> "module:function(config: dict, ctx: JobContext) -> result dict"; imported by the worker only
HANDLERS = {
    "prune_eval": "diet_explore.experiments.tuning:run_prune_eval_job",
    "sweep": "diet_explore.experiments.executors:run_sweep_job",  # whole, or split onto the executor
    "compare_run": "diet_explore.experiments.executors:run_compare_run_job",  # one (method, sparsity) of a split sweep
    "prune_save": "diet_explore.experiments.jobs:run_prune_save_job",  # Export's "Prune and save model"
    "tune": "diet_explore.experiments.tune:run_tune_job",  # a search over the vote's settings (diet-explore[tune])
}
_JOB_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
POLL_S = 0.25  # how often an idle worker looks for a queued job
IDLE_ENV = "DIET_EXPLORE_WORKER_IDLE_S"  # an idle worker exits after this many seconds
IDLE_EXIT_S = 1800.0  # when it is not set
START_GRACE_S = 20.0  # a worker started this recently is still importing torch: do not start another
PROGRESS_EVERY_S = 0.5  # progress is written at most this often (partial results at every block)
WORKER_NICE = 10  # the background worker yields the CPU to the app's server: the UI stays responsive
LOG_KEPT = 40  # log lines a record keeps
LEASE_ENV = "DIET_EXPLORE_LEASE_S"  # a running job's lease is stale this many seconds after its last renewal
LEASE_S = 30.0  # when it is not set: a worker renews every LEASE_S / 5 (6 s), so a busy machine never looks dead
MAX_REQUEUES = 1  # a job whose worker died is requeued automatically this many times, then left interrupted
HOST = socket.gethostname()


class LeaseLost(Exception):
    """A worker's write to a job it no longer holds (its lease went stale and the job was requeued,
    resumed or finished by another worker): the write is refused and the worker drops the job."""


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------
class JobStore:
    """The jobs of one run store (``<runs root>/jobs``). Reads need no lock (every file is
    replaced atomically); every change is a read-modify-write under the store's lock."""

    def __init__(self, runs_root: str | Path | None = None):
        self.runs = RunStore(runs_root)
        self.root = self.runs.root / JOBS_DIR

    # -- files ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # atomic.locked excludes other processes; the thread lock excludes the other sessions of
        # one app server (threads of one process, which a per-process re-entrant file lock lets in)
        with _thread_lock(self.root), contextlib.ExitStack() as stack:
            try:
                stack.enter_context(atomic.locked(self.root / "jobs"))
            except OSError as exc:  # a read-only or foreign store: listing works, changing it cannot
                raise DietError(
                    f"the job store {self.root} cannot be changed ({exc.strerror or exc})",
                    "run this where the run store is writable (its owner's account or machine); listing jobs works anywhere",
                ) from None
            yield

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(str(job_id)):
            raise DietError(f"{job_id!r} is not a job id", "list the jobs with `diet-explore jobs`")
        return self.root / job_id

    def _path(self, job_id: str) -> Path:
        return self.folder(job_id) / "job.json"

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        """The record at ``path``, or None when it is missing or damaged: every field a reader
        (the listing, stop, resume, the app's pages, the worker) uses is checked here, once."""
        record = atomic.read_json_object(path)
        # a record under another job's folder is damaged: stop/resume would write (and quote) the other id
        ok = record is not None and _record_ok(record) and record["job_id"] == Path(path).parent.name
        return record if ok else None

    def _write(self, record: dict[str, Any]) -> None:
        from diet_explore.experiments.runs import json_safe

        atomic.write_text(self._path(record["job_id"]), json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n")

    # -- reading ----------------------------------------------------------------------------
    def scan(self) -> tuple[list[dict[str, Any]], list[Path]]:
        """(every readable record in queue order, the damaged record files). Statuses as stored."""
        if not self.root.is_dir():
            return [], []
        good, damaged = [], []
        for path in sorted(self.root.glob("*/job.json")):
            record = self._read(path)
            if record is None or record["job_id"] != path.parent.name:
                damaged.append(path)
            else:
                good.append(record)
        good.sort(key=lambda r: (r.get("queue_seq", 0), r["created"]))
        return good, damaged

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first, with its status as it is now (``running`` whose lease is dead
        is ``interrupted``). A damaged record is reported (a warning) and skipped."""
        records, damaged = self.scan()
        for path in damaged:
            warnings.warn(f"skipping damaged job record {path} (it is not a job this version can read)", stacklevel=2)
        return [self._as_now(r) for r in records]

    def get(self, job_id: str) -> dict[str, Any]:
        path = self._path(job_id)
        if not path.is_file():
            raise DietError(f"job {job_id} is not in {self.root}", "list the jobs with `diet-explore jobs`")
        record = self._read(path)
        if record is None:
            raise DietError(f"job record {path} is damaged", "delete its folder; the other jobs are unaffected")
        return self._as_now(record)

    @staticmethod
    def _as_now(record: dict[str, Any]) -> dict[str, Any]:
        if record["status"] == "running" and not lease_alive(record):
            return {**record, "status": "interrupted", "stored_status": "running"}
        return record

    def active(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs() if j["status"] in ACTIVE]

    # -- the worker's liveness ----------------------------------------------------------------
    def _worker_lock(self):
        from filelock import FileLock

        # kept on release: a lock file deleted while another process opens it could be held twice
        return FileLock(self.root / "worker.lock", thread_local=False, preserve_lock_file=True)

    def live_worker(self) -> str | None:
        """The token of the app's local worker alive now, or None. Probes the worker's lock without
        creating anything; holding it for an instant never blocks a worker (it waits for it). On a
        store this process cannot write (no lock can be opened) the worker's pid answers instead."""
        from filelock import Timeout

        if not (self.root / "worker.lock").exists():
            return None
        lock = self._worker_lock()
        try:
            lock.acquire(timeout=0)
        except OSError:  # read-only: the lock file cannot be opened for writing
            info = atomic.read_json_object(self.root / "worker.json") or {}
            return str(info.get("token") or "?") if info.get("host", HOST) == HOST and _pid_alive(info.get("pid")) else None
        except Timeout:
            info = atomic.read_json_object(self.root / "worker.json") or {}
            return str(info.get("token") or "?")
        lock.release()
        return None

    # -- changes ----------------------------------------------------------------------------
    def submit(self, job_type: str, config: dict[str, Any], label: str) -> tuple[str, bool]:
        """Queue a job; returns (job id, whether it is new). The same job (type and config) while
        one like it is queued or running is that job, not a second one: two tabs or a double
        click never run the same work twice."""
        from diet_explore.experiments.runs import json_safe

        if job_type not in HANDLERS:
            raise DietError(f"unknown job type {job_type!r}", f"one of {', '.join(HANDLERS)}")
        config = json_safe(config)
        if not _config_ok(job_type, config):  # the rule a reader applies: a record it would skip is never written
            need = ", ".join(CONFIG_FIELDS[job_type])
            raise DietError(f"a {job_type} job's config lacks one of {need} (or has it of the wrong type)", "a bug: report it")
        key = hashlib.sha256(json.dumps({"type": job_type, "config": config}, sort_keys=True).encode()).hexdigest()[:16]
        self.runs.check("run store")
        with self._locked():
            records, _ = self.scan()
            for r in records:
                if r.get("key") == key and self._as_now(r)["status"] in ACTIVE:
                    return r["job_id"], False
            now = utc_now()
            job_id = new_run_id(key + str(len(records)), now)
            while self._path(job_id).exists():  # two submissions in the same second
                job_id = new_run_id(job_id, now)
            record = {
                "kind": JOB_KIND,
                "schema_version": JOB_SCHEMA_VERSION,
                "job_id": job_id,
                "type": job_type,
                "label": label,
                "key": key,
                "config": config,
                "created": utc_timestamp(now),
                "queue_seq": _next_seq(records),
                "status": "queued",
                "progress": {"fraction": 0.0, "message": "queued"},
                "run_id": new_run_id(job_id),  # chosen now: a resumed job replaces its run, never adds a second
                "attempts": 0,
                "log": [],
            }
            self._write(record)
        return job_id, True

    def update(self, job_id: str, owner: str | None = None, **fields: Any) -> dict[str, Any]:
        """Change fields of a record (read, change, write under the lock); returns the new record.
        ``owner``: the lease token of the worker writing; the write is refused (``LeaseLost``) unless
        the job is still running under that lease, and it renews the lease."""
        with self._locked():
            record = self._read(self._path(job_id))
            if record is None:
                raise DietError(f"job {job_id} is missing or damaged", "list the jobs with `diet-explore jobs`")
            if owner is not None:
                lease = record.get("lease") or {}
                if record["status"] != "running" or lease.get("token") != owner:
                    raise LeaseLost(job_id)
                record["lease"] = {**lease, "expires": time.time() + lease_s()}
            record.update(fields)
            record["updated"] = utc_timestamp()
            self._write(record)
            return record

    def stop(self, job_id: str) -> dict[str, Any]:
        """Stop a job: a queued one is cancelled, a running one stops after its current forward
        pass (its worker finishes the record: stopped, partial results kept)."""
        self.get(job_id)  # an unknown id is refused before the lock, which would create jobs/ in any folder
        with self._locked():
            job = self.get(job_id)
            if job["status"] == "queued":
                return self.update(job_id, status="cancelled", finished=utc_timestamp(), progress=_msg(job, "cancelled"))
            if job["status"] == "running":
                return self.update(job_id, stop_requested=True, progress=_msg(job, "stopping…"))
            raise DietError(f"job {job_id} is {job['status']}, not queued or running", "nothing to stop")

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue an interrupted, stopped, failed or cancelled job again (at the end of the queue);
        what it had scored is reused."""
        self.get(job_id)  # as stop(): an unknown id creates nothing
        with self._locked():
            job = self.get(job_id)
            if job["status"] == "running":  # its lease is alive: resuming would run it twice
                lease = job.get("lease") or {}
                raise DietError(
                    f"job {job_id} is running (worker pid {lease.get('pid')} on {lease.get('host')} renewed its lease "
                    f"{max(0.0, lease_s() - (float(lease.get('expires', 0)) - time.time())):.0f} s ago)",
                    f"stop it first (`diet-explore jobs --stop {job_id}`); a job whose worker died is shown interrupted "
                    f"within {lease_s():.0f} s and requeued by the next worker",
                )
            if job["status"] not in RESUMABLE:
                raise DietError(
                    f"job {job_id} is {job['status']}", "only an interrupted, stopped, failed or cancelled job can be resumed"
                )
            records, _ = self.scan()
            return self.update(
                job_id,
                status="queued",
                stop_requested=False,
                error=None,
                lease=None,
                requeues=0,  # a person's decision: the automatic requeue is available again
                queue_seq=_next_seq(records),
                progress=_msg(job, "queued again (finished work is reused)"),
            )

    def claim(self, job_id: str, token: str) -> dict[str, Any] | None:
        """Job ``job_id``, now ``running`` under a lease for the worker ``token``, if it is queued;
        None when it is not (another worker claimed it first, or it was stopped): a compare-and-swap."""
        with self._locked():
            record = self._read(self._path(job_id))
            if record is None or record["status"] != "queued":
                return None
            return self._start(record, token)

    def claim_next(self, token: str, among: set[str] | None = None) -> dict[str, Any] | None:
        """The oldest queued job (of ``among``, when given), now ``running`` for the worker ``token``;
        None when none is queued. Jobs whose worker died are requeued first (``requeue_stale``)."""
        with self._locked():
            self.requeue_stale()
            records, _ = self.scan()
            for r in records:
                if r["status"] == "queued" and (among is None or r["job_id"] in among):
                    return self._start(r, token)
        return None

    def _start(self, record: dict[str, Any], token: str) -> dict[str, Any]:
        now = time.time()
        return self.update(
            record["job_id"],
            status="running",
            started=utc_timestamp(),
            worker={"pid": os.getpid(), "token": token},
            lease={"token": token, "pid": os.getpid(), "host": HOST, "expires": now + lease_s()},
            attempts=int(record.get("attempts", 0)) + 1,
            stop_requested=False,
            progress=_msg(record, "started"),
        )

    def renew(self, job_id: str, token: str) -> None:
        """Extend worker ``token``'s lease on its running job (``LeaseLost`` when it no longer holds it)."""
        self.update(job_id, owner=token)

    def requeue_stale(self) -> list[str]:
        """Put back in the queue every running job whose lease is dead (its worker was killed, its
        machine lost), at its old place, once per job (``MAX_REQUEUES``): a job that kills its worker
        every time must not do so forever, so a second death leaves it interrupted, for a person to
        resume. Returns the ids requeued. Under the store's lock: two workers never both requeue it."""
        requeued = []
        with self._locked():
            records, _ = self.scan()
            for r in records:
                if r["status"] != "running" or lease_alive(r):
                    continue
                lease = r.get("lease") or {}
                who = f"worker pid {lease.get('pid', '?')} on {lease.get('host', '?')}"
                if int(r.get("requeues", 0)) < MAX_REQUEUES:
                    log = [*(r.get("log") or []), f"{utc_timestamp()} requeued: {who} stopped renewing its lease"][-LOG_KEPT:]
                    self.update(
                        r["job_id"],
                        status="queued",
                        lease=None,
                        requeues=int(r.get("requeues", 0)) + 1,
                        log=log,
                        progress=_msg(r, "requeued (its worker died; finished work is reused)"),
                    )
                    requeued.append(r["job_id"])
                else:
                    self.update(
                        r["job_id"],
                        status="interrupted",
                        lease=None,
                        progress=_msg(r, f"interrupted: its worker died again ({who}); Resume runs it"),
                    )
        return requeued


_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(root: Path) -> threading.RLock:
    key = str(Path(root).resolve())
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.RLock())


def _optional_dict(v: Any, types: dict[str, Callable[[Any], bool]]) -> bool:
    """None, or a dict whose keys among ``types`` (when present and not None) pass their check."""
    return v is None or (isinstance(v, dict) and all(v.get(k) is None or ok(v[k]) for k, ok in types.items()))


# job type -> the config fields its handler needs (without them it would fail, or run something
# other than what was queued) and their type; a record without them is damaged
CONFIG_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "prune_eval": {  # PruneEvalJob's fields without a default (tests keep the two in step)
        "model": lambda v: isinstance(v, str),
        "cache": lambda v: isinstance(v, str),
        "cache_display": lambda v: isinstance(v, str),
        "manifest_hash": lambda v: isinstance(v, str),
        "mask": lambda v: isinstance(v, dict),
        "n_keep": is_whole_number,
        "eval": lambda v: isinstance(v, dict),
    },
    "sweep": {"model": lambda v: isinstance(v, str), "cache": lambda v: isinstance(v, str)},  # CompareConfig's
    "prune_save": {
        "model": lambda v: isinstance(v, str),
        "folder": lambda v: isinstance(v, str),
        "mask_file": lambda v: isinstance(v, dict) and isinstance(v.get("kept_indices"), list),
        "overwrite": lambda v: isinstance(v, bool),
    },
    "compare_run": {
        "compare": lambda v: isinstance(v, dict) and isinstance(v.get("model"), str) and isinstance(v.get("cache"), str),
        "out": lambda v: isinstance(v, str),
        "run": lambda v: isinstance(v, str),
    },
    "tune": {"model": lambda v: isinstance(v, str), "cache": lambda v: isinstance(v, str), "name": lambda v: isinstance(v, str)},
}


def _config_ok(job_type: str, config: Any) -> bool:
    # a job type registered without field rules (an executor's extra handlers) has none
    return isinstance(config, dict) and all(k in config and ok(config[k]) for k, ok in CONFIG_FIELDS.get(job_type, {}).items())


def _record_ok(record: dict[str, Any]) -> bool:
    """Whether a job record has every field its readers use, of the type they use it as."""
    return (
        record.get("kind") == JOB_KIND
        and isinstance(record.get("job_id"), str)
        and record.get("type") in HANDLERS
        and record.get("status") in ACTIVE + FINISHED
        and _config_ok(record["type"], record.get("config"))
        and isinstance(record.get("created"), str)
        and is_whole_number(record.get("queue_seq", 0))
        and is_whole_number(record.get("attempts", 0))
        and isinstance(record.get("label", ""), str)
        and isinstance(record.get("log") or [], list)
        and all(isinstance(line, str) for line in record.get("log") or [])
        and _optional_dict(record.get("progress"), {"fraction": is_finite_number, "message": lambda v: isinstance(v, str)})
        and _optional_dict(record.get("error"), {"message": lambda v: isinstance(v, str), "hint": lambda v: isinstance(v, str)})
        and _optional_dict(record.get("worker"), {"pid": is_whole_number, "token": lambda v: isinstance(v, str)})
        and _optional_dict(
            record.get("lease"),
            {
                "pid": is_whole_number,
                "token": lambda v: isinstance(v, str),
                "host": lambda v: isinstance(v, str),
                "expires": is_finite_number,
            },
        )
        and is_whole_number(record.get("requeues", 0))
        and _optional_dict(record.get("partial"), {})
        and _optional_dict(record.get("result"), {})
    )


def worker_idle_s() -> float:
    """Seconds an idle worker waits for a job before it exits: ``DIET_EXPLORE_WORKER_IDLE_S``, else
    ``IDLE_EXIT_S``. Read when a worker is started, not at import (a bad value broke every command)."""
    raw = os.environ.get(IDLE_ENV, "").strip()
    if not raw:
        return IDLE_EXIT_S
    value = parse_float(raw)  # the one rule for a number a user writes (ASCII digits)
    if value is None or not (math.isfinite(value) and value > 0):
        raise DietError(
            f"{IDLE_ENV}={raw!r} is not a number of seconds > 0",
            f"set it to a number of seconds > 0 (e.g. {IDLE_EXIT_S:.0f}), or unset it",
        )
    return value


def lease_s() -> float:
    """Seconds after its last renewal that a running job's lease is stale: ``DIET_EXPLORE_LEASE_S``,
    else ``LEASE_S``. Read when used, as ``worker_idle_s``."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return LEASE_S
    value = parse_float(raw)
    if value is None or not (math.isfinite(value) and value > 0):
        raise DietError(
            f"{LEASE_ENV}={raw!r} is not a number of seconds > 0",
            f"set it to a number of seconds > 0 (e.g. {LEASE_S:.0f}), or unset it",
        )
    return value


def lease_alive(record: dict[str, Any], now: float | None = None) -> bool:
    """Whether a running job's worker still holds it: its lease has not expired and, when the worker
    runs on this host, its pid is alive (a killed local worker is known dead at once, not after
    the lease runs out; a worker on another machine only by its lease)."""
    lease = record.get("lease")
    if not isinstance(lease, dict) or not is_finite_number(lease.get("expires")):
        return False  # a record of a version without leases, or a damaged lease: nobody renews it
    if float(lease["expires"]) < (time.time() if now is None else now):
        return False
    return lease.get("host") != HOST or _pid_alive(lease.get("pid"))


def _next_seq(records: list[dict[str, Any]]) -> int:
    return max((int(r.get("queue_seq", 0)) for r in records), default=0) + 1


def _msg(job: dict[str, Any], message: str) -> dict[str, Any]:
    return {**(job.get("progress") or {}), "message": message}


# --------------------------------------------------------------------------------------------
# Running one job
# --------------------------------------------------------------------------------------------
class JobContext:
    """What a job handler gets: its config and folder, the run store, progress / log / partial
    result writers, the stop check and the worker's model memo."""

    def __init__(self, store: JobStore, job: dict[str, Any], stop_check: Callable[[], str | None], models: dict):
        self.store, self.job = store, job
        self.job_id: str = job["job_id"]
        self.token: str | None = (job.get("lease") or {}).get("token")  # every write checks the lease is still ours
        self.folder = store.folder(self.job_id)
        self.runs = store.runs
        self._outside_stop = stop_check
        self._models = models
        self._last_progress = 0.0
        self._stop_seen: tuple[int, bool] = (-1, False)
        self._log = list(job.get("log") or [])

    def progress(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S and fraction < 1.0:
            return
        self._last_progress = now
        self.store.update(
            self.job_id, owner=self.token, progress={"fraction": max(0.0, min(1.0, float(fraction))), "message": message}
        )

    def log(self, message: str) -> None:
        """A line in the job's log; it is also the progress message until the next progress."""
        self._log = [*self._log, f"{utc_timestamp()} {message}"][-LOG_KEPT:]
        progress = (self.store.get(self.job_id).get("progress") or {}) | {"message": message}
        self.store.update(self.job_id, owner=self.token, log=self._log, progress=progress)

    def partial(self, data: dict[str, Any]) -> None:
        """The partial result so far (shown live; kept, marked partial, when the job stops)."""
        self.store.update(self.job_id, owner=self.token, partial=data)

    def should_stop(self) -> str | None:
        """``"interrupted"`` when the worker must end (its owner is gone, a signal), ``"stopped"``
        when Stop was pressed; else None. Cheap: re-reads the record only when it changed."""
        why = self._outside_stop()
        if why:
            return why
        path = self.store._path(self.job_id)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        if mtime != self._stop_seen[0]:
            record = JobStore._read(path) or {}
            self._stop_seen = (mtime, bool(record.get("stop_requested")))
        return "stopped" if self._stop_seen[1] else None

    def load_model(self, name: str, device: str = "auto", dtype: str | None = None):
        """(model, tokenizer, info), loaded once per worker (the last model is kept for the next job)."""
        from diet_explore.models.loading import load_model

        key = (name, device, dtype)
        if key not in self._models:
            self._models.clear()  # one model in memory at a time
            self._models[key] = load_model(name, device=device, dtype=dtype)
        return self._models[key]


class Heartbeat:
    """Renews a running job's lease every ``lease_s() / 5`` seconds from a thread, while the job's
    handler computes (a forward pass can outlast the lease). ``lost``: the lease went to another
    worker (this one was stale, e.g. paused): the job must stop without writing."""

    def __init__(self, store: JobStore, job_id: str, token: str | None):
        self.store, self.job_id, self.token = store, job_id, token
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.token is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(lease_s() / 5):
            try:
                self.store.renew(self.job_id, self.token)
            except LeaseLost:
                self.lost = True
                return
            except (OSError, DietError) as exc:  # a busy or unreachable store: try again at the next beat
                print(f"{utc_timestamp()} worker {os.getpid()}: could not renew the lease of {self.job_id}: {exc}", flush=True)


def run_job(store: JobStore, job: dict[str, Any], stop_check: Callable[[], str | None] = lambda: None, models=None) -> str:
    """Run one claimed job to its end and record how it ended; returns the final status, or
    ``"lost"`` when the job's lease went to another worker meanwhile (nothing more is written)."""
    token = (job.get("lease") or {}).get("token")
    with Heartbeat(store, job["job_id"], token) as beat:

        def stop() -> str | None:
            return "interrupted" if beat.lost else stop_check()

        try:
            return _run_job(store, job, stop, models, token)
        except LeaseLost:
            print(f"{utc_timestamp()} worker {os.getpid()}: job {job['job_id']} went to another worker; dropped", flush=True)
            return "lost"


def _run_job(store: JobStore, job: dict[str, Any], stop_check, models, token: str | None) -> str:
    import importlib

    from diet_explore.evaluation.blocks import Stopped

    ctx = JobContext(store, job, stop_check, models if models is not None else {})
    module, func = HANDLERS[job["type"]].split(":")
    try:
        result = getattr(importlib.import_module(module), func)(job["config"], ctx)
    except Stopped as stop:
        status = "interrupted" if stop.reason == "interrupted" else "stopped"
        partial = (store.get(ctx.job_id).get("partial") or {}) | {"partial": True}
        store.update(
            ctx.job_id,
            owner=token,
            status=status,
            finished=utc_timestamp(),
            result=partial,
            progress=_msg(job, status),
            lease=None,
        )
        return status
    except KeyboardInterrupt:
        store.update(ctx.job_id, owner=token, status="interrupted", progress=_msg(job, "interrupted (Ctrl-C)"), lease=None)
        raise
    except LeaseLost:
        raise
    except DietError as exc:
        error = {"message": exc.message, "hint": exc.hint}
    except Exception as exc:  # a bug or an environment failure: the message for the user, the traceback in the log
        traceback.print_exc()
        error = {
            "message": f"{type(exc).__name__}: {exc}",
            "hint": "nothing was added to the run history; the traceback is in the worker log " + str(store.root / "worker.log"),
        }
    else:
        store.update(
            ctx.job_id,
            owner=token,
            status="done",
            finished=utc_timestamp(),
            result=result,
            progress={"fraction": 1.0, "message": "done"},
            lease=None,
        )
        return "done"
    store.update(
        ctx.job_id, owner=token, status="failed", finished=utc_timestamp(), error=error, progress=_msg(job, "failed"), lease=None
    )
    return "failed"


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------
def run_worker(
    store: JobStore,
    owner: int | None = None,
    idle_exit_s: float | None = None,
    until_empty: bool = False,
    on_job: Callable[[dict[str, Any]], None] | None = None,
    preload: str | None = None,
    exclusive: bool = True,
    only: set[str] | None = None,
) -> int:
    """Run queued jobs one at a time, oldest first, until the queue has been empty for
    ``idle_exit_s`` (default ``worker_idle_s()``; ``until_empty``: at once), or ``owner`` (a pid)
    is no longer this process's parent: then a running job stops as interrupted, resumable. ``preload``: a model to load while
    the queue is empty (the one the page that started the worker will ask for). ``exclusive``: the
    app's local worker, one per store (``worker.lock``, ``worker.json``); ``False``: one of any
    number of workers sharing the store (``diet-explore jobs work``). ``only``: claim only these job
    ids (the jobs of one sweep). Returns the number of jobs
    run; -1 when ``exclusive`` and the local worker already serves this store."""
    from filelock import Timeout

    if idle_exit_s is None:  # read now, not at import
        idle_exit_s = 0.0 if until_empty else worker_idle_s()
    lease_s()  # a bad DIET_EXPLORE_LEASE_S is refused before a job is claimed
    with contextlib.suppress(OSError):  # an unwritable store is refused, in one line, by the first claim
        store.root.mkdir(parents=True, exist_ok=True)
    lock = store._worker_lock() if exclusive else None
    if lock is not None:
        try:
            lock.acquire(timeout=2.0)  # a lister holds it for an instant; a live worker for its whole life
        except Timeout:
            return -1
    token = new_run_id(f"worker-{os.getpid()}-{threading.get_ident()}")
    ran = 0
    signalled: list[str] = []
    restore: list[Callable[[], object]] = []
    try:
        info = {"pid": os.getpid(), "host": HOST, "token": token, "owner": owner, "started": utc_timestamp()}
        if lock is not None:
            atomic.write_json(store.root / "worker.json", info)

        def outside_stop() -> str | None:
            if signalled or (owner is not None and os.getppid() != owner):
                return "interrupted"
            return None

        busy: list[bool] = []  # set from claiming a job until it ended

        def on_sigterm(*_):
            signalled.append("SIGTERM")
            if not busy:  # warming up, preloading or idle: nothing to keep, so exit now (not after the imports)
                raise SystemExit(0)

        if threading_main():  # a supervisor's SIGTERM: a running job stops as interrupted, resumable
            previous = signal.signal(signal.SIGTERM, on_sigterm)
            restore.append(lambda: signal.signal(signal.SIGTERM, previous))
        _warm_up()
        models: dict = {}
        if preload:
            _preload(models, preload)
        if lock is not None:
            atomic.write_json(store.root / "worker.json", info | {"ready": utc_timestamp(), "preloaded": preload})
        idle_since = time.monotonic()
        while not outside_stop():
            busy.append(True)
            job = store.claim_next(token, only)
            if job is None:
                busy.clear()
                if signalled or until_empty or time.monotonic() - idle_since > idle_exit_s:
                    break
                time.sleep(POLL_S)
                continue
            if on_job is not None:
                on_job(job)
            run_job(store, job, outside_stop, models)
            busy.clear()
            ran += 1
            idle_since = time.monotonic()
    finally:
        for undo in restore:
            undo()
        if lock is not None:
            lock.release()
    return ran


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def _preload(models: dict, name: str) -> None:
    """Load ``name`` as a job with the default device and dtype will ask for it (``JobContext.load_model``)."""
    from diet_explore.models.loading import load_model

    try:
        models[(name, "auto", None)] = load_model(name, device="auto", dtype=None)
    except Exception as exc:  # the job that needs it reports why, with the fix
        print(f"{utc_timestamp()} worker {os.getpid()}: could not preload {name}: {exc}", flush=True)


def _warm_up() -> None:
    """Import what every job needs while the queue is empty, so a job starts in milliseconds."""
    for module in {h.split(":")[0] for h in HANDLERS.values()}:
        __import__(module)


# --------------------------------------------------------------------------------------------
# Executors: where the worker runs
# --------------------------------------------------------------------------------------------
EXECUTORS = ("local", "ray")
EXECUTOR_ENV = "DIET_EXPLORE_EXECUTOR"  # the app's setting (diet-explore app --executor): local or ray
WORKERS_ENV = "DIET_EXPLORE_WORKERS"  # and how many workers (diet-explore app --workers)


def executor_setting(env: dict[str, str] | None = None) -> tuple[str, int]:
    """(executor, workers) the app runs its jobs on: ``DIET_EXPLORE_EXECUTOR`` (default ``local``)
    and ``DIET_EXPLORE_WORKERS`` (default 1), as ``diet-explore app --executor --workers`` set them."""
    env = os.environ if env is None else env
    name = env.get(EXECUTOR_ENV, "").strip() or "local"
    raw = env.get(WORKERS_ENV, "").strip() or "1"
    workers = parse_int(raw)
    if name not in EXECUTORS:
        raise DietError(f"{EXECUTOR_ENV}={name!r} is not an executor", f"one of {', '.join(EXECUTORS)}, or unset it")
    if workers is None or workers < 1:
        raise DietError(f"{WORKERS_ENV}={raw!r} is not a number of workers ≥ 1", "e.g. 2 (one per GPU), or unset it")
    return name, workers


class LocalProcessExecutor:
    """One worker process on this machine, a child of the caller (e.g. the app's server), started
    when jobs are queued and none is alive. It stops, leaving a running job interrupted and
    resumable, when its parent goes away (a server restart), and exits after ``worker_idle_s()`` idle."""

    _started: list[subprocess.Popen] = []  # reaped as they exit (no zombies in a long-lived server)

    def ensure_worker(self, store: JobStore, preload: str | None = None) -> bool:
        """Start a worker for ``store`` unless one is alive or starting; True when one was started.
        ``preload``: a model it loads while waiting for the first job."""
        self._started[:] = [p for p in self._started if p.poll() is None]
        worker_idle_s()  # a bad value is refused here, to the caller, not in the worker's log
        executor_setting()  # so is a bad DIET_EXPLORE_EXECUTOR or DIET_EXPLORE_WORKERS
        if store.live_worker():  # the common case, without the store's lock
            return False
        store.root.mkdir(parents=True, exist_ok=True)
        with store._locked():
            if store.live_worker():
                return False
            info = atomic.read_json_object(store.root / "worker.json") or {}
            spawned = float(info.get("spawned") or 0)
            if time.time() - spawned < START_GRACE_S and _pid_alive(info.get("pid")) and not info.get("token"):
                return False  # started moments ago, still importing
            package_parent = str(Path(__file__).resolve().parents[2])
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            }
            if executor_setting() == ("local", 1):  # one worker process, this module's
                cmd = [sys.executable, "-m", "diet_explore.experiments.jobs", "--root", str(store.runs.root)]
                cmd += ["--owner", str(os.getpid()), *(["--preload", preload] if preload else [])]
            else:  # the app's setting: Ray actors or several local workers, driven by one process
                cmd = [sys.executable, "-m", "diet_explore.experiments.executors", "--root", str(store.runs.root)]
                cmd += ["--owner", str(os.getpid())]
            with open(store.root / "worker.log", "ab") as log:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self._started.append(proc)
            atomic.write_json(store.root / "worker.json", {"pid": proc.pid, "owner": os.getpid(), "spawned": time.time()})
        return True


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


EXECUTOR = LocalProcessExecutor()


def submit(store: JobStore, job_type: str, config: dict[str, Any], label: str) -> tuple[str, bool]:
    """Queue a job and make sure a worker will run it (what the app's pages call)."""
    worker_idle_s()  # refused before the job is queued with no worker to run it
    job_id, new = store.submit(job_type, config, label)
    EXECUTOR.ensure_worker(store)
    return job_id, new


# --------------------------------------------------------------------------------------------
# Prune and save, as a job (Export's button): heavy work never runs on the page's thread
# --------------------------------------------------------------------------------------------
def submit_prune_job(
    store: JobStore, model: str, mask_file, folder: str | Path, overwrite: bool = False, label: str | None = None
) -> tuple[str, bool]:
    """Queue pruning ``model`` to ``mask_file`` (a ``maskfile.MaskFile``) and saving it as the folder
    ``folder`` (``save_pruned``: ``overwrite`` replaces only a pruned folder diet-explore wrote), and
    make sure a worker runs it; returns (job id, whether it is new). The worker keeps the dense model
    it has loaded, so the app's server holds no second copy."""
    import dataclasses

    config = {
        "model": model,
        "folder": str(Path(folder).resolve()),
        "mask_file": dataclasses.asdict(mask_file),
        "overwrite": bool(overwrite),
    }
    return submit(store, "prune_save", config, label or f"prune {model} to {mask_file.n_keep} dims → {Path(folder).name}")


def run_prune_save_job(config: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``prune_save`` job: the folder ``diet-explore prune`` writes (``streaming.prune_to_folder``:
    a safetensors checkpoint is pruned tensor by tensor, so the worker's loaded model is neither
    needed nor copied)."""
    from diet_explore.masking.maskfile import MaskFile
    from diet_explore.models.loading import model_source
    from diet_explore.pruning.streaming import prune_to_folder

    mask_file = MaskFile(**config["mask_file"])
    ctx.progress(0.1, f"Pruning {config['model']} to {mask_file.n_keep} of {mask_file.hidden_size} hidden dims…")
    result = prune_to_folder(model_source(config["model"]), mask_file, config["folder"], overwrite=config["overwrite"])
    if not result.streamed:
        ctx.log(f"Loaded the model to prune it ({result.why_loaded}).")
    return {"folder": str(result.folder), "n_keep": mask_file.n_keep}


def main(argv: list[str] | None = None) -> int:
    """``python -m diet_explore.experiments.jobs --root RUNS [--owner PID]``: the worker process."""
    ap = argparse.ArgumentParser(description="diet-explore job worker (started by the app or `diet-explore jobs`)")
    ap.add_argument("--root", required=True, help="the run store folder whose jobs/ to serve")
    ap.add_argument("--owner", type=int, default=None, help="stop when this process is no longer the parent")
    ap.add_argument("--preload", default=None, help="a model to load while waiting for the first job")
    ap.add_argument("--shared", action="store_true", help="one of several workers (no worker.lock)")
    ap.add_argument("--until-empty", action="store_true", help="exit when the queue is empty")
    ap.add_argument("--only", default=None, help="comma list of the job ids to claim (default: any)")
    args = ap.parse_args(argv)
    if args.owner is not None:  # the app's worker yields the CPU to its server; a sweep's workers do not
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICE)
    try:
        ran = run_worker(
            JobStore(args.root),
            owner=args.owner,
            preload=args.preload,
            exclusive=not args.shared,
            until_empty=args.until_empty,
            only=set(args.only.split(",")) if args.only else None,
        )
    except DietError as exc:  # the worker's log gets the line, not a traceback
        print(f"{utc_timestamp()} worker {os.getpid()}: error: {exc}", flush=True)
        return 2
    print(f"{utc_timestamp()} worker {os.getpid()}: {'another worker serves this store' if ran < 0 else f'{ran} job(s) run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
