"""Log-likelihood scoring of multiple-choice requests, token-for-token as lm-evaluation-harness.

What matches lm-eval 0.4.13's HF backend (``HFLM``) exactly:

* tokenization: ``_encode_pair`` moves the context's trailing whitespace to the continuation,
  encodes ``context + continuation`` and ``context`` separately and takes the continuation tokens
  as ``whole[len(context_enc):]``; an empty context is replaced by the prefix token (BOS, else EOS);
* special tokens: HFLM (``add_bos_token=None``) calls ``tokenizer.encode(s)`` with the tokenizer's
  own default, so Gemma tokenizers prepend BOS and SmolLM2/Llama-3-style ones do not; a string
  that already starts with the BOS text gets no second one;
* left truncation to ``max_length + 1`` tokens and the ``[:-1]`` input shift;
* the per-choice log-likelihood (sum over continuation tokens) and ``is_greedy``.

What is faster, without approximation:

* the token prefix shared by all choices of a request (the whole context for ordinary multiple
  choice; the sentence start for WinoGrande) runs once, and each choice runs only its own
  suffix on a copy of the prefix's KV cache;
* the decoder stack runs without the vocabulary projection (``adapter.base_model()``); the lm_head
  (and Gemma-2 logit soft-capping) is applied only at the positions that predict continuation
  tokens;
* requests are sorted by length and batched under a token budget (prefixes left-padded so the
  cache holds contiguous real tokens, which keeps sliding-window layers exact).

log-softmax runs in fp32 whatever the model dtype (lm-eval uses the model dtype by default; the
two agree exactly in fp32).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diet_explore.adapters import get_adapter
from diet_explore.tasks.registry import Request

TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback
Progress = Callable[[float, str], None]


@dataclass
class ChoiceScores:
    """Scores of one request: per choice, the summed log-likelihood and whether greedy decoding
    would produce the continuation."""

    task: str
    doc_id: int
    lls: list[float]
    is_greedy: list[bool]
    n_tokens: list[int]  # continuation tokens per choice
    gold: int
    choice_texts: list[str]

    @property
    def pred(self) -> int:
        return int(np.argmax(self.lls))  # first maximum on ties, as lm-eval (np.argmax)

    @property
    def pred_norm(self) -> int:
        """acc_norm's choice: log-likelihood per character of the choice text (lm-eval's completion_len)."""
        lengths = np.array([float(len(c)) for c in self.choice_texts])
        return int(np.argmax(np.asarray(self.lls) / lengths))


# --------------------------------------------------------------------------------------------
# Tokenization (lm-eval HFLM semantics)
# --------------------------------------------------------------------------------------------
def resolve_max_length(config, tokenizer) -> int:
    """lm-eval's ``resolve_max_length``: config n_positions / max_position_embeddings / n_ctx, then
    the tokenizer's model_max_length, then 2048."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH


class PairEncoder:
    """``(context, continuation) -> (context_enc, continuation_enc)`` exactly as HFLM does."""

    def __init__(self, tokenizer, add_bos_token: bool | None = None):
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self._bos_text = tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None

    def encode_many(self, strings: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """``HFLM.tok_encode`` over many strings (one batched tokenizer call per setting)."""
        out: list[list[int] | None] = [None] * len(strings)
        groups: dict[bool | None, list[int]] = {}
        for i, s in enumerate(strings):
            kw = add_special_tokens if add_special_tokens is not None else self.add_bos_token
            if add_special_tokens is None and self._bos_text and s.startswith(self._bos_text):
                kw = False
            groups.setdefault(kw, []).append(i)
        for kw, idx in groups.items():
            kwargs = {} if kw is None else {"add_special_tokens": kw}
            enc = self.tokenizer([strings[i] for i in idx], **kwargs)["input_ids"]
            for i, ids in zip(idx, enc):
                out[i] = list(ids)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        moved = []
        for context, continuation in pairs:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            moved.append((context, continuation))
        nonempty = [i for i, (c, _) in enumerate(moved) if c]
        wholes = self.encode_many([moved[i][0] + moved[i][1] for i in nonempty])
        ctxs = self.encode_many([moved[i][0] for i in nonempty])
        out: list[tuple[list[int], list[int]]] = [([], [])] * len(pairs)
        for i, whole, ctx in zip(nonempty, wholes, ctxs):
            out[i] = (ctx, whole[len(ctx):])
        empty = [i for i, (c, _) in enumerate(moved) if not c]
        if empty:
            conts = self.encode_many([moved[i][1] for i in empty], add_special_tokens=False)
            for i, cont in zip(empty, conts):
                out[i] = ([self.prefix_token_id], cont) if cont[0] != self.prefix_token_id else (cont[:1], cont[1:])
        return out


# --------------------------------------------------------------------------------------------
# The plan: what each request runs
# --------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    index: int  # position in the caller's request list
    prefix: list[int]  # tokens shared by every choice's input (P >= 0; 0 only in degenerate cases)
    suffixes: list[list[int]]  # per choice: input tokens after the prefix (>= 1 each)
    targets: list[list[int]]  # per choice: continuation tokens
    starts: list[int]  # per choice: input position whose output predicts the first target


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs[1:]):
            return k
    return n


