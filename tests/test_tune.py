"""diet-explore tune: the honest split, the search through the blocks and the pruner, resume, the job, the CLI."""

from __future__ import annotations

import sys

import pytest

from diet_explore.core.errors import DietError
from diet_explore.evaluation.blocks import Stopped
from diet_explore.experiments import tune

optuna = pytest.importorskip("optuna")
TASKS = ["rte", "arc_easy"]


@pytest.fixture(scope="module")
def tiny(tiny_cache_root):
    from diet_explore.models.loading import load_model
    from diet_explore.profiling.cache import load_cache

    folder = tiny_cache_root / "tiny"
    cache = load_cache(folder)
    model, tok, info = load_model(cache.model_name, device="cpu")
    return {"cache": str(folder), "model_name": cache.model_name, "loaded": (model, tok, info), "pool": cache}


def config(tiny, name="t", **kw) -> tune.TuneConfig:
    base = dict(model=tiny["model_name"], cache=tiny["cache"], name=name, sparsity=0.25, trials=3, limit=6, tasks=TASKS)
    base |= dict(device="cpu", objective="gold_ll_per_char", baselines=["default", "random"])
    return tune.TuneConfig(**(base | kw))


def run(tiny, cfg, root, **kw):
    model, tok, info = tiny["loaded"]
    return tune.run_tune(cfg, root, model=model, tokenizer=tok, info=info, log=lambda m: None, **kw)


def test_the_split_is_disjoint_seeded_and_per_task(tiny):
    from diet_explore.evaluation.evaluate import eval_requests

    requests = eval_requests(config(tiny, limit=10).eval_config())
    tuning, test = tune.split_requests(requests, 0, 0.5)
    for t, reqs in requests.items():
        a, b = {r.doc_id for r in tuning[t]}, {r.doc_id for r in test[t]}
        assert not a & b and a | b == {r.doc_id for r in reqs} and len(b) == 5
    again = tune.split_requests(requests, 0, 0.5)
    assert tune.doc_ids(again[1]) == tune.doc_ids(test)
    assert tune.doc_ids(tune.split_requests(requests, 1, 0.5)[1]) != tune.doc_ids(test)
    # a task's split does not depend on the other tasks
    only = tune.split_requests({"rte": requests["rte"]}, 0, 0.5)[1]
    assert tune.doc_ids(only)["rte"] == tune.doc_ids(test)["rte"]


@pytest.mark.slow
def test_no_trial_ever_sees_a_test_document(tiny, tmp_path, monkeypatch):
    """Every scoring call goes through tune.score; record what each model label saw."""
    seen: list[tuple[list[str], set]] = []
    real = tune.score

    def watching(models, tok, ecfg, requests, *a, **k):
        seen.append((list(models), {(t, r.doc_id) for t, reqs in requests.items() for r in reqs}))
        return real(models, tok, ecfg, requests, *a, **k)

    monkeypatch.setattr(tune, "score", watching)
    out = run(tiny, config(tiny, trials=4), tmp_path)
    test_docs = {(t, d) for t, ids in out["split"]["test"].items() for d in ids}
    tuning_docs = {(t, d) for t, ids in out["split"]["tuning"].items() for d in ids}
    assert test_docs and tuning_docs and not test_docs & tuning_docs
    final = [docs for labels, docs in seen if len(labels) > 1]  # dense and the compared models together
    searching = [docs for labels, docs in seen if len(labels) == 1]
    assert len(final) == 1 and final[0] == test_docs  # the test set is scored once, at the end
    assert len(searching) >= 2  # dense on the tuning set, then the trials
    assert all(docs == tuning_docs for docs in searching)
    # the calibration samples of the cache are in neither set
    cal = {(t, int(i)) for t, ids in tiny["pool"].manifest.get("sample_ids", {}).items() for i in ids}
    assert not cal & (test_docs | tuning_docs)
    # the report says what it compared, with the decision sentence, the gap and per-example results
    assert out["split"]["seed"] == 0 and set(out["test"]["examples"]) == {"dense", "tuned", "default", "random"}
    assert any("paper default" in s for s in out["sentences"]) and out["sentences"][-1].startswith("overfitting")
    assert out["gap"] == pytest.approx(
        out["best"]["tuning_value"] - out["test"]["vs_dense"]["tuned"]["gold_ll_per_char"]["delta"]
    )


