"""``diet-explore jobs``: list, stop and resume the background jobs of a run store (the app's runs);
``jobs submit compare ...`` queues a sweep as jobs (one per method and sparsity) and ``jobs work``
runs a worker: start as many as there are GPUs or machines sharing the store."""

from __future__ import annotations

import argparse
import json
import sys

from diet_explore.core.errors import DietError


def register(sub) -> None:
    p = sub.add_parser(
        "jobs", help="list the background jobs of a run store, --stop or --resume one; submit queues work, work runs it"
    )
    p.add_argument("--runs", default=None, help="run store folder whose jobs to show (default: <repo>/runs)")
    action = p.add_mutually_exclusive_group()
    action.add_argument(
        "--stop", metavar="ID", default=None, help="cancel a queued job, or stop a running one (partial results kept)"
    )
    action.add_argument(
        "--resume",
        metavar="ID",
        default=None,
        help="queue an interrupted, stopped or failed job again and run the queue here unless a worker "
        "(e.g. the app's) is running it; finished blocks of examples are reused",
    )
    p.add_argument("--json", action="store_true", help="print the job records as JSON")
    p.set_defaults(func=run, resumes=lambda args: bool(args.resume))  # the job is recorded interrupted, its blocks kept
    actions = p.add_subparsers(dest="jobs_action", metavar="ACTION", parser_class=type(p))
    submit = actions.add_parser("submit", help="queue work as jobs (any worker of the store runs them)")
    kinds = submit.add_subparsers(dest="submit_kind", metavar="KIND", required=True, parser_class=type(p))
    from diet_explore.cli import compare

    compare.register(kinds)  # compare's own flags, one parser for both
    kinds.choices["compare"].set_defaults(func=run_submit_compare, resumes=lambda args: False)
    for action in kinds.choices["compare"]._actions:  # jobs --runs X submit compare ...: X stays the run store
        if action.dest == "runs":
            action.default = argparse.SUPPRESS
    work = actions.add_parser("work", help="run a worker that claims queued jobs of the store (any number may run)")
    work.add_argument("--runs", default=argparse.SUPPRESS, help="run store folder (as jobs --runs)")
    work.add_argument("--until-empty", action="store_true", help="exit when no job is queued (default: wait for more)")
    work.add_argument("--idle", type=float, default=None, help="exit after this many idle seconds (default: 1800)")
    work.set_defaults(func=run_work, resumes=lambda args: False)


def run(args) -> int:
    from diet_explore.experiments.jobs import JobStore, run_worker
    from diet_explore.experiments.runs import RUNS_DIR_ENV

    store = JobStore(args.runs)
    root, named = store.runs.root, store.runs.name("--runs")  # --runs, else DIET_EXPLORE_RUNS_DIR, else the default
    hint = "give the run store folder (the app's runs/, or compare --runs)"
    if named == RUNS_DIR_ENV:
        hint = f"set {RUNS_DIR_ENV} to the run store folder (the app's runs/, or compare --runs), or unset it"
    if named in ("--runs", RUNS_DIR_ENV) and not root.exists():  # a typo must not read as an empty run store
        raise DietError(f"{named} {root}: no such folder", hint)
    if root.exists() and not root.is_dir():  # not "no jobs in a.json/jobs"
        raise DietError(f"{named} {root} is not a folder", hint)
    if args.stop:
        job = store.stop(args.stop)
        said = "cancelled" if job["status"] == "cancelled" else "stopping after its current forward pass"
        print(f"job {args.stop}: {said}")
        return 0
    if args.resume:
        store.resume(args.resume)
        if store.live_worker():
            print(f"job {args.resume}: queued again; the running worker takes it in turn (`diet-explore jobs` shows it)")
            return 0
        print(f"job {args.resume}: queued again; running the queue here (Ctrl-C interrupts; --resume continues)", file=sys.stderr)
        ran = run_worker(store, until_empty=True, on_job=lambda j: print(f"running {j['job_id']}: {j['label']}", file=sys.stderr))
        if ran < 0:
            print(f"job {args.resume}: queued again; another worker takes it in turn")
            return 0
        job = store.get(args.resume)
        print(describe(job))
        return 0 if job["status"] == "done" else 1
    jobs = store.jobs() if store.root.is_dir() else []  # listing creates nothing (its lock would make jobs/)
    if args.json:
        print(json.dumps(jobs, indent=1))
        return 0
    if not jobs:
        print(f"no jobs in {store.root}")
        return 0
    print(f"{'job':24s} {'type':10s} {'status':12s} {'progress':>8s}  label")
    for job in jobs:
        progress = job.get("progress") or {}
        print(
            f"{job['job_id']:24s} {job['type']:10s} {job['status']:12s} {100 * float(progress.get('fraction') or 0):7.0f}%  "
            f"{job.get('label', '')}"
        )
        if job["status"] == "failed" and job.get("error"):
            print(f"{'':24s} error: {job['error'].get('message')}")
    return 0


def _store(args):
    from diet_explore.experiments.jobs import JobStore

    store = JobStore(getattr(args, "runs", None))
    store.runs.check("--runs")
    return store


def run_submit_compare(args) -> int:
    from diet_explore.cli.compare import compare_config
    from diet_explore.experiments.executors import submit_sweep

    if args.executor or args.workers != 1:  # compare's flags, which a queued sweep does not read
        raise DietError(
            "jobs submit compare queues the sweep; --executor and --workers choose who runs it in compare",
            "start workers with `diet-explore jobs work` (one per GPU), or run compare --executor ... --workers N",
        )
    store = _store(args)
    ids = submit_sweep(store, compare_config(args), args.out, args.eval_cache, not args.no_eval_cache)
    for job_id in ids:
        print(f"queued {job_id}: {store.get(job_id)['label']}")
    if not ids:
        print(f"every run is already in {args.out}: nothing queued")
    else:
        print(f"{len(ids)} job(s) in {store.root}; run them with `diet-explore jobs work --runs {store.runs.root}` (one per GPU)")
    return 0


def run_work(args) -> int:
    from diet_explore.experiments.jobs import run_worker

    store = _store(args)
    ran = run_worker(
        store,
        idle_exit_s=args.idle,
        until_empty=args.until_empty,
        exclusive=False,
        on_job=lambda j: print(f"running {j['job_id']}: {j['label']}", file=sys.stderr, flush=True),
    )
    print(f"{ran} job(s) run")
    return 0


def describe(job: dict) -> str:
    """One line on how a job ended."""
    result = job.get("result") or {}
    if job["status"] == "done":
        return f"job {job['job_id']}: done" + (f", run {result['run_id']} in the run store" if result.get("run_id") else "")
    if job["status"] == "failed":
        return f"job {job['job_id']}: failed: {(job.get('error') or {}).get('message')}"
    return f"job {job['job_id']}: {job['status']}" + (" (partial results kept)" if result.get("partial") else "")
