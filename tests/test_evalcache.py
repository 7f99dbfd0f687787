"""The disk cache of quick-evaluation results: what invalidates an entry, what a reused result is,
and that a bad entry is recomputed rather than trusted."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from test_scoring import WordTokenizer

from diet_explore.evaluation.evalcache import EvalCache, cache_key, folder_fingerprint, requests_fingerprint
from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_cached, evaluate_model
from diet_explore.models.adapters.tiny import tiny_model

CONFIG = EvalConfig(tasks="rte,winogrande", limit=3, ppl_windows=2)


@pytest.fixture
def folder(tmp_path):
    """A saved tiny model folder (its files are what the cache key reads) and the model itself."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny", model


class Counting:
    """A ``compute`` for evaluate_cached that evaluates the tiny model and counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, config=CONFIG):
        self.calls += 1
        return evaluate_model(self.model, WordTokenizer(), config, model_name="tiny"), {"name": "tiny"}


def cached(folder, compute, cache, config=CONFIG, dtype=torch.float32, device="cpu"):
    return evaluate_cached(str(folder), config, eval_requests(config), cache, device, dtype, lambda: compute(config))


def test_folder_fingerprint_changes_when_any_file_is_rewritten_or_added(folder):
    path, _ = folder
    before = folder_fingerprint(path)
    assert folder_fingerprint(path) == before  # stable while nothing changes
    config = path / "config.json"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, rewritten later
    touched = folder_fingerprint(path)
    assert touched != before
    (path / "tokenizer.json").write_text("{}")
    assert folder_fingerprint(path) != touched


def test_requests_fingerprint_sees_a_changed_context():
    requests = eval_requests(CONFIG)
    before = requests_fingerprint(requests)
    first = requests["rte"][0]
    requests["rte"][0] = type(first)(**{**first.__dict__, "contexts": [c + " " for c in first.contexts]})
    assert requests_fingerprint(requests) != before


def test_a_second_evaluation_is_reused_and_equal_to_the_first(folder, tmp_path):
    path, model = folder
    compute, cache = Counting(model), EvalCache(tmp_path / "cache")
    first = cached(path, compute, cache)
    second = cached(path, compute, cache)
    assert compute.calls == 1
    assert "cached" not in first.extra and second.extra["cached"]["path"].startswith(str(tmp_path / "cache"))
    assert second.extra["cached"]["made_with"]["batch_tokens"] == CONFIG.batch_tokens
    assert second.predictions == first.predictions and second.perplexity == first.perplexity
    assert json.dumps(second.task_metrics()) == json.dumps(first.task_metrics())  # (NaN acc_norm: compare as text)
    assert [s.lls for s in second.scores] == [s.lls for s in first.scores]  # exact float round trip


@pytest.mark.parametrize("change", ["ppl_windows", "limit", "dtype", "device", "weights"])
def test_anything_that_changes_the_result_misses_the_cache(folder, tmp_path, change):
    path, model = folder
    compute, cache = Counting(model), EvalCache(tmp_path / "cache")
    cached(path, compute, cache)
    kwargs = {}
    if change == "ppl_windows":
        kwargs["config"] = EvalConfig(tasks="rte,winogrande", limit=3, ppl_windows=3)
    elif change == "limit":
        kwargs["config"] = EvalConfig(tasks="rte,winogrande", limit=4, ppl_windows=2)
    elif change == "dtype":
        kwargs["dtype"] = torch.bfloat16
    elif change == "device":
        kwargs["device"] = "cuda:0"
    else:
        tiny_model("llama", seed=1).save_pretrained(path)  # prune --overwrite, say
    cached(path, compute, cache, **kwargs)
    assert compute.calls == 2


def test_the_wiki_text_file_is_in_the_key_when_perplexity_is_on(tmp_path, monkeypatch):
    requests = eval_requests(CONFIG)
    text = tmp_path / "wiki.utf8"
    text.write_text("some text")
    monkeypatch.setattr("diet_explore.core.assets.wiki_text_path", lambda: text)
    no_ppl = EvalConfig(tasks="rte,winogrande", limit=3, perplexity=False)
    before = cache_key("folder:x", requests, CONFIG, "cpu", "float32"), cache_key("folder:x", requests, no_ppl, "cpu", "float32")
    text.write_text("other text, another size")
    after = cache_key("folder:x", requests, CONFIG, "cpu", "float32"), cache_key("folder:x", requests, no_ppl, "cpu", "float32")
    assert before[0] != after[0] and before[1] == after[1]


def test_a_reused_result_is_named_by_the_caller_or_by_its_model(folder, tmp_path):
    """The app and compare store the dense model as "dense"; `eval` reusing it prints the model's name."""
    path, model = folder
    cache = EvalCache(tmp_path / "cache")
    requests = eval_requests(CONFIG)

    def as_dense():
        return evaluate_model(model, WordTokenizer(), CONFIG, model_name="dense"), {"name": "tiny-llama"}

    assert (
        evaluate_cached(str(path), CONFIG, requests, cache, "cpu", torch.float32, as_dense, label="dense").model_name == "dense"
    )
    reused = evaluate_cached(str(path), CONFIG, requests, cache, "cpu", torch.float32, as_dense)
    assert "cached" in reused.extra and reused.model_name == "tiny-llama"
    assert (
        evaluate_cached(str(path), CONFIG, requests, cache, "cpu", torch.float32, as_dense, label="dense").model_name == "dense"
    )