def plan_request(index: int, pairs_enc: list[tuple[list[int], list[int]]], max_length: int) -> _Plan:
    inputs, targets, starts = [], [], []
    for ctx, cont in pairs_enc:
        inp = (ctx + cont)[-(max_length + 1):][:-1]  # lm-eval's left truncation and input shift
        inputs.append(inp)
        targets.append(cont)
        starts.append(len(inp) - len(cont))
    p = min(_common_prefix_len(inputs), min(len(s) for s in inputs) - 1)
    return _Plan(index, inputs[0][:p], [s[p:] for s in inputs], targets, starts)


# --------------------------------------------------------------------------------------------
class LoglikelihoodScorer:
    """Scores ``Request`` lists with a causal LM (any family with an adapter)."""

    def __init__(self, model, tokenizer, batch_tokens: int = 4096, add_bos_token: bool | None = None,
                 max_length: int | None = None):
        self.model = model
        self.adapter = get_adapter(model)
        self.encoder = PairEncoder(tokenizer, add_bos_token)
        self.batch_tokens = int(batch_tokens)
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.encoder.prefix_token_id or 0))
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.device = next(model.parameters()).device

    # -- public --------------------------------------------------------------------------
    def plan(self, requests: Sequence[Request]) -> list[_Plan]:
        pairs = [(c, k) for r in requests for c, k in zip(r.contexts, r.continuations)]
        enc = self.encoder.encode_pairs(pairs)
        plans, at = [], 0
        for i, r in enumerate(requests):
            plans.append(plan_request(i, enc[at: at + r.n_choices], self.max_length))
            at += r.n_choices
        return plans

    @torch.inference_mode()
    def score(self, requests: Sequence[Request], progress: Progress | None = None) -> list[ChoiceScores]:
        plans = self.plan(requests)
        results: list[ChoiceScores | None] = [None] * len(requests)
        batches = self._batches(plans)
        done = 0
        for batch in batches:
            for plan, (lls, greedy) in zip(batch, self._run_batch(batch)):
                r = requests[plan.index]
                results[plan.index] = ChoiceScores(r.task, r.doc_id, lls, greedy, [len(t) for t in plan.targets],
                                                   r.gold, r.choice_texts)
            done += len(batch)
            if progress is not None:
                progress(done / len(plans), f"scored {done}/{len(plans)} examples")
        return results  # type: ignore[return-value]

    # -- batching ------------------------------------------------------------------------
    def _batches(self, plans: list[_Plan]) -> list[list[_Plan]]:
        """Longest prefix first, cut into runs of similar length (bounded padding) within the budget."""
        order = sorted(plans, key=lambda p: (-len(p.prefix), -max(len(s) for s in p.suffixes)))

        def fits(cur: list[_Plan], p: _Plan) -> bool:
            if (len(p.prefix) == 0) != (len(cur[0].prefix) == 0):
                return False  # prefix-less plans (degenerate requests) run apart
            rows = sum(len(q.suffixes) for q in cur) + len(p.suffixes)
            return rows <= self.batch_tokens // 8  # bounds the suffix rows (and their KV copies) per batch

        return _pack(order, lambda p: len(p.prefix), self.batch_tokens, fits)

    def _run_batch(self, batch: list[_Plan]) -> list[tuple[list[float], list[bool]]]:
        dev = self.device
        base = self.adapter.base_model()
        # 1. Prefixes, left-padded so each row's real tokens sit contiguously at the end: (B, P)
        pmax = max(len(p.prefix) for p in batch)
        pre_ids = torch.full((len(batch), pmax), self.pad_id, dtype=torch.long)
        pre_mask = torch.zeros((len(batch), pmax), dtype=torch.long)
        for b, p in enumerate(batch):
            n = len(p.prefix)
            if n:
                pre_ids[b, pmax - n:] = torch.tensor(p.prefix)
                pre_mask[b, pmax - n:] = 1
        pre_mask = pre_mask.to(dev)
        pre_hidden = cache = None
        if pmax > 0:
            pre_pos = (pre_mask.cumsum(-1) - 1).clamp(min=0)
            out = base(input_ids=pre_ids.to(dev), attention_mask=pre_mask, position_ids=pre_pos, use_cache=True)
            pre_hidden, cache = out.last_hidden_state, out.past_key_values  # (B, P, D)

        # 2. Hidden states that predict a continuation token inside the prefix (rare: a choice
        #    whose first tokens are shared by every choice)
        picked: list[torch.Tensor] = []
        targets: list[int] = []
        owner: list[int] = []  # flat choice row per picked token
        rows = [(b, c) for b, p in enumerate(batch) for c in range(len(p.suffixes))]
        row_of = {rc: r for r, rc in enumerate(rows)}
        for r, (b, c) in enumerate(rows):
            p = batch[b]
            for j, t in enumerate(p.targets[c]):
                pos = p.starts[c] + j
                if pos < len(p.prefix):
                    picked.append(pre_hidden[b, pmax - len(p.prefix) + pos][None])
                    targets.append(t)
                    owner.append(r)

        # 3. Suffixes: one row per choice, in chunks of similar length, each on a copy of its
        #    request's prefix KV cache: (R_chunk, S_chunk)
        for chunk in self._suffix_chunks(batch, rows, pmax):
            smax = max(len(batch[b].suffixes[c]) for b, c in chunk)
            ids = torch.full((len(chunk), smax), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), smax), dtype=torch.long)
            for i, (b, c) in enumerate(chunk):
                suf = batch[b].suffixes[c]
                ids[i, : len(suf)] = torch.tensor(suf)
                mask[i, : len(suf)] = 1
            req = torch.tensor([b for b, _ in chunk], device=dev)
            pos = torch.tensor([len(batch[b].prefix) for b, _ in chunk])[:, None] + torch.arange(smax)[None, :]
            full_mask = torch.cat([pre_mask[req], mask.to(dev)], dim=1)  # (R, P + S)
            kv = _select_rows(cache, req) if cache is not None else None
            hidden = base(input_ids=ids.to(dev), attention_mask=full_mask, position_ids=pos.to(dev),
                          past_key_values=kv, use_cache=kv is not None).last_hidden_state  # (R, S, D)
            sel_i, sel_j = [], []
            for i, (b, c) in enumerate(chunk):
                p = batch[b]
                for j, t in enumerate(p.targets[c]):
                    at = p.starts[c] + j - len(p.prefix)
                    if at >= 0:
                        sel_i.append(i)
                        sel_j.append(at)
                        targets.append(t)
                        owner.append(row_of[(b, c)])
            picked.append(hidden[torch.tensor(sel_i, device=dev), torch.tensor(sel_j, device=dev)])  # (n, D)
            del kv, hidden

        # 4. Vocabulary projection only where a continuation token is predicted
        token_ll, token_greedy = self._token_scores(torch.cat(picked), torch.tensor(targets, device=dev))
        own = np.asarray(owner)
        per_row_ll = np.bincount(own, weights=token_ll, minlength=len(rows))
        per_row_greedy = np.bincount(own, weights=~token_greedy, minlength=len(rows)) == 0
        results: list[tuple[list[float], list[bool]]] = [([], []) for _ in batch]
        for r, (b, _) in enumerate(rows):
            results[b][0].append(float(per_row_ll[r]))
            results[b][1].append(bool(per_row_greedy[r]))
        return results

    def _suffix_chunks(self, batch: list[_Plan], rows: list[tuple[int, int]], pmax: int) -> list[list[tuple[int, int]]]:
        """Rows sorted by suffix length, cut into runs of similar length within the budget; the copied
        KV length (rows x (P + S)) is bounded too."""
        order = sorted(rows, key=lambda bc: -len(batch[bc[0]].suffixes[bc[1]]))
        length = lambda bc: len(batch[bc[0]].suffixes[bc[1]])  # noqa: E731
        return _pack(order, length, self.batch_tokens,
                     lambda cur, bc: (len(cur) + 1) * (pmax + length(cur[0])) <= 2 * self.batch_tokens)

    def _token_scores(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) final hidden states and (N,) target ids -> log p(target) (N,) and argmax == target (N,)."""
        head = self.adapter.lm_head()
        lls, greedy = [], []
        for i in range(0, len(targets), chunk):
            logits = head(hidden[i: i + chunk]).float()  # (n, V)
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            tgt = targets[i: i + chunk]
            lls.append((logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).double().cpu())
            greedy.append((logits.argmax(-1) == tgt).cpu())
        return torch.cat(lls).numpy(), torch.cat(greedy).numpy()


def _pack(items: list, length: Callable, budget: int, fits: Callable, waste: float = 0.25, slack: int = 32) -> list[list]:
    """Cut length-sorted (descending) items into consecutive groups that are padded to their first
    item's length: a group grows while its padded size stays within ``budget`` and within
    ``(1 + waste)`` of its real tokens (+ ``slack``, so very short items still group), and ``fits``."""
    groups: list[list] = []
    cur: list = []
    real = 0
    for item in items:
        n = length(item)
        if cur:
            padded = (len(cur) + 1) * length(cur[0])
            if padded > budget or padded > (1 + waste) * (real + n) + slack or not fits(cur, item):
                groups.append(cur)
                cur, real = [], 0
        cur.append(item)
        real += n
    if cur:
        groups.append(cur)
    return groups


def _select_rows(cache, index: torch.Tensor):
    """A new cache whose rows are ``cache``'s rows at ``index`` (repeats allowed); ``cache`` is untouched."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            lay.keys, lay.values = layer.keys[index], layer.values[index]
        new.layers.append(lay)
    return new