@pytest.mark.slow
def test_an_interrupted_study_resumes_and_keeps_its_trials(tiny, tmp_path):
    cfg = config(tiny, name="r", trials=4, pruner="none")
    calls = {"n": 0}

    def stop_after_two_trials():
        db, _ = tune.study_paths(tmp_path, "r")
        if db.exists():
            s = tune.load_study(db, "r")
            if len(tune.finished_trials(s)) >= 2:
                calls["n"] += 1
                return "interrupted"
        return None

    with pytest.raises(Stopped):
        run(tiny, cfg, tmp_path, should_stop=stop_after_two_trials)
    db, _ = tune.study_paths(tmp_path, "r")
    study = tune.load_study(db, "r")
    first = [(t.number, t.value) for t in tune.finished_trials(study)]
    assert len(first) == 2 and calls["n"] >= 1
    out = run(tiny, cfg, tmp_path, resume=True)
    study = tune.load_study(db, "r")
    after = [(t.number, t.value) for t in tune.finished_trials(study)]
    assert len(after) == 4 and after[:2] == first  # continued, nothing redone
    assert out["savings"]["trials"] == 4


@pytest.mark.slow
def test_a_trial_left_running_by_a_killed_run_is_failed_and_its_settings_asked_again(tiny, tmp_path):
    cfg = config(tiny, name="k", trials=1, pruner="none", fixed={"site": "residual"})
    study = tune.open_study(cfg, tmp_path)
    orphan = study.ask()
    orphan.suggest_float("w_rte", 0.0, 2.0, step=0.1)  # a killed process's trial: never told
    run(tiny, cfg, tmp_path)
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    assert trials[1].params["w_rte"] == trials[0].params["w_rte"]  # asked again with its settings


def test_other_settings_under_the_same_name_are_refused(tiny, tmp_path):
    tune.open_study(config(tiny, name="s"), tmp_path)
    with pytest.raises(DietError, match="other settings.*sparsity"):
        tune.open_study(config(tiny, name="s", sparsity=0.5), tmp_path)
    with pytest.raises(DietError, match="no study"):
        tune.open_study(config(tiny, name="none"), tmp_path, resume=True)


@pytest.mark.slow
def test_the_pruner_stops_trials_and_the_savings_count_what_ran(tiny, tmp_path):
    cfg = config(tiny, name="p", trials=12, limit=20, pruner="halving")
    out = run(tiny, cfg, tmp_path)
    db, _ = tune.study_paths(tmp_path, "p")
    study = tune.load_study(db, "p")
    n_tuning = sum(len(v) for v in out["split"]["tuning"].values())
    s = out["savings"]
    assert s["full"] == n_tuning * s["trials"] and s["scored"] == sum(
        t.user_attrs["examples"] for t in tune.finished_trials(study)
    )
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and s["saved"] > 0
    assert all(t.user_attrs["examples"] < n_tuning for t in pruned)


def test_fixed_settings_are_not_searched_and_bad_ones_are_refused(tiny):
    from diet_explore.profiling.cache import load_cache

    space = tune.search_space(config(tiny), load_cache(tiny["cache"]))
    assert "threshold" not in space  # exact: every mask keeps the target count, τ is not read
    assert "threshold" in tune.search_space(config(tiny, exact=False), load_cache(tiny["cache"]))
    fixed = tune.parse_fixed(["rte=2", "site=residual", "layer_agg=last_k", "last_k=1"], space)
    assert fixed == {"w_rte": 2.0, "site": "residual", "layer_agg": "last_k", "last_k": 1}
    for bad, match in (
        ("foo=1", "not a searched"),
        ("threshold=0.5", "no-exact"),
        ("site=nowhere", "not one of"),
        ("rte=-1", "out of range"),
        ("rte", "name=value"),
    ):
        with pytest.raises(DietError, match=match):
            tune.parse_fixed([bad], space)


def test_the_search_grid_is_the_mask_builders_slider_grid():
    from diet_explore_app import settings

    assert tune.THRESHOLD_STEP == settings.THRESHOLD_STEP and tune.WEIGHT_STEP == settings.WEIGHT_STEP
    assert tune.WEIGHT_RANGE[1] == settings.WEIGHT_MAX


