"""GPU smoke test: tiny Llama and Gemma-2 models in bf16 through profile -> mask -> prune -> eval on
a CUDA device, then the same pruned model spread over two GPUs where there are two.

Checks itself and exits 1 naming any check that failed; on a machine without CUDA it prints
"no CUDA device: skipped" and exits 0. ``--device cpu`` runs the same pipeline on the CPU (what
CI can run; it checks the script, not the GPU path). Nothing is downloaded: the models are random,
built from configs, with the SmolLM2 tokenizer that ``make setup`` installs.

    .venv/bin/python benchmarks/gpu_smoke.py            # on a GPU machine; paste the output in the README
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("llama", "gemma2")
TASKS = "rte,arc_easy"
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        failures.append(what)


def model_folder(root: Path, family: str, tie: bool):
    """A tiny random ``family`` model in bf16 with the SmolLM2 tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer

    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.models.builtin import store_path

    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model(family, tie=tie)
    model.resize_token_embeddings(len(tok))
    folder = root / f"tiny-{family}"
    model.to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def logits(model, device: str):
    import torch

    ids = torch.tensor([[1, 50, 400, 1234, 9000, 17, 3]], device=device)
    with torch.no_grad():
        return model(ids).logits.float().cpu()


def run_family(family: str, device: str, root: Path) -> dict:
    import torch

    from diet_explore import cli
    from diet_explore.core.batching import device_token_budget
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_model
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.maskfile import mask_file_from_result, save_mask
    from diet_explore.models.loading import load_model
    from diet_explore.profiling.cache import load_cache
    from diet_explore.profiling.runner import ProfileConfig, profile
    from diet_explore.pruning.slicing import prune_model

    print(f"{family}:")
    times = {}
    folder = model_folder(root, family, tie=family == "gemma2")
    t0 = time.perf_counter()
    cache_dir = root / f"cache-{family}"
    profile(ProfileConfig(model=str(folder), tasks=TASKS, samples=6, device=device, dtype="bfloat16"), cache_dir)
    times["profile"] = time.perf_counter() - t0
    cache = load_cache(cache_dir)
    check(cache.hidden_size == 64, f"profiled {TASKS} on {device} in bf16 ({times['profile']:.1f} s)")
    mask = build_mask(cache, MaskConfig(method="diet", sparsity=0.25, exact=True, multiple_of=4))
    save_mask(mask_file_from_result(mask, cache), root / f"mask-{family}.json")
    check(mask.n_keep == 48, f"diet mask keeps {mask.n_keep} of 64 dims")
    t0 = time.perf_counter()
    out = root / f"pruned-{family}"
    rc = cli.main(["prune", "--model", str(folder), "--mask", str(root / f"mask-{family}.json"), "--out", str(out)])
    times["prune"] = time.perf_counter() - t0
    check(rc == 0, f"diet-explore prune exit code {rc} ({times['prune']:.1f} s)")
    saved = json.loads((out / "config.json").read_text()).get("dtype")
    check(saved == "bfloat16", f"pruned folder saved in {saved} (the checkpoint's bf16)")
    pruned, tok, _ = load_model(str(out), device, "bfloat16")
    param = next(pruned.parameters())
    check(param.device.type == torch.device(device).type, f"pruned model on {param.device}")
    dense, _, _ = load_model(str(folder), device, "bfloat16")
    in_memory = prune_model(dense, mask.keep)
    same = torch.equal(logits(pruned, device), logits(in_memory, device))
    check(same, "pruned folder's logits identical to slicing the loaded model on the device")
    budget = device_token_budget(pruned, 1024, 256)
    check(budget >= 1024 and (device == "cpu") == (budget == 1024), f"scoring budget {budget} tokens a pass")
    t0 = time.perf_counter()
    ecfg = EvalConfig(tasks="rte", limit=16, perplexity=True, ppl_windows=4, device=device, dtype="bfloat16")
    res = evaluate_model(pruned, tok, ecfg)
    times["eval"] = time.perf_counter() - t0
    acc = res.tasks["rte"].metrics()["main"]
    ok = res.perplexity is not None and res.perplexity == res.perplexity and res.perplexity > 1
    check(ok, f"eval rte x16: accuracy {acc:.3f}, wiki ppl {res.perplexity:.1f} ({times['eval']:.1f} s)")
    return {"folder": folder, "mask": mask, "result": res, "ecfg": ecfg, "tokenizer": tok, "times": times}


def spread_over_two(family: str, run: dict) -> None:
    """The dense model split over cuda:0 and cuda:1, pruned where each tensor lives, evaluated:
    the same per-example correctness as the single-GPU model."""
    import torch
    from transformers import AutoModelForCausalLM

    from diet_explore.evaluation.evaluate import evaluate_model
    from diet_explore.pruning.slicing import prune_model

    tied = family == "gemma2"
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": 1,
        "model.norm": 1,
        "lm_head": 0 if tied else 1,
    }
    dense = AutoModelForCausalLM.from_pretrained(run["folder"], dtype=torch.bfloat16, device_map=device_map)
    pruned = prune_model(dense, run["mask"].keep)
    devices = sorted({str(p.device) for p in pruned.parameters()})
    check(devices == ["cuda:0", "cuda:1"], f"{family}: pruned model spread over {devices}")
    res = evaluate_model(pruned, run["tokenizer"], run["ecfg"])
    # batches are sized from the fullest GPU's free memory, so their shapes (and bf16 rounding) may
    # differ from the one-GPU run: allow one near-tie to flip
    flips = sum(int(a) != int(b) for a, b in zip(res.tasks["rte"].correct, run["result"].tasks["rte"].correct))
    acc = res.tasks["rte"].metrics()["main"]
    check(flips <= 1, f"{family}: two-GPU pruned model answers as the one-GPU one ({flips} of 16 differ; accuracy {acc:.3f})")


def guarded(what: str, fn, *args):
    """``fn(*args)``; an exception is a failed check with its type and first line, and the script goes on."""
    try:
        return fn(*args)
    except Exception as exc:  # the smoke test reports every failure and carries on
        check(False, f"{what} raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script itself")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    from diet_explore.models.builtin import is_installed

    if not is_installed("smollm2-135m"):
        print("the SmolLM2 tokenizer is not installed (make setup): skipped")
        return 0
    if args.device.startswith("cuda"):
        card = torch.cuda.get_device_name(torch.device(args.device))
        print(f"device: {args.device} = {card}, {torch.cuda.device_count()} GPU(s), torch {torch.__version__}")
    else:
        print(f"device: cpu (checks the script; not the GPU path), torch {torch.__version__}")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        for family in FAMILIES:
            runs[family] = guarded(f"{family} on {args.device}", run_family, family, args.device, Path(tmp))
        if args.device.startswith("cuda") and torch.cuda.device_count() >= 2:
            for family in FAMILIES:
                if runs[family] is not None:
                    guarded(f"{family} on two GPUs", spread_over_two, family, runs[family])
        else:
            print("two-device spread: skipped (fewer than 2 GPUs)")
    print(f"{'FAILED: ' + '; '.join(failures) if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
