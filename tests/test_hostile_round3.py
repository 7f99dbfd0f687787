"""Hostile inputs from the third hardening run (#29): nothing diet-explore did not write is replaced,
no hang or traceback from a link or a special file; each refusal is one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from diet_explore.cli import main
from diet_explore.core import atomic
from diet_explore.profiling.cache import BASELINES_FILE, MANIFEST, check_resume, load_cache, save_cache
from diet_explore.profiling.synthetic import synthetic_cache


def _run(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("error: ") and "Traceback" not in err
    return err


# ------------------------------------------------------------------ eval --json / --predictions
@pytest.mark.parametrize("flag", ["--json", "--predictions"])
def test_eval_outputs_never_replace_a_file_diet_explore_did_not_write(synthetic_cache_dir, tmp_path, capsys, flag):
    """--json cache_copy/manifest.json exited 0 and the copy no longer loaded; the same onto another
    model's config.json or any text file. Refused before a model loads, the file untouched."""
    import shutil

    copy = tmp_path / "cache_copy"
    shutil.copytree(synthetic_cache_dir, copy)
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    for target in (copy / MANIFEST, text):
        before = target.read_bytes()
        err = _run(["eval", "--model", str(tmp_path / "no-model"), flag, str(target)], capsys)
        assert flag in err and "diet-explore did not write" in err, err
        assert target.read_bytes() == before
    load_cache(copy)


@pytest.mark.parametrize(("flag", "kind"), [("--json", "diet-explore-eval"), ("--predictions", "diet-explore-predictions")])
def test_eval_may_replace_its_own_output_or_an_empty_file(tmp_path, capsys, flag, kind):
    """What eval wrote (its marker leads the file) and an empty file pass the output check: the run
    goes on to the model, which is what fails here."""
    ours = tmp_path / "ours"
    ours.write_text(json.dumps({"kind": kind, "task": "rte"}) + "\n")
    empty = tmp_path / "empty"
    empty.touch()
    for target in (ours, empty):
        err = _run(["eval", "--model", str(tmp_path / "no-model"), flag, str(target)], capsys)
        assert flag not in err and "no-model" in err, err


def test_eval_writes_its_marker_and_a_rerun_replaces_its_own_files(tiny_cache_root, tmp_path, capsys):
    """The marker is what eval writes: a second run into the same --json/--predictions is allowed."""
    dense = tiny_cache_root.parent / "models" / "tiny-llama"
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    argv = ["eval", "--model", str(dense), "--tasks", "rte", "--limit", "2", "--no-perplexity", "--device", "cpu"]
    argv += ["--json", str(out), "--predictions", str(preds)]
    for _ in range(2):
        assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["kind"] == "diet-explore-eval"
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(records) == 2 and all(r["kind"] == "diet-explore-predictions" and r["task"] == "rte" for r in records)


# ------------------------------------------------------------------ profile --out without a manifest
def test_profile_out_refuses_a_non_empty_folder_without_a_manifest(tmp_path):
    """profile --out into someone's folder overwrote baselines.safetensors / tasks/rte.safetensors and
    turned the folder into a cache. The resume check (before the model loads, and in CacheWriter)
    refuses it; an empty folder is still fine."""
    from diet_explore.core.errors import DietError

    folder = tmp_path / "mine"
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks" / "rte.safetensors").write_bytes(b"my own file")
    (folder / BASELINES_FILE).write_bytes(b"mine too")
    with pytest.raises(DietError, match="has no manifest.json") as exc:
        check_resume(folder, {})
    assert "tasks" in str(exc.value) and "empty folder" in exc.value.hint
    with pytest.raises(DietError, match="has no manifest.json"):
        save_cache(synthetic_cache(hidden_size=8, num_layers=2, tasks=("rte",), n_samples=2), folder)
    assert (folder / "tasks" / "rte.safetensors").read_bytes() == b"my own file"
    assert (folder / BASELINES_FILE).read_bytes() == b"mine too" and not (folder / MANIFEST).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_resume(empty, {}) is None


