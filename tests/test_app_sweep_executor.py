"""The Sweeps page's "Run on" choice (``views/sweep.py`` -> ``executors.queue_sweep``): on Ray the
sweep the page starts splits as ``compare --executor ray`` does (one job per method × sparsity, the
dense model scored once, one merged results.jsonl) while the page follows one job; Ray is greyed
out, with the install command, where it is not installed."""

from __future__ import annotations

import sys

import pytest
from app_helpers import run_page


def test_ray_is_greyed_out_with_the_install_command_where_it_is_not_installed(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as in a default install
    at = run_page(app.run(), "sweep")
    radio = at.radio(key="sw_executor")
    assert radio.disabled and radio.value == "local"
    assert at.number_input(key="sw_workers").disabled
    assert any("pip install 'diet-explore[ray]'" in c.value for c in at.caption)


def test_ray_is_offered_and_starts_at_the_launch_setting_where_it_is_installed(app, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("DIET_EXPLORE_EXECUTOR", "ray")
    monkeypatch.setenv("DIET_EXPLORE_WORKERS", "3")
    at = run_page(app.run(), "sweep")
    radio = at.radio(key="sw_executor")
    assert not radio.disabled and radio.value == "ray" and at.number_input(key="sw_workers").value == 3
    assert not any("pip install" in c.value for c in at.caption)


@pytest.mark.slow  # a local Ray cluster and two actors importing torch: a minute on 2 busy cores
def test_a_sweep_run_on_ray_from_the_page_is_one_job_per_run_with_one_results_file(tiny_app, tiny_cache_root, tmp_path):
    """The app launched with the local executor; the page's choice is Ray with 2 workers. The app's
    worker drives the sweep on a local Ray cluster (started by it, one CPU per actor)."""
    pytest.importorskip("ray")
    from job_helpers import wait_job
    from test_jobs_executors import check_split_sweep

    from diet_explore.experiments.jobs import JobStore

    at, dirs = tiny_app
    at = run_page(at.run(), "sweep")
    at.multiselect(key="sw_methods").set_value(["diet", "random"]).run()
    at.multiselect(key="sw_sparsities").set_value([0.25, 0.5]).run()
    at.multiselect(key="sw_tasks").set_value(["rte"]).run()
    at.number_input(key="sw_limit").set_value(4).run()
    at.toggle(key="sw_ppl").set_value(False).run()
    at.radio(key="sw_executor").set_value("ray").run()
    at.number_input(key="sw_workers").set_value(2).run()
    at.button(key="sw_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    store = JobStore(dirs["runs"])
    (sweep,) = store.jobs()
    assert sweep["type"] == "sweep" and "ray × 2" in sweep["label"]  # one job on the page, as on the local process
    messages: set[str] = set()

    def ended(job) -> bool:
        messages.add(str((job.get("progress") or {}).get("message")))
        return job["status"] in ("done", "failed", "stopped", "interrupted")

    sweep = wait_job(store, sweep["job_id"], ended, poll=0.2)
    assert sweep["status"] == "done", sweep.get("error")
    assert any(" of 4 run(s) done, one job each on ray × 2" in m for m in messages), messages  # the sweep's one progress
    # 4 runs became 4 compare_run jobs in the sweep job's folder: each row once, dense scored by one job
    check_split_sweep(store, store.folder(sweep["job_id"]) / "sweep", tiny_cache_root, tmp_path)
    assert len({j["worker"]["pid"] for j in store.jobs() if j["type"] == "compare_run"} - {sweep["worker"]["pid"]}) >= 1

    at.run()  # the page shows the split sweep as any sweep: its decision in words
    label = next(o for o in at.selectbox(key="rs_sweep").options if o.startswith("app sweep"))
    at.selectbox(key="rs_sweep").set_value(label).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.value.startswith("- ") and "random" in m.value and "sparsity 0.5" in m.value for m in at.markdown)