def test_without_optuna_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    from diet_explore.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(DietError, match=r"pip install 'diet-explore\[tune\]'"):
        tune.require_optuna()
    assert main(["tune", "--cache", str(tmp_path), "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: tuning needs Optuna, which is not installed: pip install 'diet-explore[tune]'"]


@pytest.mark.slow
def test_a_tune_job_runs_in_the_worker_and_streams_its_trials(tiny, tmp_path):
    from diet_explore.experiments.jobs import JobStore, run_worker

    store = JobStore(tmp_path / "runs")
    cfg = config(tiny, name="job", trials=2)
    job_id, _ = store.submit("tune", cfg.to_dict(), "tune job")
    assert run_worker(store, until_empty=True) == 1
    job = store.get(job_id)
    assert job["status"] == "done", job.get("error")
    assert len(job["partial"]["trials"]) == 2 and job["partial"]["best"] is not None
    assert job["result"]["sentences"] and (tmp_path / "runs" / "tune" / "job.db").is_file()


@pytest.mark.slow
def test_the_proxy_prefilter_evaluates_the_candidate_it_ranks_first(tiny, tmp_path):
    cfg = config(tiny, name="pf", trials=2, prefilter=3, pruner="none")
    run(tiny, cfg, tmp_path)
    db, _ = tune.study_paths(tmp_path, "pf")
    trials = tune.load_study(db, "pf").get_trials()
    evaluated = [t for t in trials if t.state.name == "COMPLETE"]
    skipped = [t for t in trials if t.user_attrs.get("skipped")]
    assert len(evaluated) == 2 and len(skipped) == 4 and len(tune.finished_trials_of(trials)) == 2
    for t in evaluated:  # its batch: the three candidates asked together
        batch = [u for u in trials if u.number // 3 == t.number // 3]
        assert t.user_attrs["proxy"] == max(u.user_attrs["proxy"] for u in batch)


def test_proxy_recall_counts_the_best_k_found_by_the_proxy():
    rows = [
        {"number": i, "state": "complete", "value": v, "proxy": p, "label": f"m{i}"}
        for i, (v, p) in enumerate([(0.9, 0.1), (0.8, 0.9), (0.1, 0.8), (0.0, 0.2)])
    ]
    assert tune.proxy_recall(rows, 2) == {"k": 2, "n": 4, "recall": 0.5, "chance": 0.5}
    rows[0]["proxy"] = 0.95
    assert tune.proxy_recall(rows, 2)["recall"] == 1.0
    with pytest.raises(DietError, match="too few"):
        tune.proxy_recall(rows, 5)


@pytest.mark.slow
def test_a_killed_tune_command_resumes_with_the_same_name(tiny, tmp_path):
    """SIGKILL the CLI once two trials are in the study; the same command continues the study."""
    import os
    import signal
    import subprocess
    import time

    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "diet_explore", "tune", "--cache", tiny["cache"], "--model", tiny["model_name"]]
    argv += ["--name", "kill", "--trials", "10", "--limit", "6", "--tasks", "rte,arc_easy", "--device", "cpu"]
    argv += ["--runs", str(runs), "--pruner", "none", "--baselines", "default", "--objective", "gold_ll_per_char"]
    db, _ = tune.study_paths(runs, "kill")
    log = tmp_path / "first-run.log"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    s = tune.load_study(db, "kill")
                    if len(tune.finished_trials(s)) >= 2:
                        break
                except KeyError:
                    pass
            time.sleep(0.01)  # a tiny trial can take well under a second
        assert proc.poll() is None, "the run ended before it could be killed: " + log.read_text()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    before = {t.number: t.value for t in tune.finished_trials(tune.load_study(db, "kill"))}
    assert len(before) >= 2
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {t.number: t.value for t in tune.finished_trials(tune.load_study(db, "kill"))}
    assert len(after) == 10 and all(after[n] == v for n, v in before.items())
    assert "tuned (" in done.stdout and "report.json" in done.stdout


@pytest.mark.slow
def test_the_library_cli_and_page_modules_import_without_optuna():
    import subprocess

    code = (
        "import sys; sys.modules['optuna'] = None\n"
        "import diet_explore.experiments.tune, diet_explore.experiments.tune_plots, diet_explore.experiments.jobs\n"
        "from diet_explore.cli import build_parser\n"
        "build_parser().parse_args(['tune', '--cache', 'x'])\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_minutes_budget_ends_the_search_and_a_spent_budget_before_any_trial_is_refused(tiny, tmp_path):
    with pytest.raises(DietError, match="no trial finished"):
        run(tiny, config(tiny, name="m", trials=None, minutes=1e-6), tmp_path)
    run(tiny, config(tiny, name="m", trials=1, pruner="none"), tmp_path)
    out = run(tiny, config(tiny, name="m", trials=None, minutes=1e-6), tmp_path)  # no new trial: the report of the one
    assert out["savings"]["trials"] == 1 and out["best"]["trial"] == 0


def test_the_pruner_stops_at_the_block_ends_after_a_warmup_and_keeps_the_top_third():
    # rungs are block ends (1, 3, 7, 15, 27, ...) from MIN_RESOURCE on, leaving a quarter of the examples to come
    assert tune.rungs(12) == [7] and tune.rungs(25) == [7, 15] and tune.rungs(40) == [7, 15, 27] and tune.rungs(6) == []
    assert not tune.halving_stops(-9.0, [0.0] * (tune.WARMUP_TRIALS - 1))  # the warm-up trials set the bar
    assert tune.halving_stops(-0.25, [0.0, -0.2, -0.3, -0.4, -0.5])  # 6 values: only the top 2 go on
    assert not tune.halving_stops(-0.1, [0.0, -0.2, -0.3, -0.4, -0.5]) and not tune.halving_stops(0.0, [0.0] * 5)
    # the study's pruner applies the rule only at a rung, comparing values at exactly that step
    study = optuna.create_study(direction="maximize", pruner=tune.make_pruner(optuna, "halving", 12))
    stopped = []
    for value in (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.6, 0.45):
        trial = study.ask()
        trial.report(-1.0 - trial.number, 3)  # the worst so far, but before the first rung: never stopped
        assert not trial.should_prune()
        trial.report(value, 7)
        stopped.append(trial.should_prune())
        study.tell(trial, value)
    assert stopped == [False] * 5 + [True, False, True]
    # Hyperband runs over the same range: from the first rung (or the end, with no rung) to the end
    for per_task in (25, 6):
        study = optuna.create_study(direction="maximize", pruner=tune.make_pruner(optuna, "hyperband", per_task))
        trial = study.ask()
        trial.report(0.0, per_task)
        assert not trial.should_prune()


def test_the_savings_count_evaluated_trials_only():
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    for examples, reused, state in ((10, False, TrialState.COMPLETE), (4, False, TrialState.PRUNED), (0, True, None)):
        trial = study.ask()
        trial.set_user_attr("examples", examples)
        if reused:
            trial.set_user_attr("reused_from", 0)
        study.tell(trial, 0.0 if state is not TrialState.PRUNED else None, state=state)
    assert tune.savings(study, 10) == {"trials": 2, "scored": 14, "full": 20, "saved": 6, "reused": 1}


@pytest.mark.slow
def test_a_trial_with_a_finished_trials_mask_reuses_its_value_and_is_not_a_pruner_saving(tiny, tmp_path):
    from diet_explore.profiling.cache import load_cache

    cfg = config(tiny, name="same", trials=2, pruner="none", baselines=["default"])
    space = tune.search_space(cfg, load_cache(tiny["cache"]))
    cfg.fixed = {k: (1.0 if k.startswith(tune.WEIGHT_PREFIX) else spec[1][0]) for k, spec in space.items() if k != "last_k"}
    out = run(tiny, cfg, tmp_path)
    study = tune.load_study(tune.study_paths(tmp_path, "same")[0], "same")
    assert [t.user_attrs.get("reused_from") for t in study.trials] == [None, 0]
    n_tuning = sum(len(v) for v in out["split"]["tuning"].values())
    assert out["savings"] == {"trials": 1, "scored": n_tuning, "full": n_tuning, "saved": 0, "reused": 1}