def test_a_new_cache_has_its_manifest_before_any_data_file(tmp_path, monkeypatch):
    """A profile killed during its first task left tasks/<x>.safetensors without a manifest, a folder
    the check above would refuse to resume: the manifest (the cache's marker) is written first."""
    from diet_explore.profiling import cache as cache_mod

    seen = []
    real = atomic.write_bytes

    def spy(path, data):
        seen.append((str(path), (tmp_path / "c" / MANIFEST).is_file()))
        return real(path, data)

    monkeypatch.setattr(cache_mod.atomic, "write_bytes", spy)
    save_cache(synthetic_cache(hidden_size=8, num_layers=2, tasks=("rte",), n_samples=2), tmp_path / "c")
    data_files = [(p, had) for p, had in seen if p.endswith(".safetensors")]
    assert data_files and all(had for _, had in data_files), data_files


# ------------------------------------------------------------------ app ?cache=: NUL, FIFO, /dev/zero
def _finishes(fn, seconds: float = 20.0):
    """``fn()``'s value, or a failure when it has not returned within ``seconds`` (a read blocked on a FIFO)."""
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return box.get("value")


def test_manifest_sha_of_a_fifo_a_device_link_or_a_nul_byte_returns_at_once(tmp_path):
    """The page hashed manifest.json before anything checked what it was: a FIFO hung the page, a link to
    /dev/zero read until memory ran out, a NUL byte in ?cache= raised ValueError. Now each returns a key
    at once and load_cache says what is wrong."""
    import os

    from diet_explore_app import loaders

    fifo_cache = tmp_path / "fifo-cache"
    fifo_cache.mkdir()
    os.mkfifo(fifo_cache / MANIFEST)
    zero_cache = tmp_path / "zero-cache"
    zero_cache.mkdir()
    (zero_cache / MANIFEST).symlink_to("/dev/zero")
    try:
        for folder in (fifo_cache, zero_cache, f"{tmp_path}/x\0y"):
            assert isinstance(_finishes(lambda folder=folder: loaders.manifest_sha(str(folder))), str)
    finally:  # a reader blocked on the FIFO (before the fix) is let go
        fd = os.open(fifo_cache / MANIFEST, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo_cache / MANIFEST) else None
        if fd is not None:
            os.close(fd)


def _has_reader(fifo) -> bool:
    import os

    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def test_a_cache_link_with_a_nul_byte_or_a_fifo_manifest_is_an_error_on_the_page(app_env, tmp_path):
    import os

    from app_helpers import APP, TIMEOUT
    from streamlit.testing.v1 import AppTest

    fifo_cache = tmp_path / "fifo-cache"
    fifo_cache.mkdir()
    os.mkfifo(fifo_cache / MANIFEST)
    for value, message in ((f"{tmp_path}/x\0y", "NUL"), (str(fifo_cache), "is not a file")):
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params["cache"] = value
        _finishes(at.run, 60)
        assert not at.exception, at.exception
        assert at.error and message in at.error[0].value, [e.value for e in at.error]


def test_read_manifest_bounds_what_it_reads(tmp_path, monkeypatch):
    """A manifest.json of gigabytes (a link to a huge file) is refused by its size, not read whole."""
    from diet_explore.core.errors import DietError
    from diet_explore.profiling import cache as cache_mod

    folder = tmp_path / "big"
    folder.mkdir()
    (folder / MANIFEST).write_text(" " * 2048 + "{}")
    monkeypatch.setattr(cache_mod, "MANIFEST_MAX_BYTES", 1024)
    with pytest.raises(DietError, match="over 1024 bytes"):
        cache_mod.read_manifest(folder)


# ------------------------------------------------------------------ task templates
def _registry_with(tmp_path, text: str):
    from diet_explore.tasks.registry import load_registry

    entry = {"dataset": {"path": str(tmp_path / "data")}, "text": text, "choices": ["no", "yes"], "gold": {"field": "y"}}
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"mine": entry}))
    return load_registry([path])


@pytest.mark.parametrize(
    "text, match",
    [
        ("{s1:>999999999}", "width 999999999"),  # `tasks` took 1.2 GB, profile died in a tokenizers panic
        ("{s1:{s2}}", "a nested field"),
        ("{s1.__class__.__mro__}", "plain field names"),  # attribute traversal
        ("{s1[0]}", "plain field names"),
    ],
)
def test_a_template_field_is_a_plain_name_with_a_bounded_format(tmp_path, text, match):
    from diet_explore.core.errors import DietError

    with pytest.raises(DietError, match=match) as exc:
        _registry_with(tmp_path, text)
    assert "task 'mine'" in str(exc.value) and exc.value.hint


