"""Log-likelihood scoring: lm-eval's tokenization rules, exact agreement with a naive per-choice
forward on every family, and hand-computable values."""

from __future__ import annotations

import hashlib
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from diet_explore.core.errors import DietError
from diet_explore.evaluation.scoring import (
    PAD_BRANCH,
    ChoiceScores,
    LoglikelihoodScorer,
    PairEncoder,
    _Plan,
    perplexity,
    resolve_max_length,
    tree_attention_allowed,
    tree_row,
)
from diet_explore.models.adapters.tiny import TINY_FAMILIES, tiny_config, tiny_model
from diet_explore.tasks.registry import Request


class WordTokenizer:
    """A deterministic stand-in: a token is a word with its leading whitespace; ids in [3, 123)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    model_max_length = 10**30

    def __init__(self, add_bos: bool = False):
        self.add_bos = add_bos

    @staticmethod
    def token_id(piece: str) -> int:
        return 3 + int.from_bytes(hashlib.sha256(piece.encode()).digest()[:4], "little") % 120

    def decode(self, i: int) -> str:
        return {1: "<s>", 2: "</s>"}.get(i, "?")

    def pieces(self, text: str) -> list[str]:
        return re.findall(r"\s*\S+|\s+", text)

    def __len__(self) -> int:
        return 123

    def __call__(self, strings, add_special_tokens: bool = True):
        if isinstance(strings, str):
            return {"input_ids": self([strings], add_special_tokens)["input_ids"][0]}
        out = []
        for s in strings:
            body = s[3:] if s.startswith("<s>") else s
            ids = ([1] if s.startswith("<s>") else []) + [self.token_id(p) for p in self.pieces(body)]
            out.append(([1] if add_special_tokens and self.add_bos else []) + ids)
        return {"input_ids": out}


def ids(*pieces: str) -> list[int]:
    return [WordTokenizer.token_id(p) for p in pieces]


# --------------------------------------------------------------------------------------------
def test_encode_pair_moves_trailing_whitespace_into_the_continuation():
    enc = PairEncoder(WordTokenizer())
    (ctx, cont), (ctx2, cont2) = enc.encode_pairs([("Question: why?\nAnswer:", " yes"), ("Answer: ", "no")])
    assert ctx == ids("Question:", " why?", "\nAnswer:") and cont == ids(" yes")
    assert ctx2 == ids("Answer:") and cont2 == ids(" no")  # "Answer: " + "no" -> "Answer:" + " no"


def test_bos_follows_the_tokenizer_default_as_lm_eval_hflm_does():
    with_bos = PairEncoder(WordTokenizer(add_bos=True))  # Gemma-style tokenizer
    ((ctx, cont),) = with_bos.encode_pairs([("Hello there", " friend")])
    assert ctx == [1] + ids("Hello", " there") and cont == ids(" friend")
    ((ctx, cont),) = with_bos.encode_pairs([("<s>Hello", " x")])  # already starts with BOS: no second one
    assert ctx == [1] + ids("Hello") and cont == ids(" x")
    ((ctx, cont),) = PairEncoder(WordTokenizer()).encode_pairs([("Hello", " x")])
    assert ctx == ids("Hello")  # SmolLM2-style: no BOS
    ((ctx, cont),) = with_bos.encode_pairs([("", "alone here")])  # empty context: the prefix token
    assert ctx == [1] and cont == ids("alone", " here")


def test_zero_head_gives_the_hand_computed_log_likelihood():
    """All logits 0 -> every token has log-prob -ln(128): ll = -(continuation tokens) * ln 128."""
    model = tiny_model("llama", tie=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    req = Request("t", 0, ["Question: a b c\nAnswer:"] * 3, [" yes", " no way", " x y z"], 1)
    (out,) = LoglikelihoodScorer(model, WordTokenizer()).score([req])
    assert out.n_tokens == [1, 2, 3]
    np.testing.assert_allclose(out.lls, [-math.log(128) * n for n in (1, 2, 3)], rtol=1e-6)
    assert out.is_greedy == [False, False, False]  # argmax of equal logits is token 0, never a word
    assert perplexity(model, np.array([[5, 6, 7, 8]])) == pytest.approx(128.0, rel=1e-5)


def test_pred_and_pred_norm_follow_lm_eval():
    s = ChoiceScores("t", 0, [-10.0, -12.0, -10.0], [False] * 3, [1, 1, 1], 1, ["a", "bbbbbbb", "cc"])
    assert s.pred == 0  # ties: the first maximum, as np.argmax
    assert s.pred_norm == 1  # -12/7 beats -10/1 and -10/2 per character


def _requests(rng) -> list[Request]:
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "dogs",
        "ran",
        "far",
        "away",
        "from",
        "home",
        "and",
        "never",
        "came",
        "back",
        "again",
    ]

    def sent(n):
        return " ".join(rng.choice(words, n))

    reqs = []
    for i in range(10):  # shared context, choices of different lengths (some sharing first words)
        ctx = sent(int(rng.integers(2, 40))) + ("\nAnswer:" if i % 2 else " ")
        ch = [sent(int(rng.integers(1, 6))) for _ in range(int(rng.integers(2, 5)))]
        reqs.append(Request("mc", i, [ctx] * len(ch), [" " + c for c in ch], 0))
    for i in range(4):  # WinoGrande-style: per-choice contexts, a shared continuation
        s1, rest = sent(8), sent(6)
        reqs.append(Request("partial", i, [s1 + " cat", s1 + " dog"], [" " + rest] * 2, 0))
    reqs.append(Request("one", 0, ["the"], [" cat"], 0))  # one choice, one context token
    return reqs


def _reference(model, enc, req, max_length):
    """Naive lm-eval: one full forward per choice over (context + continuation)[-(L+1):][:-1]."""
    lls, greedy = [], []
    for ctx, cont in enc.encode_pairs(list(zip(req.contexts, req.continuations))):
        inp = (ctx + cont)[-(max_length + 1) :][:-1]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([inp])).logits[0].float().log_softmax(-1)[-len(cont) :]
        tgt = torch.tensor(cont)
        lls.append(float(logp.gather(1, tgt[:, None]).sum()))
        greedy.append(bool((logp.argmax(-1) == tgt).all()))
    return lls, greedy


def _assert_scores_equal_naive(model, tok, reqs):
    # one batch; many batches and left truncation, in turn on one worker and on two side by side
    for batch_tokens, max_length, workers in ((4096, None, 1), (96, 24, 1), (96, 24, 2)):
        scorer = LoglikelihoodScorer(model, tok, batch_tokens=batch_tokens, max_length=max_length, workers=workers)
        got = scorer.score(reqs)
        if batch_tokens == 96:
            assert len(scorer.batches(reqs)) > 3  # the small budget really splits the requests
        for req, out in zip(reqs, got):
            lls, greedy = _reference(model, scorer.encoder, req, scorer.max_length)
            np.testing.assert_allclose(out.lls, lls, atol=1e-4, rtol=0)
            assert out.is_greedy == greedy
            assert (out.task, out.doc_id, out.gold) == (req.task, req.doc_id, req.gold)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.slow
def test_shared_prefix_scoring_equals_a_naive_forward_per_choice(family):
    cfg = tiny_config(family)
    if hasattr(cfg, "sliding_window") and family != "qwen2":
        cfg.sliding_window = 8  # contexts up to ~45 tokens: sliding-window layers are exercised
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    _assert_scores_equal_naive(model, WordTokenizer(add_bos=family.startswith("gemma")), _requests(np.random.default_rng(1)))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text"])
@pytest.mark.slow
def test_scoring_is_exact_under_eager_attention_too(family):
    """Eager attention reads an additive float mask, SDPA a boolean one; both must give lm-eval's scores."""
    cfg = tiny_config(family)
    if family.startswith("gemma"):
        cfg.sliding_window = 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    _assert_scores_equal_naive(model, WordTokenizer(add_bos=family.startswith("gemma")), _requests(np.random.default_rng(2)))


