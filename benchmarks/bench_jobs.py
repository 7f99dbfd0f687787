"""The tuning loop through the job manager, on SmolLM2 and its committed cache: three measured ratios.

    python benchmarks/bench_jobs.py                      # all three
    python benchmarks/bench_jobs.py --only decision      # or: interleave, ui

1. ``interleave``: the cost of scoring in blocks interleaved across tasks (``evaluation/blocks.py``)
   against today's batching (all requests in one ``LoglikelihoodScorer.score`` call), on the
   pruned DIET@0.1 model, 7 tasks × ``--limit`` held-out examples, in alternating order; prints
   the times, the ratio (target ≤ 1.05) and whether every prediction is identical.
2. ``decision``: time to a decision. The dense results are put in a fresh evaluation cache first
   (not timed), a worker is started and warm (as the Prune & evaluate page starts it when opened),
   then DIET@0.1 and random@0.1 (exact kept count, a multiple of the 9 heads) are started: as one
   job that scores both masks block by block (``--mode together``: the page's "Compare with"), and
   as two jobs queued one after the other (``--mode queue``: two clicks). Every 0.25 s the masks'
   scored examples are paired (DIET − random, ``metrics.paired_metrics`` on the examples both have
   scored) and the script prints the seconds from the click until the first partial numbers were
   on the job record (target ≤ 10 s; the page shows them at its next refresh, at most
   ``jobs_ui.REFRESH_S`` later) and until the average main metric's and the average Δ gold LL per
   char's 95% CI first excluded 0 (target ≤ 60 s).
3. ``ui``: the Mask builder's server rerun time (AppTest, a new sparsity each time, as
   bench_app.py) with no job and with a prune + evaluate job running in the worker; prints both
   medians and their ratio (target ≤ 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "cache" / "smollm2-135m"
MODEL = "smollm2-135m"


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def mask_config(method: str, sparsity: float = 0.1):
    from diet_explore.masking.build import MaskConfig

    return MaskConfig(sparsity=sparsity, method=method, exact=True, multiple_of=9)


# --------------------------------------------------------------------------------------------
def bench_interleave(limit: int, rounds: int) -> bool:
    from diet_explore.evaluation.blocks import score_blocks
    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests
    from diet_explore.evaluation.scoring import LoglikelihoodScorer
    from diet_explore.masking.build import build_mask
    from diet_explore.models.loading import load_model
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.slicing import prune_model

    model, tok, _ = load_model(MODEL, device="cpu")
    pruned = prune_model(model, build_mask(load_cache(CACHE), mask_config("diet")).keep, saveable=False)
    requests = eval_requests(EvalConfig(limit=limit, exclude_cache=str(CACHE)))
    flat = [r for reqs in requests.values() for r in reqs]
    scorer = LoglikelihoodScorer(pruned, tok)
    scorer.score(flat[:16])  # warm-up
    times: dict[str, list[float]] = {"one call": [], "blocks": []}
    results = {}
    for i in range(rounds):
        for mode in ("one call", "blocks") if i % 2 == 0 else ("blocks", "one call"):
            t0 = time.perf_counter()
            got = scorer.score(flat) if mode == "one call" else score_blocks({"m": scorer}, requests)["m"]
            times[mode].append(time.perf_counter() - t0)
            results.setdefault(mode, got)
            print(f"  round {i + 1}: {mode:8s} {times[mode][-1]:7.1f} s   (load {load_avg()})", flush=True)
    a, b = results["one call"], results["blocks"]
    same = all((x.task, x.doc_id, x.pred, x.pred_norm) == (y.task, y.doc_id, y.pred, y.pred_norm) for x, y in zip(a, b))
    dll = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.lls, y.lls))
    ratio = statistics.median(times["blocks"]) / statistics.median(times["one call"])
    per_round = [round(t / o, 3) for t, o in zip(times["blocks"], times["one call"])]
    print(
        f"interleaved blocks vs one call, {len(flat)} requests: median {statistics.median(times['blocks']):.1f} s vs "
        f"{statistics.median(times['one call']):.1f} s, ratio {ratio:.3f} (per round {per_round}; target <= 1.05); "
        f"predictions identical: {same}; max |d log-likelihood| {dll:.1e}"
    )
    return same and ratio <= 1.05


# --------------------------------------------------------------------------------------------
def _job_config(method: str, limit: int, ppl: bool) -> tuple[dict, str]:
    from diet_explore.evaluation.evaluate import EvalConfig
    from diet_explore.experiments.tuning import PruneEvalJob
    from diet_explore.masking.build import build_mask
    from diet_explore.profiling.cache import load_cache

    cache = load_cache(CACHE)
    mc = mask_config(method)
    mask = build_mask(cache, mc)
    ecfg = EvalConfig(limit=limit, perplexity=ppl, ppl_windows=16, exclude_cache=str(CACHE))
    spec = PruneEvalJob(MODEL, str(CACHE), "cache/smollm2-135m", cache.manifest_hash, mc.to_dict(), mask.n_keep, ecfg.to_dict())
    return spec.to_dict(), f"{method} @ 0.1, kept {mask.n_keep}"


def _cache_dense(limit: int, ppl: bool) -> None:
    """The dense model's results in the evaluation cache, as an earlier run leaves them (not timed)."""
    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_cached, evaluate_model
    from diet_explore.models.loading import load_model

    ecfg = EvalConfig(limit=limit, perplexity=ppl, ppl_windows=16, exclude_cache=str(CACHE))
    requests = eval_requests(ecfg)
    model, tok, info = load_model(MODEL, device="cpu")
    param = next(model.parameters())
    t0 = time.perf_counter()
    evaluate_cached(
        MODEL,
        ecfg,
        requests,
        EvalCache(),
        param.device.type,
        param.dtype,
        lambda: (evaluate_model(model, tok, ecfg, None, "dense", requests), info.to_dict()),
        label="dense",
    )
    print(f"  dense results in the evaluation cache ({time.perf_counter() - t0:.0f} s, not timed)", flush=True)