def test_a_plain_template_with_a_small_format_is_accepted(tmp_path):
    assert _registry_with(tmp_path, "{s1:>8} {s2!r} {y:03d}")["mine"].text == "{s1:>8} {s2!r} {y:03d}"


def test_the_rendered_text_is_bounded(tmp_path):
    """A document whose filled-in template is larger than any prompt fails with one line naming it."""
    from diet_explore.core.errors import DietError
    from diet_explore.tasks import registry

    spec = _registry_with(tmp_path, "{s1}")["mine"]
    with pytest.raises(DietError, match=r"doc 3: the filled-in text is 2000001 characters"):
        registry._format_text(spec, {"s1": "x" * 2_000_001}, 3)


# ------------------------------------------------------------------ cache manifests and scores
def _small_cache(tmp_path, name="c", **arrays):
    cache = synthetic_cache(hidden_size=8, num_layers=2, tasks=("rte", "boolq"), n_samples=3, seed=4)
    for task, fill in arrays.items():
        scores = cache.tasks[task]
        for site in scores.layer:
            scores.layer[site][...] = fill(scores.layer[site])
            scores.sample[site][...] = fill(scores.sample[site])
    return save_cache(cache, tmp_path / name)


def test_a_manifest_that_names_a_task_twice_is_refused(tmp_path, capsys):
    """A second "rte" changed the mask from 467 to 468 kept dims: the manifest is read with the
    unique-keys reader that task files use."""
    root = _small_cache(tmp_path)
    text = (root / MANIFEST).read_text()
    doc = json.loads(text)
    rte = json.dumps(doc["tasks"]["rte"])
    (root / MANIFEST).write_text(text.replace('"tasks": {', f'"tasks": {{"rte": {rte}, ', 1))
    err = _run(["mask", "--cache", str(root), "--sparsity", "0.5", "--out", str(tmp_path / "m.json")], capsys)
    assert "names 'rte' twice" in err and not (tmp_path / "m.json").exists()
    assert "not valid JSON" not in err and "char 0" not in err  # valid JSON with a repeated key, said so


def test_two_tasks_on_one_file_or_a_repeated_sample_id_are_refused(tmp_path):
    from diet_explore.core.errors import DietError

    root = _small_cache(tmp_path)
    doc = json.loads((root / MANIFEST).read_text())
    doc["tasks"]["boolq"] = {
        **doc["tasks"]["boolq"],
        "file": doc["tasks"]["rte"]["file"],
        "sha256": doc["tasks"]["rte"]["sha256"],
    }
    (root / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DietError, match="tasks 'rte' and 'boolq' both list the file tasks/rte.safetensors"):
        load_cache(root)
    doc = json.loads((_small_cache(tmp_path, "d") / MANIFEST).read_text())
    doc["tasks"]["rte"]["sample_ids"][1] = doc["tasks"]["rte"]["sample_ids"][0]
    (tmp_path / "d" / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DietError, match=r"task 'rte' lists sample id \d+ twice"):
        load_cache(tmp_path / "d")


@pytest.mark.parametrize(
    "fill, match",
    [(lambda a: -a, "negative"), (lambda a: 0 * a, "all zero")],
)
def test_negative_or_all_zero_scores_are_refused_naming_the_task(tmp_path, capsys, fill, match):
    """Mean |activation| is never negative, and a task of zeros has no ranking: both changed the mask
    silently. The cache is refused, naming the task and the array."""
    root = _small_cache(tmp_path, boolq=fill)
    err = _run(["mask", "--cache", str(root), "--sparsity", "0.5", "--out", str(tmp_path / "m.json")], capsys)
    assert "boolq" in err and match in err and "residual.layer" in err, err