@pytest.mark.slow
def test_qwen2_sliding_window_layers_are_exact():
    cfg = tiny_config("qwen2")
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 8, 1
    cfg.layer_types = ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    assert "sliding_attention" in model.config.layer_types and model.config.sliding_window == 8
    _assert_scores_equal_naive(model, WordTokenizer(), _requests(np.random.default_rng(3)))


def test_tree_layout_and_mask_on_a_hand_built_request():
    """Prefix [a b], choices with suffixes [c] and [d e]: one row a b c d e, positions 0 1 2 2 3."""
    plan = _Plan(0, prefix=[10, 11], suffixes=[[12], [13, 14]], targets=[[20], [21, 22]], starts=[2, 2])
    row = tree_row(plan)
    assert row.ids == [10, 11, 12, 13, 14] and row.positions == [0, 1, 2, 2, 3]
    assert row.branches == [-1, -1, 0, 1, 1]
    assert row.score_at == [[2], [3, 4]]  # the outputs at c, and at d and e
    pos = torch.tensor([row.positions + [0]])  # one padding token
    br = torch.tensor([row.branches + [PAD_BRANCH]])
    got = tree_attention_allowed(pos, br)[0, 0].int().tolist()
    assert got == [
        [1, 0, 0, 0, 0, 0],  # a: itself
        [1, 1, 0, 0, 0, 0],  # b: a b
        [1, 1, 1, 0, 0, 0],  # c: prefix and itself, not the other choice
        [1, 1, 0, 1, 0, 0],  # d: prefix and itself, not c
        [1, 1, 0, 1, 1, 0],  # e: prefix, d, itself
        [0, 0, 0, 0, 0, 1],
    ]  # padding: only itself (no empty softmax row)
    windowed = tree_attention_allowed(pos, br, window=2)[0, 0].int().tolist()
    assert windowed[4] == [0, 0, 0, 1, 1, 0]  # e (position 3) sees the last 2 positions of its branch: d, e
    assert windowed[3] == [0, 1, 0, 1, 0, 0]  # d (position 2): b and itself