def test_batch_settings_do_not_change_the_key():
    requests = eval_requests(CONFIG)
    other = EvalConfig(tasks="rte,winogrande", limit=3, ppl_windows=2, batch_tokens=4096, workers=1, batch_size=2)
    assert cache_key("folder:x", requests, CONFIG, "cpu", torch.float32) == cache_key(
        "folder:x", requests, other, "cpu", "float32"
    )


@pytest.mark.parametrize("damage", ["truncated", "other examples", "other format"])
def test_a_bad_entry_is_reported_recomputed_and_replaced(folder, tmp_path, damage):
    path, model = folder
    compute, cache = Counting(model), EvalCache(tmp_path / "cache")
    first = cached(path, compute, cache)
    (entry,) = (tmp_path / "cache").glob("*.json")
    text = entry.read_text()
    if damage == "truncated":
        entry.write_text(text[: len(text) // 2])
    else:
        raw = json.loads(text)
        if damage == "other examples":
            raw["scores"][0]["doc_id"] += 1
        else:
            raw["format"] = 0
        entry.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="ignoring eval cache entry .*recomputing"):
        again = cached(path, compute, cache)
    assert compute.calls == 2 and "cached" not in again.extra and again.predictions == first.predictions
    assert json.loads(entry.read_text())["scores"][0]["doc_id"] == first.scores[0].doc_id  # replaced by a good one
    assert "cached" in cached(path, compute, cache).extra


def _damage_lls(raw, value):
    raw["scores"][0]["lls"] = value(len(raw["scores"][0]["lls"]))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda raw: _damage_lls(raw, lambda n: ["x"] * n), r"score 0 \(rte example \d+\) has lls \['x'"),  # was ValueError
        (lambda raw: _damage_lls(raw, lambda n: [float("nan")] * n), "has lls .*not 2 finite numbers"),  # was reused: acc 0.5
        (lambda raw: _damage_lls(raw, lambda n: [float("inf")] * n), "has lls .*not 2 finite numbers"),
        (lambda raw: raw.update(perplexity="abc"), "its perplexity is 'abc', not a finite number > 0 or null"),
        (lambda raw: raw.update(perplexity={"a": 1}), "its perplexity is"),  # later: Unknown format code 'f'
        (lambda raw: raw.update(perplexity=[1.0]), "its perplexity is"),
        (lambda raw: raw.update(perplexity=float("nan")), "its perplexity is nan"),
        (lambda raw: raw.update(info=[1]), r"its info is \[1\], not an object"),  # was AttributeError
        (lambda raw: raw.update(wall_time_s="1"), "its wall_time_s is"),
        (lambda raw: raw["scores"][0].pop("doc_id"), "its score 0 is not a stored score"),  # was "('doc_id')"
        (lambda raw: raw["scores"].__setitem__(0, "s"), "its score 0 is not a stored score"),  # "string indices must be..."
        (lambda raw: raw["scores"][0].update(is_greedy=[1, 0]), "has is_greedy .*true/false"),
        (lambda raw: raw["scores"][0].update(n_tokens=[1.5, 2]), "has n_tokens .*whole numbers"),
        (lambda raw: raw.update(scores={}), "its scores is {}, not a list"),
    ],
)
def test_an_entry_with_a_wrongly_typed_or_non_finite_value_is_a_miss_with_a_readable_warning(folder, tmp_path, damage, reason):
    path, model = folder
    compute, cache = Counting(model), EvalCache(tmp_path / "cache")
    first = cached(path, compute, cache)
    (entry,) = (tmp_path / "cache").glob("*.json")
    raw = json.loads(entry.read_text())
    damage(raw)
    entry.write_text(json.dumps(raw))  # NaN and Infinity as Python's json writes them
    with pytest.warns(UserWarning) as caught:
        again = cached(path, compute, cache)
    (warning,) = [str(w.message) for w in caught]
    assert warning.startswith(f"ignoring eval cache entry {entry} (its ") and warning.endswith("); recomputing")
    assert re.search(reason, warning), warning
    assert compute.calls == 2 and "cached" not in again.extra and again.predictions == first.predictions
    assert json.dumps(again.task_metrics()) == json.dumps(first.task_metrics())
    assert "cached" in cached(path, compute, cache).extra  # replaced by a good entry


