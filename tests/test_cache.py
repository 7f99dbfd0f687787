import json

import numpy as np
import pytest

from diet_explore.core.errors import DietError
from diet_explore.profiling.cache import MANIFEST, check_resume, load_cache, read_manifest, save_cache
from diet_explore.profiling.synthetic import synthetic_cache


def test_round_trip_keeps_every_array_and_the_invariant(tmp_path):
    original = synthetic_cache(hidden_size=32, num_layers=3, tasks=("a", "b"), n_samples=5, seed=1)
    loaded = load_cache(save_cache(original, tmp_path / "c"))
    assert loaded.task_names == ["a", "b"] and loaded.hidden_size == 32 and loaded.num_layers == 3
    for t in ("a", "b"):
        for site in ("residual", "normed"):
            np.testing.assert_array_equal(loaded.layer_scores(t, site), original.layer_scores(t, site))
            np.testing.assert_array_equal(loaded.sample_scores(t, site), original.sample_scores(t, site))
        assert loaded.tasks[t].sample_ids == original.tasks[t].sample_ids
    np.testing.assert_allclose(loaded.layer_scores("a").mean(0), loaded.sample_scores("a").mean(0), rtol=1e-5)
    np.testing.assert_array_equal(loaded.baselines["weight_magnitude"], original.baselines["weight_magnitude"])
    assert not loaded.layer_scores("a").flags.writeable  # shared arrays cannot be mutated by accident


@pytest.fixture
def small_cache_dir(tmp_path):
    return save_cache(synthetic_cache(hidden_size=16, num_layers=2, tasks=("a", "b"), n_samples=4), tmp_path / "c")


def test_corrupt_task_file_is_named(small_cache_dir):
    path = small_cache_dir / "tasks" / "b.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DietError, match=r"b\.safetensors.*sha256"):
        load_cache(small_cache_dir)


def test_truncated_task_file_is_named(small_cache_dir):
    path = small_cache_dir / "tasks" / "a.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DietError, match=r"a\.safetensors"):
        load_cache(small_cache_dir)


def test_truncated_manifest_is_named(small_cache_dir):
    path = small_cache_dir / MANIFEST
    path.write_text(path.read_text()[:50])
    with pytest.raises(DietError, match="not valid JSON"):
        load_cache(small_cache_dir)


def test_wrong_schema_version_says_which(small_cache_dir):
    path = small_cache_dir / MANIFEST
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DietError, match="schema_version 99"):
        load_cache(small_cache_dir)


def test_manifest_that_disagrees_with_arrays_is_refused(small_cache_dir):
    path = small_cache_dir / MANIFEST
    data = json.loads(path.read_text())
    data["model"]["hidden_size"] = 17
    path.write_text(json.dumps(data))
    with pytest.raises(DietError, match=r"expected \(2, 17\)"):
        load_cache(small_cache_dir)


def test_not_a_cache_and_missing_folder(tmp_path):
    with pytest.raises(DietError, match="does not exist"):
        load_cache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DietError, match="manifest.json is missing"):
        load_cache(tmp_path / "empty")


def test_unknown_task_or_site_lists_the_valid_ones(small_cache_dir):
    cache = load_cache(small_cache_dir)
    with pytest.raises(DietError, match="'zzz'") as err:
        cache.layer_scores("zzz")
    assert "a, b" in err.value.hint
    with pytest.raises(DietError, match="site 'attn'"):
        cache.layer_scores("a", "attn")


def test_a_folder_where_the_manifest_or_a_task_file_should_be_is_named(small_cache_dir, tmp_path):
    (tmp_path / "m" / MANIFEST).mkdir(parents=True)
    with pytest.raises(DietError, match=r"manifest\.json is not a file"):
        load_cache(tmp_path / "m")
    task = small_cache_dir / "tasks" / "b.safetensors"
    task.unlink()
    task.mkdir()
    with pytest.raises(DietError, match=r"b\.safetensors is listed in the manifest but is not a file"):
        load_cache(small_cache_dir)


