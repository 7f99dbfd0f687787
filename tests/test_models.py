import json

import pytest

from diet_explore.errors import DietError
from diet_explore.models import BUILTIN_MODELS, check_fits_in_memory, install_command, is_installed, load_model


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

    from diet_explore import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(DietError, match=r"'pruned' is not a built-in model, not a folder here, and the Hugging Face hub cannot be reached") as err:
            models.load_config("pruned")
    finally:
        models.hub_reachable.cache_clear()
    assert "smollm2-135m" in err.value.hint
    assert time.perf_counter() - start < 5  # no retries with back-off


def test_eval_checks_every_model_before_evaluating_any(tmp_path, monkeypatch, capsys):
    from diet_explore import models
    from diet_explore.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    monkeypatch.setattr("diet_explore.evaluate.evaluate_model", lambda *a, **k: pytest.fail("evaluated before the check"))
    try:
        rc = main(["eval", "--model", "pruned", "--compare-to", "smollm2-135m", "--tasks", "rte", "--limit", "2"])
    finally:
        models.hub_reachable.cache_clear()
    assert rc == 2
    err = capsys.readouterr().err
    assert "'pruned' is not a built-in model" in err and "evaluating" not in err
