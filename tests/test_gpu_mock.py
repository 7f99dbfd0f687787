"""The GPU path without a GPU: ``torch.cuda`` and the free-memory probe are mocked, and what the
loader asks from_pretrained for (device, dtype, device_map, max_memory) is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diet_explore.core.errors import DietError
from diet_explore.models import loading
from diet_explore.models.adapters.tiny import save_tiny_folder

GiB = 2**30


@pytest.fixture
def gpus(monkeypatch):
    """A machine with GPUs as the test sets them: ``gpus.free[i]`` bytes free on cuda:i."""
    state = SimpleNamespace(free=[80 * GiB, 80 * GiB], capability=(9, 0), current=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(state.free))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state.current)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state.capability)

    def mem_get_info(device=None):
        d = torch.device(device if device is not None else "cuda")
        free = int(state.free[d.index if d.index is not None else state.current])
        return free, 2 * free

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(available=100 * GiB))
    return state


def test_auto_picks_cuda_and_cuda_n_must_exist(gpus):
    assert loading.pick_device("auto") == "cuda"
    assert loading.pick_device("cuda:1") == "cuda:1"
    with pytest.raises(DietError, match=r"--device cuda:2 asked for, but torch sees 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        loading.pick_device("cuda:2")
    with pytest.raises(DietError, match="unknown device 'cuda:x'"):
        loading.pick_device("cuda:x")


def test_no_cuda_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DietError, match="torch sees no CUDA device"):
        loading.pick_device("cuda:0")


def test_default_dtype_is_bf16_on_gpus_that_compute_in_it_else_fp32(gpus):
    assert loading.pick_dtype(None, "cuda") == torch.bfloat16
    assert loading.pick_dtype(None, "cpu") == torch.float32
    gpus.capability = (7, 0)  # V100 / T4: no native bf16, and fp16 overflows in Gemma
    assert loading.pick_dtype(None, "cuda:1") == torch.float32
    assert loading.pick_dtype("bfloat16", "cuda:1") == torch.bfloat16  # asked for: given


def test_weights_that_fit_go_whole_to_the_named_gpu(gpus):
    assert loading.placement("cuda:1", 10 * GiB) == {}
    assert loading.placement("cpu", 10**15) == {}


def test_cuda_n_too_small_stays_on_gpu_n_and_spills_to_ram_never_to_other_gpus(gpus):
    gpus.free = [80 * GiB, 10 * GiB, 80 * GiB]
    kw = loading.placement("cuda:1", 20 * GiB)
    assert kw["device_map"] == "auto"
    assert set(kw["max_memory"]) == {1, "cpu"}  # cuda:0 and cuda:2 are not named: accelerate cannot use them
    assert kw["max_memory"][1] == int(loading.GPU_WEIGHT_SHARE * 10 * GiB)


def test_plain_cuda_too_big_for_one_gpu_spreads_over_every_gpu(gpus):
    gpus.free = [20 * GiB, 20 * GiB, 20 * GiB]
    kw = loading.placement("cuda", 40 * GiB)
    assert kw["device_map"] == "auto" and set(kw["max_memory"]) == {0, 1, 2, "cpu"}
    assert kw["max_memory"][2] == int(loading.GPU_WEIGHT_SHARE * 20 * GiB)
    gpus.current = 1  # plain "cuda" is the current device: that is the one the weights must fit on
    gpus.free = [1 * GiB, 50 * GiB, 1 * GiB]
    assert loading.placement("cuda", 40 * GiB) == {}


def test_pre_check_counts_only_the_gpus_the_device_allows(gpus):
    gpus.free = [80 * GiB, 4 * GiB]
    loading.check_fits_in_memory(40 * GiB // 2, 2, "cuda", "m")  # 40 GiB: cuda:0 alone holds it
    with pytest.raises(
        DietError, match=r"needs about 200.0 GiB for its weights, but only 104.0 GiB is free on cuda:1 and in RAM"
    ):
        loading.check_fits_in_memory(100 * GiB, 2, "cuda:1", "m")


def test_load_model_hands_from_pretrained_the_placement_and_dtype(gpus, tmp_path, monkeypatch):
    """load_model on cuda:1 with too little free memory there: device_map with max_memory for
    cuda:1 and RAM only, bf16; a model that fits is moved to cuda:1 whole."""
    folder = save_tiny_folder(tmp_path / "tiny")
    seen = {}

    class Loaded:
        def eval(self):
            return self

        def to(self, device):
            seen["moved_to"] = device
            return self

    def fake_load(loc, kind, kwargs):
        seen.update(kwargs)
        return Loaded()

    monkeypatch.setattr(loading, "_load_weights", fake_load)
    gpus.free = [80 * GiB, 1000]  # cuda:1 has almost nothing free
    loading.load_model(str(folder), "cuda:1")
    assert seen["dtype"] == torch.bfloat16 and seen["device_map"] == "auto" and set(seen["max_memory"]) == {1, "cpu"}
    assert "moved_to" not in seen
    seen.clear()
    gpus.free = [80 * GiB, 80 * GiB]
    loading.load_model(str(folder), "cuda:1")
    assert "device_map" not in seen and seen["moved_to"] == "cuda:1"


def _on(device: str, config, element_size: int = 2):
    """A stand-in model whose weights sit on ``device`` (no real CUDA tensor can exist here)."""
    param = SimpleNamespace(device=torch.device(device), element_size=lambda: element_size)
    return SimpleNamespace(parameters=lambda: iter([param]), config=config)


def test_batch_budgets_come_from_the_gpus_free_memory_and_stay_fixed_on_cpu(gpus):
    from transformers import Gemma2Config

    from diet_explore.core.batching import GPU_ACTIVATION_SHARE, MAX_GPU_BATCH_TOKENS, device_token_budget

    cfg = Gemma2Config(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256)
    assert device_token_budget(_on("cpu", cfg, 4), 1024, 512) == 1024
    gpus.free = [80 * GiB, 4 * GiB]
    # by hand, bf16, 512 positions: 2 * (4*2304 + 3*9216 + 2*8*256 + 2*4*256) + 2*4*8*512 = 118784 bytes a token
    assert device_token_budget(_on("cuda:1", cfg), 1024, 512) == int(GPU_ACTIVATION_SHARE * 4 * GiB // 118784) == 18078
    assert device_token_budget(_on("cuda:0", cfg), 1024, 512) == MAX_GPU_BATCH_TOKENS  # 80 GiB free: capped
    gpus.free = [80 * GiB, 1000]
    assert device_token_budget(_on("cuda:1", cfg), 1024, 512) == 1024  # never below the configured budget


def test_the_scorer_takes_its_budget_from_the_device_rule(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from diet_explore.evaluation import scoring
    from diet_explore.models.adapters.tiny import tiny_model

    tok = AutoTokenizer.from_pretrained(save_tiny_folder(tmp_path / "tiny"))
    model = tiny_model("llama")
    assert scoring.LoglikelihoodScorer(model, tok, batch_tokens=1024).batch_tokens == 1024  # CPU: as configured
    seen = []
    monkeypatch.setattr(scoring, "device_token_budget", lambda m, budget, seq_len: seen.append((budget, seq_len)) or 9999)
    scorer = scoring.LoglikelihoodScorer(model, tok, batch_tokens=1024)
    assert scorer.batch_tokens == 9999 and seen == [(1024, scorer.max_length)]


SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.slow
def test_the_gpu_smoke_script_skips_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "no CUDA device: skipped", proc.stderr[-2000:]


@pytest.mark.slow
def test_the_gpu_smoke_script_passes_its_checks_on_the_cpu(monkeypatch, capsys):
    """The script's __main__ in this process, where torch is imported already (the test above runs
    it as a file)."""
    import runpy

    monkeypatch.setattr(sys, "argv", [str(SMOKE), "--device", "cpu"])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(SMOKE), run_name="__main__")
    out = capsys.readouterr().out
    assert ended.value.code == 0, out[-3000:]
    assert out.count("[ok]") == 16 and out.strip().endswith("all checks passed")