@pytest.mark.parametrize("field, value", [("sample_ids", [0, 1, 2]), ("token_counts", [5, 5, 5, 5, 5]), ("n_samples", 3)])
def test_sample_ids_token_counts_and_n_samples_must_agree(small_cache_dir, field, value):
    path = small_cache_dir / MANIFEST
    data = json.loads(path.read_text())
    data["tasks"]["a"][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(DietError, match=r"task 'a' lists \d+ sample_ids and \d+ token_counts for n_samples \d+"):
        read_manifest(small_cache_dir)


def test_resume_check_compares_sites_as_a_set_and_the_device_by_type(small_cache_dir):
    path = small_cache_dir / MANIFEST
    cuda = dict(read_manifest(small_cache_dir), environment={"device": "cuda:0", "dtype": "bfloat16"})
    path.write_text(json.dumps(cuda))
    # cuda:1 runs the same kernels as cuda:0; the order of the sites changes nothing
    header = {**cuda, "sites": list(reversed(cuda["sites"])), "environment": {"device": "cuda:1", "dtype": "bfloat16"}}
    assert check_resume(small_cache_dir, header)["sites"] == cuda["sites"]
    with pytest.raises(DietError, match=r"different 'device' \('cuda'; this run: 'cpu'\)") as err:
        check_resume(small_cache_dir, {**header, "environment": {"device": "cpu", "dtype": "bfloat16"}})
    assert "--device cuda" in err.value.hint
    with pytest.raises(DietError, match="different 'dtype'") as err:
        check_resume(small_cache_dir, {**header, "environment": {"device": "cuda", "dtype": "float32"}})
    assert "--dtype bfloat16" in err.value.hint
    with pytest.raises(DietError, match="different 'sites'"):
        check_resume(small_cache_dir, {**header, "sites": ["residual"]})


def _edit_manifest(root, change) -> None:
    path = root / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, match",
    [
        # a hand-edited file entry must not read a file outside the cache (it read /etc/passwd up to the sha check)
        (lambda m: m["tasks"]["a"].update(file="/etc/passwd"), "task 'a': file '/etc/passwd' is not a file name inside"),
        (lambda m: m["tasks"]["a"].update(file="../a.safetensors"), "task 'a': file '../a.safetensors' is not a file name"),
        (lambda m: m["tasks"]["a"].update(file="x" * 300), "task 'a': file 'xxx.* is not a file name inside"),  # was OSError
        (lambda m: m["baselines"].update(file="/etc/passwd"), "baselines file '/etc/passwd' is not a file name inside"),
        (lambda m: m.update(sites=[]), "'sites' is empty"),  # every command then offered "choose one of " (nothing)
        # a name that is no task name broke agreement's CSV rows ("bad,na=me") and the rebuild command
        (lambda m: m["tasks"].update({"bad,na=me": m["tasks"].pop("a")}), "task name 'bad,na=me' is not a task name"),
        (lambda m: m["tasks"].update({"all": m["tasks"].pop("a")}), "task name 'all' is not a task name"),
        # the generic set as a voting task, or an unknown kind that silently dropped it
        (lambda m: m["tasks"].update({"wikitext": {**m["tasks"].pop("a"), "kind": "task"}}), "task 'wikitext' has kind 'task'"),
        (lambda m: m["tasks"]["a"].update(kind=["x"]), r"task 'a' has kind \"\['x'\]\""),
        (lambda m: m["tasks"]["a"].update(n_samples=0, sample_ids=[], token_counts=[]), "task 'a' has n_samples 0"),
    ],
)
def test_a_manifest_that_points_outside_the_cache_or_lists_no_site_is_refused(small_cache_dir, change, match):
    _edit_manifest(small_cache_dir, change)
    with pytest.raises(DietError, match=match):
        load_cache(small_cache_dir)


def test_a_contexts_radius_too_large_to_allocate_is_refused(tmp_path):
    from diet_explore.profiling.cache import MAX_CONTEXT_RADIUS

    root = save_cache(synthetic_cache(hidden_size=16, num_layers=2, tasks=("a",), n_samples=4), tmp_path / "c")
    ctx = {"file": "tasks/a.contexts.safetensors", "sha256": "0" * 64, "k": 4}  # checked before any file is read
    _edit_manifest(root, lambda m: m["tasks"]["a"].update(contexts={**ctx, "radius": MAX_CONTEXT_RADIUS}))
    with pytest.raises(DietError, match="a.contexts.safetensors is listed in the manifest but missing"):
        load_cache(root)  # the largest radius passes the check
    _edit_manifest(root, lambda m: m["tasks"]["a"].update(contexts={**ctx, "radius": 10**30}))  # dim crashed allocating it
    with pytest.raises(DietError, match=f"contexts radius 10+ is over {MAX_CONTEXT_RADIUS} tokens"):
        load_cache(root)


def test_the_cache_writer_refuses_a_task_name_that_is_not_a_file_name(tmp_path):
    cache = synthetic_cache(hidden_size=16, num_layers=2, tasks=("a",), n_samples=4)
    cache.tasks["../escape"] = cache.tasks.pop("a")
    cache.manifest["tasks"]["../escape"] = cache.manifest["tasks"].pop("a")
    with pytest.raises(DietError, match="cannot name a cache file"):
        save_cache(cache, tmp_path / "c")
    assert not (tmp_path / "escape.safetensors").exists()
