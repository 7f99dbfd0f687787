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