@pytest.mark.slow
def test_no_cache_and_unfingerprintable_models_always_compute(folder, tmp_path, monkeypatch):
    path, model = folder
    compute = Counting(model)
    cached(path, compute, None)
    cached(path, compute, None)
    assert compute.calls == 2
    monkeypatch.setattr(
        "diet_explore.evaluation.evalcache.model_fingerprint", lambda name: None
    )  # e.g. a hub model without a revision
    cache = EvalCache(tmp_path / "cache")
    cached(path, compute, cache)
    cached(path, compute, cache)
    assert compute.calls == 4 and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_cli_eval_reuses_the_dense_model_and_recomputes_with_no_eval_cache(smollm2, tmp_path, monkeypatch, capsys):
    from diet_explore.cli import main

    argv = [
        "eval",
        "--model",
        "smollm2-135m",
        "--tasks",
        "rte,winogrande",
        "--limit",
        "2",
        "--no-perplexity",
        "--eval-cache",
        str(tmp_path / "cache"),
    ]
    assert main([*argv, "--json", str(tmp_path / "first.json")]) == 0
    assert "evaluating smollm2-135m" in capsys.readouterr().out

    def no_load(*a, **k):
        raise AssertionError("loaded the model although its results are cached")

    monkeypatch.setattr("diet_explore.models.loading.load_model", no_load)
    assert main([*argv, "--json", str(tmp_path / "second.json")]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m: reusing its results of" in out and "(cached)" in out and "evaluating" not in out
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("first.json", "second.json"))
    assert second.pop("cached")["path"].startswith(str(tmp_path / "cache"))
    assert first == second
    with pytest.raises(AssertionError, match="loaded the model"):
        main([*argv, "--no-eval-cache"])
    assert np.isfinite(first["average"])


def test_a_cache_that_cannot_be_written_warns_and_keeps_the_result(folder, tmp_path):
    path, model = folder
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    compute = Counting(model)
    with pytest.warns(UserWarning, match="could not store the evaluation"):
        result = cached(path, compute, EvalCache(blocker / "cache"))
    assert compute.calls == 1 and len(result.predictions) == 6


def test_cli_refuses_an_unwritable_cache_before_evaluating(tmp_path, capsys):
    """A cache folder under a file is refused in one line before any model loads (it used to be a
    warning after the whole evaluation); a disk that fails later is still only a warning (above)."""
    from diet_explore.cli import main

    (tmp_path / "file").write_text("")
    rc = main(
        [
            "eval",
            "--model",
            "smollm2-135m",
            "--tasks",
            "rte",
            "--limit",
            "2",
            "--no-perplexity",
            "--eval-cache",
            str(tmp_path / "file" / "cache"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 2 and "evaluating" not in out
    assert f"error: --eval-cache {tmp_path / 'file' / 'cache'} cannot be created" in err
    assert "Traceback" not in err


def test_cli_names_the_variable_when_the_unusable_cache_folder_came_from_the_environment(tmp_path, monkeypatch, capsys):
    """DIET_EXPLORE_EVAL_CACHE=<a file> was reported as `--eval-cache <file> is not a folder`, a flag
    the user never gave."""
    from diet_explore.cli import main

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DIET_EXPLORE_EVAL_CACHE", str(tmp_path / "file"))
    argv = ["eval", "--model", "smollm2-135m", "--tasks", "rte", "--limit", "2", "--no-perplexity"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: DIET_EXPLORE_EVAL_CACHE {tmp_path / 'file'} is not a folder") and "--eval-cache" not in err
    assert main([*argv, "--eval-cache", str(tmp_path / "file")]) == 2  # the flag wins, and is named
    assert capsys.readouterr().err.startswith(f"error: --eval-cache {tmp_path / 'file'} is not a folder")
    monkeypatch.delenv("DIET_EXPLORE_EVAL_CACHE")
    monkeypatch.setenv("DIET_EXPLORE_HOME", str(tmp_path / "file"))  # the default folder, under a file
    with pytest.raises(Exception, match=r"^evaluation cache .* cannot be created"):
        EvalCache().check()


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_a_blank_eval_cache_or_home_variable_counts_as_unset(monkeypatch, tmp_path, blank):
    """DIET_EXPLORE_EVAL_CACHE=" " made a folder named " " in the working directory, and
    DIET_EXPLORE_HOME=" " looked for models in " /models"; the other folder variables took blank as unset."""
    from diet_explore.core.assets import data_home
    from diet_explore.evaluation.evalcache import default_root

    monkeypatch.setenv("DIET_EXPLORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIET_EXPLORE_EVAL_CACHE", blank)
    assert default_root() == tmp_path / "home" / "eval-cache"
    monkeypatch.setenv("DIET_EXPLORE_HOME", blank)
    assert str(data_home()).strip() == str(data_home()) and data_home().name in (".store", "diet-explore")