# ------------------------------------------------------------------ model folders
class _Payload:
    """Unpickling this creates the file ``target``: what a malicious pytorch_model.bin can do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_checkpoint_is_refused_in_one_line_without_reading_it(tmp_path, capsys):
    """pytorch_model.bin: no code ran, but the user got a traceback advising weights_only=False. Only
    safetensors are loaded; a folder of pickle weights is one line before anything is read."""
    import pickle
    import shutil

    from diet_explore.models.adapters.tiny import save_tiny_folder

    folder = save_tiny_folder(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    ran = tmp_path / "code-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(ran)))
    capsys.readouterr()  # the folder's save progress
    err = _run(["eval", "--model", str(folder), "--tasks", "rte", "--limit", "1", "--no-perplexity"], capsys)
    assert "pytorch_model.bin" in err and "safetensors" in err and "weights_only" not in err, err
    assert not ran.exists()
    shutil.rmtree(folder)


def test_an_empty_model_folder_says_it_is_empty(tmp_path, capsys):
    """It was 'no model_type key in its config.json' for a folder with no config.json at all."""
    (tmp_path / "empty-model").mkdir()
    err = _run(["eval", "--model", str(tmp_path / "empty-model"), "--tasks", "rte"], capsys)
    assert "is empty" in err and "model_type" not in err, err


# ------------------------------------------------------------------ lock files
def test_a_lock_leaves_no_file_beside_its_path_done_refused_or_nested(tmp_path):
    """profile left a .<out>.lock beside --out, even after a refusal: the lock file is removed by its
    outermost holder while it still holds it (a waiter that locked the removed file retries)."""
    from diet_explore.core.errors import DietError

    lock = tmp_path / ".out.lock"
    with atomic.locked(tmp_path / "out"):
        assert lock.exists()
        with atomic.locked(tmp_path / "out"):
            pass
        assert lock.exists()  # still held by the outer hold
    assert not lock.exists()
    with pytest.raises(DietError), atomic.locked(tmp_path / "out"):
        raise DietError("refused inside the lock")
    assert not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_refused_profile_leaves_no_lock_file(synthetic_cache_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(synthetic_cache_dir, out)
    err = _run(["profile", "--model", "smollm2-135m", "--tasks", "rte", "--samples", "3", "--out", str(out)], capsys)
    assert "refusing to mix two profiles" in err or "was made with a different" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


# ------------------------------------------------------------------ Ctrl-C during imports
_INTERRUPT_IMPORT = """
import sys

class Interrupt:  # Ctrl-C while {module} is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "{module}":
            raise KeyboardInterrupt

sys.meta_path.insert(0, Interrupt())
sys.argv = ["diet-explore", "models"]
from diet_explore.__main__ import entry
sys.exit(entry())
"""


@pytest.mark.parametrize("module", ["diet_explore.cli", "diet_explore.cli.models"])
def test_ctrl_c_during_imports_is_one_line_and_exit_130(module):
    """The console script imported the whole CLI before main() could catch anything: a Ctrl-C there
    (torch and transformers take seconds) printed a KeyboardInterrupt traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_IMPORT.format(module=module)], capture_output=True, text=True)
    assert proc.returncode == 130 and proc.stderr == "interrupted\n", (proc.returncode, proc.stderr[-800:])


