"""Peak memory of `diet-explore prune` against the model's weight bytes; target: ratio <= 1.15.

Builds a random-init model of Gemma-2 2B's width (hidden 2304, 256k vocabulary, 8 heads of 256,
MLP 9216) with fewer blocks (default 8) from a config (nothing downloaded), saves it as safetensors
in a temporary folder with a word-level tokenizer, writes a random mask keeping 90% of the hidden
dims (a multiple of the 8 heads), runs `diet-explore prune` in a subprocess and reads that
process's peak resident memory (``os.wait4``). Then (unless ``--no-check``) it checks that the
pruned folder's logits are identical to today's in-memory slicing (``prune_model``) of the loaded
dense model, in a second subprocess.

    .venv/bin/python benchmarks/bench_prune_memory.py [--layers 8] [--dtype float32] [--keep-files]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.15  # peak RSS of `prune` / weight bytes
GEMMA2_2B = dict(
    hidden_size=2304,
    intermediate_size=9216,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    vocab_size=256000,
    max_position_embeddings=8192,
    sliding_window=4096,
    query_pre_attn_scalar=256,
    final_logit_softcapping=30.0,
    attn_logit_softcapping=50.0,
    tie_word_embeddings=True,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)


def build(folder: Path, layers: int, dtype: str) -> int:
    """Save the random model and a tokenizer into ``folder``; returns the weight bytes."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from diet_explore.models.adapters.tiny import save_tiny_folder

    save_tiny_folder(folder, "gemma2")  # the tokenizer (and a tiny model, replaced below)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    config = Gemma2Config(num_hidden_layers=layers, **GEMMA2_2B)
    with torch.device("meta"):
        model = Gemma2ForCausalLM(config)
    model = model.to(getattr(torch, dtype)).to_empty(device="cpu")  # buffers are recomputed on reload
    model.tie_weights()  # to_empty made the tied head a parameter of its own
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms scale by (1 + w) in Gemma
            if "norm" in name:
                p.uniform_(-0.2, 0.2, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(folder, max_shard_size="2GB")
    return sum(p.numel() * p.element_size() for p in model.parameters())  # the tied head once


def write_mask(path: Path, hidden: int = 2304, heads: int = 8, keep_share: float = 0.9) -> int:
    import numpy as np

    from diet_explore.masking.maskfile import MaskFile, save_mask

    n_keep = int(hidden * keep_share) // heads * heads
    keep = np.sort(np.random.default_rng(0).choice(hidden, n_keep, replace=False))
    save_mask(
        MaskFile(
            model_name="bench-gemma2",
            model_id="bench-gemma2",
            hidden_size=hidden,
            method="random",
            sparsity=1 - keep_share,
            actual_sparsity=1 - n_keep / hidden,
            threshold=0.5,
            weights={},
            tasks=[],
            site="residual",
            layer_agg="mean",
            cache_manifest_hash=None,
            package_version="bench",
            created=time.strftime("%Y-%m-%d"),
            kept_indices=[int(i) for i in keep],
        ),
        path,
    )
    return n_keep


def run_measured(cmd: list[str]) -> tuple[int, float, str]:
    """(peak RSS bytes, wall seconds, stdout) of one command, from the kernel's accounting for that child."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start, out  # ru_maxrss is in KiB on Linux


LOADED = """
import sys
from diet_explore.masking.maskfile import load_mask
from diet_explore.models.loading import model_source
from diet_explore.pruning import streaming
def refuse(*a, **k):
    raise streaming.NotStreamable("forced by the benchmark")
streaming.plan_stream = refuse
r = streaming.prune_to_folder(model_source(sys.argv[1]), load_mask(sys.argv[2]), sys.argv[3])
assert not r.streamed
"""

CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM
from diet_explore.masking.maskfile import load_mask
from diet_explore.pruning.slicing import prune_model
src, out, mask = sys.argv[1:4]
ids = torch.tensor([[2, 17, 400, 9000, 123456, 255999, 5, 77]])
with torch.no_grad():
    dense = AutoModelForCausalLM.from_pretrained(src)
    expected = prune_model(dense, load_mask(mask).keep, inplace=True)(ids).logits  # today's slicing
    del dense
    got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
print("identical" if torch.equal(expected, got) else f"DIFFERENT (max |diff| {(expected - got).abs().max().item():.3g})")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-check", action="store_true", help="skip the logits check (it loads the dense model once)")
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument(
        "--also-loaded",
        action="store_true",
        help="also measure the path for checkpoints that cannot be streamed (load, slice in place)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prune-memory-"))
    try:
        src = tmp / "gemma2-2304"
        code = "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import bench_prune_memory as b; "
        code += "print(b.build(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))"
        here = str(Path(__file__).resolve().parent)
        built = subprocess.run(
            [sys.executable, "-c", code, here, str(src), str(args.layers), args.dtype], check=True, capture_output=True, text=True
        )  # in a child, so this process stays small
        weight_bytes = int(built.stdout.strip().splitlines()[-1])
        n_keep = write_mask(tmp / "mask.json")
        cli = [sys.executable, "-m", "diet_explore", "prune", "--model", str(src), "--mask", str(tmp / "mask.json")]
        peak, wall, out = run_measured([*cli, "--out", str(tmp / "pruned")])
        ratio = peak / weight_bytes
        print(
            f"model: Gemma-2 width 2304, vocab 256000, {args.layers} blocks, {args.dtype}: {weight_bytes / 1e9:.2f} GB of weights"
        )
        print(f"prune to {n_keep} of 2304 dims: peak RSS {peak / 1e9:.2f} GB in {wall:.1f} s")
        print(f"peak RSS / weight bytes: {ratio:.3f} (target <= {TARGET}; measured/target {ratio / TARGET:.2f})")
        if "note: loaded" in out:
            print("  (the checkpoint was loaded, not streamed: " + out.split("note: loaded", 1)[1].splitlines()[0].strip() + ")")
        if args.also_loaded:
            cmd = [sys.executable, "-c", LOADED, str(src), str(tmp / "mask.json"), str(tmp / "pruned-loaded")]
            peak2, wall2, _ = run_measured(cmd)
            cfg = GEMMA2_2B
            predicted = 1 + cfg["vocab_size"] * cfg["hidden_size"] * (4 if args.dtype == "float32" else 2) / weight_bytes
            print(
                f"loaded and sliced in place instead: peak RSS {peak2 / 1e9:.2f} GB in {wall2:.1f} s, "
                f"{peak2 / weight_bytes:.3f} x the weights (the pre-check assumes {predicted:.3f})"
            )
            shutil.rmtree(tmp / "pruned-loaded", ignore_errors=True)
        if not args.no_check:
            check = subprocess.run(
                [sys.executable, "-c", CHECK, str(src), str(tmp / "pruned"), str(tmp / "mask.json")],
                check=True,
                capture_output=True,
                text=True,
            )
            verdict = check.stdout.strip().splitlines()[-1]
            print(f"logits of the pruned folder vs prune_model of the loaded dense model: {verdict}")
            if verdict != "identical":
                return 1
        summary = json.loads((tmp / "pruned" / "diet_explore_pruned.json").read_text())
        print(f"parameters {summary['parameters_before'] / 1e6:.1f} M -> {summary['parameters_after'] / 1e6:.1f} M")
        return 0 if ratio <= TARGET else 1
    finally:
        if args.keep_files:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
