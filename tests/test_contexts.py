"""Top-activating contexts: what the profile records equals an independent recomputation, does not
change the statistics, survives the cache round trip, and old caches still load."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diet_explore.core.errors import DietError
from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.profiling.cache import MANIFEST, load_cache, save_cache
from diet_explore.profiling.contexts import NO_ROW, TaskContexts, TopTokens, build_contexts, empty_top, merge_top
from diet_explore.profiling.runner import profile_sequences

REPO = Path(__file__).resolve().parents[1]


def random_seqs(n: int = 9, seed: int = 0) -> list[list[int]]:
    """Sequences of different lengths with distinct first tokens (so no two positions share a
    causal context and exact ties cannot happen)."""
    g = np.random.default_rng(seed)
    firsts = g.choice(np.arange(3, 128), size=n, replace=False)
    return [[int(firsts[i]), *g.integers(3, 128, size=int(g.integers(3, 30))).tolist()] for i in range(n)]


def reference_token_values(model, seqs) -> dict[str, list[np.ndarray]]:
    """Per sequence (T, D) layer-averaged |activation|, one sequence at a time, from our own reading
    of the model: ``output_hidden_states`` for the residual stream (final norm replaced by the
    identity so the last entry is the last block's raw output) and forward hooks of our own on the
    two norms of each block for the normed site."""
    ref = copy.deepcopy(model)
    ref.model.norm = nn.Identity()
    seen: list[torch.Tensor] = []
    handles = [
        norm.register_forward_hook(lambda m, a, o: seen.append(o[0].detach().abs()))
        for layer in ref.model.layers
        for norm in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    out = {"residual": [], "normed": []}
    try:
        with torch.no_grad():
            for s in seqs:
                seen.clear()
                hs = ref.model(torch.tensor([s]), output_hidden_states=True).hidden_states[1:]
                out["residual"].append(torch.stack([h[0].abs() for h in hs]).mean(0).double().numpy())
                normed = torch.stack(seen).double()  # (2L, T, D), two norms per block
                out["normed"].append((0.5 * normed.reshape(-1, 2, *normed.shape[1:]).sum(1)).mean(0).numpy())
    finally:
        for h in handles:
            h.remove()
    return out


def reference_top(values: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, k) rows, positions, values: every token of every sequence, sorted by value (desc), row, position."""
    rows = np.concatenate([np.full(v.shape[0], i) for i, v in enumerate(values)])
    pos = np.concatenate([np.arange(v.shape[0]) for v in values])
    allv = np.concatenate(values)  # (N_tok, D)
    d = allv.shape[1]
    r_out, p_out, v_out = np.zeros((d, k), dtype=np.int64), np.zeros((d, k), dtype=np.int64), np.zeros((d, k))
    for dim in range(d):
        order = np.lexsort((pos, rows, -allv[:, dim]))[:k]
        r_out[dim], p_out[dim], v_out[dim] = rows[order], pos[order], allv[order, dim]
    return r_out, p_out, v_out


@pytest.mark.parametrize("budget", [64, 4096])
@pytest.mark.slow
def test_recorded_top_k_equals_an_independent_recomputation(budget):
    """Small budget: many batches merged; large: one padded batch. Both give the reference's top-k."""
    model = tiny_model("llama")
    seqs = random_seqs()
    scores, _ = profile_sequences(get_adapter(model), seqs, ["residual", "normed"], budget, 0, min_fill=0.0, top_k=8, decode=str)
    ref = reference_token_values(model, seqs)
    for site in ("residual", "normed"):
        top = scores.contexts.top[site]
        rows, pos, vals = reference_top(ref[site], 8)
        assert top.row.shape == (64, 8)
        np.testing.assert_array_equal(top.row, rows)
        np.testing.assert_array_equal(top.position, pos)
        np.testing.assert_allclose(top.value, vals, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_top_k_bookkeeping_leaves_the_statistics_bit_identical():
    adapter = get_adapter(tiny_model("gemma3_text"))
    seqs = random_seqs(12, seed=1)
    plain, t1 = profile_sequences(adapter, seqs, ["residual", "normed"], 96, 0)
    booked, t2 = profile_sequences(adapter, seqs, ["residual", "normed"], 96, 0, top_k=8, decode=str)
    assert plain.contexts is None and booked.contexts is not None and t1 == t2
    for site in ("residual", "normed"):
        assert plain.layer[site].tobytes() == booked.layer[site].tobytes()
        assert plain.sample[site].tobytes() == booked.sample[site].tobytes()


def test_fewer_tokens_than_k_keeps_every_token():
    model = tiny_model("llama")
    seqs = [[5, 6, 7], [9, 10]]
    scores, _ = profile_sequences(get_adapter(model), seqs, ["residual"], 64, 0, top_k=16, decode=str)
    top = scores.contexts.top["residual"]
    assert top.k == 5 and np.isfinite(top.value).all()
    assert sorted(zip(top.row[0].tolist(), top.position[0].tolist())) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_ties_go_to_the_lower_row_then_position():
    a = TopTokens(np.array([[4, 2]], np.int32), np.array([[0, 3]], np.int32), np.array([[1.0, 0.5]], np.float32))
    b = TopTokens(np.array([[1, 3]], np.int32), np.array([[7, 0]], np.int32), np.array([[1.0, 0.5]], np.float32))
    top = merge_top(a, b, 3)
    assert top.row.tolist() == [[1, 4, 2]] and top.position.tolist() == [[7, 0, 3]]
    top = merge_top(empty_top(1, 2), a, 2)
    assert top.row.tolist() == [[4, 2]]
    assert empty_top(1, 1).row[0, 0] == NO_ROW


def test_a_tie_straddling_the_cut_of_a_batch_is_resolved_by_row_then_position():
    from diet_explore.profiling.hooks import batch_top

    values = torch.ones(2, 3, 2)
    values[0, 2, 1] = -1.0  # padding
    values[1, 1, 1] = 5.0
    top = merge_top(empty_top(2, 2), batch_top(values, rows=[7, 3], k=2), 2)
    assert top.row.tolist() == [[3, 3], [3, 3]]
    assert top.position.tolist() == [[0, 1], [1, 0]]
    assert top.value.tolist() == [[1.0, 1.0], [5.0, 1.0]]


@pytest.mark.slow
def test_identical_first_tokens_tie_exactly_and_the_order_follows_the_rows():
    """Sequences that start with the same token have identical states there (causal attention):
    exact ties at the top, broken by row whatever the batching."""
    adapter = get_adapter(tiny_model("llama"))
    seqs = [[7, *s] for s in random_seqs(6, seed=2)]
    results = [
        profile_sequences(adapter, seqs, ["residual"], b, 0, min_fill=0.0, top_k=4, decode=str)[0].contexts.top["residual"]
        for b in (32, 4096)
    ]
    for top in results:
        at_zero = top.position == 0
        for dim in range(top.row.shape[0]):
            rows = top.row[dim][at_zero[dim]]
            assert (np.diff(rows) > 0).all()  # position-0 ties listed in row order
    assert (results[0].row == results[1].row).mean() > 0.9  # batching moves only float-level near-ties


def test_contexts_decode_a_window_around_the_position():
    seqs = [[10, 11, 12, 13, 14, 15], [20, 21, 22]]
    top = {
        "residual": TopTokens(
            np.array([[0], [1]], np.int32), np.array([[4], [0]], np.int32), np.array([[3.0], [2.0]], np.float32)
        )
    }
    ctx = build_contexts(top, seqs, lambda i: f"<{i}>", radius=2)
    first, second = ctx.contexts("residual", 0)[0], ctx.contexts("residual", 1)[0]
    assert first.tokens == ["<12>", "<13>", "<14>", "<15>"] and first.tokens[first.marked] == "<14>"
    assert second.tokens == ["<20>", "<21>", "<22>"] and second.marked == 0
    assert ctx.token_row.size == 7 and len(ctx.strings) == 7


def test_token_strings_are_stored_once_per_task():
    seqs = [[5, 5, 5, 6], [6, 5]]
    top = {"residual": TopTokens(np.array([[0, 1]], np.int32), np.array([[1, 0]], np.int32), np.array([[2.0, 1.0]], np.float32))}
    ctx = build_contexts(top, seqs, lambda i: {5: "a", 6: "b"}[i], radius=8)
    assert ctx.strings == ("a", "b") and ctx.token_row.size == 6


# -------------------------------------------------------------------------------- the cache file
def test_profiled_cache_round_trips_its_contexts(tmp_path, tiny_cache_root):
    cache = load_cache(tiny_cache_root / "tiny")
    for name, scores in cache.tasks.items():
        meta = cache.manifest["tasks"][name]["contexts"]
        assert scores.contexts is not None and meta["k"] == scores.contexts.k == 16 and meta["radius"] == 8
        for site in cache.sites:
            top = scores.contexts.top[site]
            assert top.row.shape == (cache.hidden_size, 16)
            assert (top.value[:, :-1] >= top.value[:, 1:]).all()  # best first
            c = scores.contexts.contexts(site, 3)[0]
            assert c.marked >= 0 and c.tokens[c.marked]  # the activating token is in its window
    again = load_cache(save_cache(cache, tmp_path / "copy"))
    for name in cache.tasks:
        a, b = cache.tasks[name].contexts, again.tasks[name].contexts
        assert a.strings == b.strings
        np.testing.assert_array_equal(a.top["residual"].row, b.top["residual"].row)


def test_contexts_hold_the_real_tokenizers_text(tiny_cache_root):
    """The tiny cache ran real task text through SmolLM2's tokenizer: the decoded windows are that text."""
    from transformers import AutoTokenizer

    from diet_explore.models.builtin import store_path
    from diet_explore.tasks.data import requests_for
    from diet_explore.tasks.registry import resolve_tasks

    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    cache = load_cache(tiny_cache_root / "tiny")
    spec = resolve_tasks("rte")[0]
    scores = cache.tasks["rte"]
    texts = [r.gold_text() for r in requests_for(spec, scores.sample_ids)]
    for c in scores.contexts.contexts("residual", 0)[:4]:
        ids = tok(texts[c.row])["input_ids"][-1024:]
        lo = c.position - c.marked
        assert c.tokens == [tok.decode([i]) for i in ids[lo : lo + len(c.tokens)]]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_a_schema_1_cache_still_loads_without_contexts(tmp_path, name):
    """A schema-1 cache (what was committed before contexts): every array loads, no contexts."""
    src = tmp_path / "v1"
    shutil.copytree(REPO / "cache" / name, src)
    manifest = json.loads((src / MANIFEST).read_text())
    manifest["schema_version"] = 1
    for meta in manifest["tasks"].values():
        ctx = meta.pop("contexts", None)
        if ctx:
            (src / ctx["file"]).unlink()
    (src / MANIFEST).write_text(json.dumps(manifest))
    old, new = load_cache(src), load_cache(REPO / "cache" / name)
    assert all(s.contexts is None for s in old.tasks.values())
    for t in new.tasks:
        np.testing.assert_array_equal(old.layer_scores(t), new.layer_scores(t))


def test_damaged_contexts_file_is_a_clear_error(tmp_path, tiny_cache_root):
    src = tmp_path / "c"
    shutil.copytree(tiny_cache_root / "tiny", src)
    path = src / "tasks" / "rte.contexts.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DietError, match=r"rte\.contexts\.safetensors.*sha256"):
        load_cache(src)


def test_contexts_pointing_past_the_task_are_refused(tiny_cache_root):
    cache = load_cache(tiny_cache_root / "tiny")
    arrays = {k: v.copy() for k, v in cache.tasks["rte"].contexts.to_tensors().items()}
    arrays["residual.top.position"][0, 0] = 10_000
    with pytest.raises(DietError, match="token position that the task does not have"):
        TaskContexts.from_tensors(arrays, cache.sites, cache.hidden_size, cache.tasks["rte"].token_counts, 8, Path("x"))
    arrays = {k: v.copy() for k, v in cache.tasks["rte"].contexts.to_tensors().items()}
    arrays["tokens.string"][0] = 10**6
    with pytest.raises(DietError, match="past the string table"):
        TaskContexts.from_tensors(arrays, cache.sites, cache.hidden_size, cache.tasks["rte"].token_counts, 8, Path("x"))


# -------------------------------------------------------------------------------- adding contexts to an old cache
def _strip_to_schema_1(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["schema_version"] = 1
    for meta in manifest["tasks"].values():
        (folder / meta.pop("contexts")["file"]).unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def _tiny_profile_config(tiny_cache_root: Path, **extra):
    from diet_explore.profiling.runner import ProfileConfig

    folder = tiny_cache_root.parent / "models" / "tiny-llama"
    return ProfileConfig(model=str(folder), tasks="rte,arc_easy", samples=6, generic=True, device="cpu", **extra)


def _tiny_loaded(tiny_cache_root: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diet_explore.models.loading import ModelInfo

    folder = tiny_cache_root.parent / "models" / "tiny-llama"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    info = ModelInfo(str(folder), "tiny-llama", None, None, None, "llama", 64, 2, sum(p.numel() for p in model.parameters()))
    return model, tok, info


@pytest.mark.slow
def test_add_contexts_fills_an_old_cache_and_keeps_its_scores(tmp_path, tiny_cache_root):
    from diet_explore.profiling.runner import profile

    folder = tmp_path / "old"
    shutil.copytree(tiny_cache_root / "tiny", folder)
    old = _strip_to_schema_1(folder)
    loaded = _tiny_loaded(tiny_cache_root)
    plain = profile(_tiny_profile_config(tiny_cache_root), folder, progress=lambda *a: None, loaded=loaded)
    assert all(s.contexts is None for s in plain.tasks.values())  # a plain resume has nothing to do
    ran = []
    cache = profile(
        _tiny_profile_config(tiny_cache_root, add_contexts=True), folder, progress=lambda t, d, n: ran.append(t), loaded=loaded
    )
    assert set(ran) == {"rte", "arc_easy", "wikitext"}
    reference = load_cache(tiny_cache_root / "tiny")
    for name, meta in cache.manifest["tasks"].items():
        assert meta["sha256"] == old["tasks"][name]["sha256"]  # the score file is untouched
        assert meta["contexts"]["scores_max_rel_diff"] == 0.0 and meta["contexts"]["added"]
        a, b = cache.tasks[name].contexts, reference.tasks[name].contexts
        assert a.strings == b.strings and (a.top["normed"].row == b.top["normed"].row).all()
    assert cache.manifest["schema_version"] == 2 and cache.manifest["created"] == old["created"]


def test_add_contexts_refuses_a_cache_whose_scores_are_another_profile(tmp_path, tiny_cache_root):
    from safetensors.numpy import load, save

    from diet_explore.profiling.cache import sha256_bytes
    from diet_explore.profiling.runner import profile

    folder = tmp_path / "other"
    shutil.copytree(tiny_cache_root / "tiny", folder)
    manifest = _strip_to_schema_1(folder)
    meta = manifest["tasks"]["rte"]
    arrays = load((folder / meta["file"]).read_bytes())
    arrays["residual.layer"] = arrays["residual.layer"] * np.float32(1.01)
    blob = save(arrays)
    (folder / meta["file"]).write_bytes(blob)
    meta["sha256"] = sha256_bytes(blob)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DietError, match=r"re-run of 'rte' differs .* not the same profile"):
        profile(
            _tiny_profile_config(tiny_cache_root, add_contexts=True),
            folder,
            progress=lambda *a: None,
            loaded=_tiny_loaded(tiny_cache_root),
        )