# --------------------------------------------------------------------------------------------
def score_requests(model, tokenizer, requests: Sequence[Request], batch_tokens: int = 4096,
                   progress: Progress | None = None) -> list[ChoiceScores]:
    return LoglikelihoodScorer(model, tokenizer, batch_tokens).score(requests, progress)


@torch.inference_mode()
def perplexity(model, windows: np.ndarray, prefix_token_id: int | None = None, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over token windows (W, T); with ``prefix_token_id`` (e.g. Gemma's
    BOS) every window is preceded by it and all T tokens are predicted, else the first is context."""
    adapter = get_adapter(model)
    dev = next(model.parameters()).device
    softcap = getattr(model.config, "final_logit_softcapping", None)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = torch.as_tensor(windows[start: start + batch_size], dtype=torch.long)
        if prefix_token_id is not None:
            ids = torch.cat([torch.full((len(ids), 1), prefix_token_id, dtype=torch.long), ids], dim=1)
        ids = ids.to(dev)
        hidden = adapter.base_model()(input_ids=ids).last_hidden_state[:, :-1]  # (B, T-1, D)
        for b in range(len(ids)):  # one row at a time keeps the (T, V) logits small
            logits = adapter.lm_head()(hidden[b]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            nll = F.cross_entropy(logits, ids[b, 1:], reduction="sum")
            total += float(nll)
            count += ids.shape[1] - 1
    return float(np.exp(total / count))
