"""AppTest: every page names the Mask builder's mask by its full label (``MaskConfig.label()``, e.g.
"diet τ0.6 boolq×2", never just "diet"), and Prune & evaluate's progress text states the same share
of the job as its bar while a comparison mask is scored."""

from __future__ import annotations

import os
import re
import signal

import pytest
from app_helpers import metrics, run_page
from job_helpers import wait_job, worker_pid

from diet_explore.experiments.jobs import JobStore


def _texts(at) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.info])


def _tune(at, tau: float, weights: dict[str, float]) -> int:
    run_page(at, "mask_builder")
    at.slider(key="threshold").set_value(tau).run()
    for t, w in weights.items():
        at.slider(key=f"w_{t}").set_value(w).run()
    return int(metrics(at)["Kept dims"].split("/")[0])


def test_mask_builder_agreement_rankings_dimension_and_prune_eval_name_the_mask_by_its_full_label(app):
    at = app.run()
    kept = _tune(at, 0.6, {"boolq": 2.0})
    label = "diet τ0.6 boolq×2"
    assert f"Mask **{label}**: kept {kept} of 576 hidden dims" in _texts(at)
    run_page(at, "agreement")
    assert f"Mask **{label}**: kept {kept} of 576 hidden dims" in _texts(at)
    run_page(at, "rankings")  # one label line, not only the kept column's heading
    assert f"Mask **{label}**: kept {kept} of 576 hidden dims" in _texts(at)
    run_page(at, "dimension")
    assert f"{label} merges them into {kept} kept." in _texts(at)
    run_page(at, "prune_eval")
    assert f"Current mask: **{label}**, kept **{kept}** of 576" in _texts(at)


@pytest.mark.slow  # a worker scores 300 examples × 3 models (about 20 s)
def test_prune_eval_job_label_and_progress_text_agree_with_the_bar(tiny_app):
    at, dirs = tiny_app
    at = at.run()
    kept = _tune(at, 0.6, {"rte": 2.0})
    label = "diet τ0.6 rte×2"
    run_page(at, "prune_eval")
    at.multiselect(key="pe_vs").set_value(["random"]).run()
    at.number_input(key="pe_limit").set_value(300).run()
    at.multiselect(key="pe_tasks").set_value(["arc_easy"]).run()
    at.toggle(key="pe_ppl").set_value(False).run()
    at.button(key="pe_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    store = JobStore(dirs["runs"])
    (job,) = store.jobs()
    assert job["label"].startswith(f"{label} @ 0.2, kept {kept}, 1 tasks × 300"), job["label"]
    assert f"({job['label']})" in _texts(at)

    # the random mask (the second of two) is being scored: the bar covers the whole job, and so does the text
    scoring_random = lambda j: (
        ((j.get("partial") or {}).get("scored") or {}).get("random", 0) > 0
        and ((j.get("progress") or {}).get("fraction", 0) > 0.5)
    )
    wait_job(store, job["job_id"], lambda j: j["status"] not in ("queued", "running") or scoring_random(j))
    pid = worker_pid(store)
    os.kill(pid, signal.SIGSTOP)  # hold it mid-run while we look
    try:
        at.run()
        job = store.get(job["job_id"])
        assert job["status"] == "running", job["status"]
        (bar,) = at.get("progress")
        value, text = bar.proto.value, bar.proto.text
        assert value == int(100 * job["progress"]["fraction"]) and value >= 50
        shown = re.match(r"(\d+)% of the job · mask \d of \d \([^)]*random[^)]*\): ", text)  # alone, or with the others
        assert shown and int(shown.group(1)) == value, (value, text)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_progress_text_starts_with_the_share_the_bar_shows():
    from diet_explore.experiments.tuning import mask_progress

    share, text = mask_progress(1, 3, "random", 21 / 70, "scored 21/70 examples")
    assert share == (1 + 21 / 70) / 3
    assert (
        text
        == f"{int(share * 100)}% of the job · mask 2 of 3 (random): scored 21/70 examples"
        == ("43% of the job · mask 2 of 3 (random): scored 21/70 examples")
    )
    assert mask_progress(2, 3, "random", 1.0, "done")[0] == 1.0