def test_a_foreign_manifest_is_not_called_a_damaged_profile(tmp_path, capsys):
    """An HTML5 'CACHE MANIFEST' named manifest.json was hinted 're-run the profile'; a truncated one of
    ours still is (it names the cache kind near its start)."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST).write_text("CACHE MANIFEST\nindex.html\n")
    err = _run(["mask", "--cache", str(foreign), "--out", str(tmp_path / "m.json")], capsys)
    assert "not a diet-explore score cache manifest" in err and "re-run" not in err, err
    ours = _small_cache(tmp_path)
    (ours / MANIFEST).write_text((ours / MANIFEST).read_text()[:200])
    err = _run(["mask", "--cache", str(ours), "--out", str(tmp_path / "m.json")], capsys)
    assert "is not valid JSON" in err and "re-run the profile" in err, err


@pytest.mark.parametrize("value", ["1", "15"])
def test_profile_max_length_too_short_to_hold_a_prompt_is_refused(tmp_path, capsys, value):
    """--max-length 1 kept the last token of each sample (the answer's end) and profiled that, silently."""
    err = _run(["profile", "--tasks", "rte", "--samples", "2", "--max-length", value, "--out", str(tmp_path / "c")], capsys)
    assert f"--max-length {value} keeps only the last" in err and "at least 16" in err, err
    assert not (tmp_path / "c").exists()


def test_an_eval_cache_entry_that_is_a_folder_is_said_before_and_the_result_kept(tmp_path):
    """The entry's path was a folder: the evaluation ran to the end, then the write raised and its
    results were lost. Now a warning comes before the run and the result is returned."""
    from types import SimpleNamespace

    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_cached

    cache = EvalCache(tmp_path / "ec")
    cache.key_for = lambda *a, **k: "k"
    cache.path("k").mkdir(parents=True)
    order = []
    result = SimpleNamespace(model_name="m", scores=[], perplexity=None, wall_time_s=1.0)

    def compute():
        order.append("computed")
        return result, {"name": "m"}

    with pytest.warns(UserWarning, match="is not a file, so this evaluation will not be stored") as seen:
        got = evaluate_cached("m", EvalConfig(tasks=["rte"], limit=1), {}, cache, "cpu", "float32", compute)
    assert got is result and order == ["computed"] and len(seen) == 1
    assert cache.path("k").is_dir()


# ------------------------------------------------------------------ Streamlit's duplicate-value log
def test_no_widget_is_given_a_value_and_a_session_state_value(app_env, monkeypatch):
    """Streamlit logged 'created with a default value but also had its value set via the Session
    State API' for inspect_dim (a dim= link) and export_name (the name that follows the mask)."""
    from app_helpers import APP, TIMEOUT, run_page
    from streamlit.elements.lib import policies
    from streamlit.testing.v1 import AppTest

    logged = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *args, **kw: logged.append(msg % args))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["dim"] = "7"
    at.run()
    for page in ("dimension", "export", "mask_builder", "export"):
        run_page(at, page)
        assert not logged, (page, logged)


def test_a_task_with_every_example_used_for_calibration_says_so(tmp_path):
    """A calibration-only pruned folder (its mask recorded every example as calibration) was hinted
    'use --limit 0 or fewer'."""
    from types import SimpleNamespace

    from diet_explore.core.errors import DietError
    from diet_explore.tasks.data import evaluation_ids

    spec = SimpleNamespace(name="rte")
    with pytest.raises(DietError, match="all 10 of its examples are calibration examples") as exc:
        evaluation_ids(spec, 5, size=10, n_calibration=4, exclude=set(range(10)))
    assert "--limit 0" not in str(exc.value) and "--tasks" in exc.value.hint
    assert len(evaluation_ids(spec, 2, size=10, n_calibration=4)) == 2


# ------------------------------------------------------------------ app link values
def test_link_values_are_shortened_and_warnings_say_what_is_allowed():
    from diet_explore_app import settings as S

    _, _, warned = S.decode_query({"weights": "boolq:1e308"})
    assert len(warned) == 1 and "a weight is a number from 0 to" in warned[0], warned  # not the value again
    long = "boolq:" + "1" * 5000
    _, _, warned = S.decode_query({"weights": long})
    assert warned and all(len(w) < 300 for w in warned), [len(w) for w in warned]
    assert all("…" in w and "(5006 characters)" in w for w in warned), warned  # a cut value says it is cut
    _, warned = S.decode_dim({"dim": "7" * 5000})
    assert warned and len(warned[0]) < 300 and "…" in warned[0] and "(5000 characters)" in warned[0]