def _pruned_examples(store, job_id: str, requests) -> dict[str, dict[str, list]]:
    """The pruned model's scored examples of a job so far, per task (``metrics.examples_of``), from its block log."""
    from diet_explore.evaluation.blocks import ScoreLog, Unit, interleaved_blocks
    from diet_explore.evaluation.metrics import examples_of

    log = ScoreLog(store.folder(job_id) / "blocks")
    scores = []
    for k, block in enumerate(interleaved_blocks(requests)):
        got = log.load(Unit("pruned", k, tuple(block)))
        if got is None:
            break
        scores += got
    return {t: examples_of([s for s in scores if s.task == t]) for t in requests}


def _excludes(e) -> bool:
    return e is not None and e.get("ci_low") is not None and (e["ci_low"] > 0 or e["ci_high"] < 0)


def bench_decision(limit: int, ppl: bool, timeout: float, mode: str, eval_cache: Path) -> bool:
    """``mode`` "queue": two jobs, DIET then random, one after the other (the queue runs one job at
    a time); "together": one job that scores the random mask beside DIET's, block by block (the
    page's "Compare with"). The decision is read from the examples both masks have scored."""
    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests
    from diet_explore.evaluation.metrics import paired_examples
    from diet_explore.experiments import jobs as J
    from diet_explore.tasks.registry import resolve_tasks

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIET_EXPLORE_EVAL_CACHE"] = str(eval_cache)
        _cache_dense(limit, ppl)
        store = J.JobStore(Path(tmp) / "runs")
        J.EXECUTOR.ensure_worker(store, preload=MODEL)  # what opening the Prune & evaluate page does
        t0 = time.perf_counter()
        while not (json.loads((store.root / "worker.json").read_text()).get("ready") and store.live_worker()):
            time.sleep(0.2)  # the worker imports what jobs need and loads the model, then says it is ready
        print(
            f"  worker ready {time.perf_counter() - t0:.1f} s after it was started (before the click, as the page starts it)",
            flush=True,
        )
        requests = eval_requests(EvalConfig(limit=limit, exclude_cache=str(CACHE)))
        specs = {s.name: s for s in resolve_tasks(list(requests))}
        ids = {}
        start = time.perf_counter()
        diet, label = _job_config("diet", limit, ppl)
        rand, _ = _job_config("random", limit, ppl)
        if mode == "queue":
            ids["diet"], _ = store.submit("prune_eval", diet, label)
            ids["random"], _ = store.submit("prune_eval", rand, "random @ 0.1")
        else:
            together = diet | {"others": {"random": {"mask": rand["mask"], "n_keep": rand["n_keep"]}}}
            ids["diet"], _ = store.submit("prune_eval", together, label + " vs random")
        first = decided_main = decided_gold = None
        last_print = 0.0
        try:
            while time.perf_counter() - start < timeout:
                now = time.perf_counter() - start
                job = store.get(ids["diet"])
                partial = job.get("partial") or {}
                if first is None and (partial.get("scored") or {}).get("pruned"):
                    first = now
                    print(f"  first partial numbers on the record after {first:.1f} s", flush=True)
                if mode == "queue":
                    a, b = (_pruned_examples(store, ids[m], requests) for m in ("random", "diet"))
                    shared = sum(len(set(a[t]["doc_id"]) & set(b[t]["doc_id"])) for t in requests)
                    avg = paired_examples(a, b, specs)["average"] if shared else None  # diet − random
                else:
                    versus = ((partial.get("others") or {}).get("random") or {}).get("versus")
                    avg = versus["average"] if versus else None
                    shared = avg["main"]["n"] if avg else 0
                if avg and shared:
                    main, gold = avg["main"], avg["gold_ll_per_char"]
                    for name, e, seen in (("Δ gold LL/char", gold, decided_gold), ("Δ main", main, decided_main)):
                        if seen is None and _excludes(e):
                            print(
                                f"  {name} (diet − random) {e['delta']:+.4f} [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}] "
                                f"excludes 0 after {now:.1f} s ({shared} shared examples)",
                                flush=True,
                            )
                    decided_gold = decided_gold if decided_gold is not None or not _excludes(gold) else now
                    decided_main = decided_main if decided_main is not None or not _excludes(main) else now
                    if now - last_print > 15:
                        last_print = now
                        lo, hi = main["ci_low"], main["ci_high"]
                        ci = f"[{lo:+.4f}, {hi:+.4f}]" if lo is not None else "(no interval yet)"
                        print(f"  {now:5.1f} s: {shared} shared examples, Δ main {main['delta']:+.4f} {ci}", flush=True)
                if decided_main is not None and decided_gold is not None:
                    break
                if all(store.get(i)["status"] not in J.ACTIVE for i in ids.values()):
                    break
                time.sleep(0.25)
        finally:
            for i in ids.values():
                if store.get(i)["status"] in J.ACTIVE:
                    store.stop(i)
        status = {m: store.get(i)["status"] for m, i in ids.items()}

        def fmt(x):
            return f"{x:.1f} s" if x is not None else "not reached"

        print(
            f"time to a decision, {'two jobs in the queue' if mode == 'queue' else 'one job scoring both masks'} "
            f"({limit} examples per task, perplexity {'on' if ppl else 'off'}, load {load_avg()}): first partial numbers "
            f"{fmt(first)} (target <= 10 s), Δ gold LL CI excludes 0 {fmt(decided_gold)}, Δ main CI excludes 0 "
            f"{fmt(decided_main)} (target <= 60 s); jobs {status}"
        )
        ok = first is not None and first <= 10 and decided_main is not None and decided_main <= 60
        ok &= decided_gold is not None and decided_gold <= 60
        return ok