def test_an_attention_implementation_without_custom_masks_is_refused():
    model = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(DietError, match="attn_implementation='sdpa'"):
        LoglikelihoodScorer(model, WordTokenizer())


def test_gemma2_soft_capping_is_applied_to_the_scored_logits():
    model = tiny_model("gemma2")
    model.config.final_logit_softcapping = 0.1  # logits in (-0.1, 0.1): every log-prob is near -ln(128)
    (out,) = LoglikelihoodScorer(model, WordTokenizer(add_bos=True)).score([Request("t", 0, ["a b c"], [" d e"], 0)])
    assert out.lls[0] == pytest.approx(-2 * math.log(128), abs=2 * 0.2)
    enc = PairEncoder(WordTokenizer(add_bos=True))
    assert out.lls[0] == pytest.approx(_reference(model, enc, Request("t", 0, ["a b c"], [" d e"], 0), 256)[0][0], abs=1e-5)


def test_max_length_resolution_matches_lm_eval():
    class Cfg:
        max_position_embeddings = 8192

    class Tok:
        model_max_length = int(1e30)  # transformers' "no limit"

    assert resolve_max_length(Cfg(), Tok()) == 8192
    assert resolve_max_length(object(), Tok()) == 2048
    Tok.model_max_length = 512
    assert resolve_max_length(object(), Tok()) == 512


@pytest.mark.slow
def test_real_tokenizer_pairs_equal_lm_eval_hflm(smollm2):
    """The SmolLM2 tokenizer on real task requests: our encoder == lm-eval 0.4.13's HFLM._encode_pair."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:  # `make test` installs it (requirements-bench.txt); CI must not skip silently
        if os.environ.get("CI") == "true":
            pytest.fail("lm-eval is not installed: `pip install -r requirements-bench.txt` (make test does)")
        pytest.skip("lm-eval not installed (pip install -r requirements-bench.txt)")

    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests

    model, tok, _ = smollm2
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    ours = PairEncoder(tok)
    reqs = [r for rs in eval_requests(EvalConfig(limit=3, perplexity=False)).values() for r in rs]
    pairs = [(c, k) for r in reqs for c, k in zip(r.contexts, r.continuations)]
    assert len(pairs) > 40
    assert ours.encode_pairs(pairs) == [tuple(lm._encode_pair(c, k)) for c, k in pairs]


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_perplexity_equals_a_full_forward(family, workers):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32).eval()
    windows = np.random.default_rng(2).integers(3, model.config.vocab_size, size=(7, 12))
    for prefix in (None, 2):  # the first token as context, or a BOS before every window
        ids = torch.as_tensor(windows)
        if prefix is not None:
            ids = torch.cat([torch.full((len(ids), 1), prefix), ids], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1].float()  # soft-capped by the model itself (gemma2)
        want = float(torch.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))))
        got = perplexity(model, windows, prefix, batch_size=3, workers=workers)  # 3 batches, the last one short
        assert got == pytest.approx(want, rel=1e-5)