def test_a_link_naming_an_unknown_task_or_a_multiple_over_the_width_warns(app_env, alpha):
    """single_task=nosuch fell back silently; multiple_of=4096 reached Export as a CLI-worded error."""
    from app_helpers import APP, TIMEOUT, run_page
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update({"method": "single-task", "single_task": "nosuch", "multiple_of": "4096"})
    at.run()
    shown = " ".join(w.value for w in at.warning)
    assert "nosuch" in shown and "multiple_of=4096" in shown, shown
    run_page(at, "export")
    assert not any("multiple" in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state["_keep_multiple"] == 1


# ------------------------------------------------------------------ prune inputs
def test_prune_into_its_own_model_folder_is_refused(tmp_path, capsys):
    """prune --model P --out P --overwrite replaced the model it was reading (a pruned folder) with its
    own output. Refused before anything is read."""
    from diet_explore.pruning.saving import PRUNE_INFO_FILE

    folder = tmp_path / "pruned"
    folder.mkdir()
    for name in ("config.json", PRUNE_INFO_FILE, "model.safetensors"):
        (folder / name).write_text("{}")
    mask = tmp_path / "m.json"
    mask.write_text("{}")
    before = sorted(p.name for p in folder.iterdir())
    err = _run(["prune", "--model", str(folder), "--mask", str(mask), "--out", str(folder), "--overwrite"], capsys)
    assert "--out" in err and "--model" in err and "its own input" in err, err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_mask_file_larger_than_any_mask_is_refused_not_copied(tmp_path, capsys):
    """A 200 MB mask was read whole and copied into the pruned folder."""
    from diet_explore.core.errors import DietError
    from diet_explore.masking import maskfile

    big = tmp_path / "big.json"
    big.write_text('{"kind": "diet-explore-mask", "pad": "' + "x" * 2048 + '"}')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maskfile, "MASK_MAX_BYTES", 1024)
        with pytest.raises(DietError, match="over 1024 bytes"):
            maskfile.load_mask(big)


@pytest.mark.parametrize("suffix", [".json", ".npy"])
def test_export_never_offers_to_replace_a_file_diet_explore_did_not_write(app, app_env, suffix):
    """Export's 'Save mask' replaced a foreign .json/.npy after a checkbox, where `mask --out` refuses."""
    from app_helpers import run_page

    at = app.run()
    run_page(at, "export")
    name = at.text_input(key="export_name").value
    app_env["export"].mkdir(parents=True, exist_ok=True)
    foreign = app_env["export"] / f"{name}{suffix}"
    foreign.write_text("my own notes\n")
    at.run()
    save = at.button(key="export_save")
    assert save.disabled, "the save button is live over a foreign file"
    assert not [c for c in at.checkbox if c.key == "export_replace_mask"]  # nothing to tick to replace it
    assert any("did not write" in w.value for w in at.warning), [w.value for w in at.warning]
    assert foreign.read_text() == "my own notes\n"


def test_compare_slicegpt_on_a_family_it_cannot_rotate_is_refused_before_any_evaluation(tmp_path, monkeypatch):
    """compare --methods diet,slicegpt on Gemma evaluated the dense model and DIET, then refused SliceGPT."""
    from test_scoring import WordTokenizer

    import diet_explore.experiments.sweep as sweep
    from diet_explore.core.errors import DietError
    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.models.adapters.tiny import tiny_model

    model = tiny_model("gemma2")
    d = int(model.config.hidden_size)
    cache = save_cache(synthetic_cache(hidden_size=d, num_layers=2, tasks=("rte",), n_samples=4, seed=1), tmp_path / "c")
    config = CompareConfig(
        model="tiny-gemma2", cache=str(cache), sparsities=[0.25], methods=["diet", "slicegpt"], tasks="rte", limit=2
    )
    monkeypatch.setattr(sweep, "evaluate_model", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    monkeypatch.setattr(sweep, "evaluate_cached", lambda *a, **k: pytest.fail("evaluated before the refusal"))
    with pytest.raises(DietError, match="SliceGPT is not available for this model"):
        run_compare(config, tmp_path / "out", model, WordTokenizer(), RunStore(tmp_path / "runs"), log=lambda m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("auto_map", [False, True])
def test_a_model_that_needs_its_own_code_is_refused_saying_trust_remote_code_stays_off(tmp_path, capsys, auto_map):
    """An architecture transformers does not ship, with or without an ``auto_map`` pointing at the
    checkpoint's own code: one line that says custom code is never run, not "fix that value"."""
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {"model_type": "mystery2", "hidden_size": 64, "num_hidden_layers": 2}
    if auto_map:
        config["auto_map"] = {"AutoConfig": "configuration_mystery.MysteryConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    err = _run(["eval", "--model", str(folder), "--tasks", "rte", "--limit", "1", "--no-perplexity"], capsys)
    assert "trust_remote_code stays off" in err and "fix that value" not in err
    assert "Traceback" not in err