# --------------------------------------------------------------------------------------------
def _mask_builder_times(repeats: int, offset: float) -> list[float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "diet_explore_app" / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("views/mask_builder.py").run()
    times = []
    for i in range(repeats):
        value = round(0.11 + offset + 0.05 * i + 0.01 * (i % 3), 2)
        t0 = time.perf_counter()
        at.slider(key="sparsity").set_value(value).run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return times


def bench_ui(repeats: int, rounds: int) -> bool:
    from diet_explore.experiments import jobs as J

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "caches"
        root.mkdir()
        (root / CACHE.name).symlink_to(CACHE)
        os.environ.update(DIET_EXPLORE_CACHE_DIR=str(root), DIET_EXPLORE_RUNS_DIR=str(Path(tmp) / "runs"))
        os.environ["DIET_EXPLORE_EVAL_CACHE"] = str(Path(tmp) / "eval-cache")
        store = J.JobStore(Path(tmp) / "runs")
        idle, busy = [], []
        for r in range(rounds):
            idle += _mask_builder_times(repeats, 0.0)
            config, label = _job_config("diet", 100, True)
            job_id, _ = J.submit(store, "prune_eval", config | {"source": f"bench-{r}"}, label)
            while not ((store.get(job_id).get("partial") or {}).get("scored") or {}).get("dense"):
                time.sleep(0.2)  # the job is scoring
            busy += _mask_builder_times(repeats, 0.02)
            running = store.get(job_id)["status"] == "running"
            store.stop(job_id)
            print(
                f"  round {r + 1}: idle median {statistics.median(idle[-repeats:]) * 1000:.0f} ms, with a job running "
                f"{statistics.median(busy[-repeats:]) * 1000:.0f} ms (job still running at the end: {running}; load {load_avg()})",
                flush=True,
            )
            while store.get(job_id)["status"] in J.ACTIVE:
                time.sleep(0.2)
        ratio = statistics.median(busy) / statistics.median(idle)
        print(
            f"Mask builder rerun, median server time: idle {statistics.median(idle) * 1000:.0f} ms, with a job running "
            f"{statistics.median(busy) * 1000:.0f} ms, ratio {ratio:.2f} (target <= 2; worst {max(busy) * 1000:.0f} ms)"
        )
        return ratio <= 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("interleave", "decision", "ui"), action="append")
    ap.add_argument("--limit", type=int, default=50, help="held-out examples per task (interleave, decision)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8, help="slider moves per measurement (ui)")
    ap.add_argument("--perplexity", action="store_true", help="decision: the jobs also compute wiki perplexity")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--eval-cache",
        default=str(Path(tempfile.gettempdir()) / "diet-explore-bench-eval-cache"),
        help="decision: where the dense results are cached (kept between runs; the first run fills it)",
    )
    ap.add_argument("--mode", choices=("together", "queue"), action="append", help="decision: one job or two (default both)")
    args = ap.parse_args()
    todo = args.only or ["interleave", "decision", "ui"]
    print(f"bench_jobs: {', '.join(todo)}; load average at start {load_avg()} on {os.cpu_count()} CPUs", flush=True)
    ok = True
    if "interleave" in todo:
        ok &= bench_interleave(args.limit, args.rounds)
    if "decision" in todo:
        for mode in args.mode or ["together", "queue"]:
            ok &= bench_decision(args.limit, args.perplexity, args.timeout, mode, Path(args.eval_cache))
    if "ui" in todo:
        ok &= bench_ui(args.repeats, args.rounds)
    print("PASS" if ok else "FAIL: a target is missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
