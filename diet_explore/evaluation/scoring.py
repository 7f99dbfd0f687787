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
  choice; the sentence start for WinoGrande) runs once: a request is one sequence, the prefix
  followed by every choice's own suffix, with per-token positions (each suffix restarts where the
  prefix ends) and a tree-shaped attention mask (a suffix sees the prefix and itself), so each
  choice gets exactly the attention it would get alone;
* the decoder stack runs without the vocabulary projection (``adapter.base_model()``); the logits
  (``adapter.logits``: lm_head and Gemma-2 soft-capping) are computed only at the positions that
  predict continuation tokens;
* requests are sorted by length and batched under a token budget with little padding, one forward
  pass per batch; on a CPU the batches run on two workers side by side (``parallel.run_batches``).

log-softmax runs in fp32 whatever the model dtype (lm-eval uses the model dtype by default; the
two agree exactly in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diet_explore.core.batching import device_token_budget, pack_by_length
from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import choice_pred, choice_pred_norm
from diet_explore.evaluation.parallel import default_workers, run_batches
from diet_explore.models.adapters import get_adapter
from diet_explore.tasks.registry import Request

TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback
# Padded tokens per forward pass. On 2 CPU cores 1024 scored the default eval in 0.88x the time of
# 4096 (three interleaved runs; 512 gave 0.92x), probably because a batch's activations then stay in
# cache and two workers have batches to share out to the end. A 9B model on a GPU is compute-bound at 1024 too.
DEFAULT_BATCH_TOKENS = 1024
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
        return int(choice_pred(self.lls))

    @property
    def choice_chars(self) -> list[int]:
        """Per choice, the length of its text in characters (acc_norm's and the gold log-likelihood's unit)."""
        return [len(c) for c in self.choice_texts]

    @property
    def pred_norm(self) -> int:
        """acc_norm's choice: log-likelihood per character of the choice text (lm-eval's completion_len)."""
        return int(choice_pred_norm(self.lls, self.choice_chars))

    def stored(self) -> dict:
        """What the evaluation cache and the job blocks keep of a score; the rest comes from its request."""
        return {"task": self.task, "doc_id": self.doc_id, "lls": self.lls, "is_greedy": self.is_greedy, "n_tokens": self.n_tokens}

    @classmethod
    def from_stored(cls, request, stored: dict) -> ChoiceScores:
        """The score ``stored()`` kept, with the gold answer and choice texts of its ``request``."""
        return cls(
            request.task,
            request.doc_id,
            [float(x) for x in stored["lls"]],
            [bool(x) for x in stored["is_greedy"]],
            [int(x) for x in stored["n_tokens"]],
            request.gold,
            request.choice_texts,
        )


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
            out[i] = (ctx, whole[len(ctx) :])
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
        inp = (ctx + cont)[-(max_length + 1) :][:-1]  # lm-eval's left truncation and input shift
        inputs.append(inp)
        targets.append(cont)
        starts.append(len(inp) - len(cont))
    p = min(_common_prefix_len(inputs), min(len(s) for s in inputs) - 1)
    return _Plan(index, inputs[0][:p], [s[p:] for s in inputs], targets, starts)


PAD_BRANCH = -2  # branch id of padding; the prefix is branch -1, choice c's suffix is branch c


@dataclass
class _TreeRow:
    """One request as one sequence: the prefix, then every choice's suffix one after another.

    Each token carries its position in its own choice's input (a suffix restarts at P) and its
    branch; the attention mask lets a token see the prefix and the earlier tokens of its own
    branch only, so every choice is computed exactly as if it ran alone after the prefix."""

    plan: _Plan
    ids: list[int]
    positions: list[int]
    branches: list[int]
    score_at: list[list[int]]  # per choice: the row indices whose outputs predict its targets

    def __len__(self) -> int:
        return len(self.ids)


def tree_row(plan: _Plan) -> _TreeRow:
    n_prefix = len(plan.prefix)
    ids, positions, branches = list(plan.prefix), list(range(n_prefix)), [-1] * n_prefix
    score_at = []
    for c, suffix in enumerate(plan.suffixes):
        offset = len(ids)
        ids += suffix
        positions += range(n_prefix, n_prefix + len(suffix))
        branches += [c] * len(suffix)
        at = (plan.starts[c] + j for j in range(len(plan.targets[c])))
        score_at.append([p if p < n_prefix else offset + p - n_prefix for p in at])
    return _TreeRow(plan, ids, positions, branches, score_at)


def tree_attention_allowed(positions: torch.Tensor, branches: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(B, L) positions and branch ids -> (B, 1, L, L) bool, True where query i may attend to key j:
    j is in the prefix or in i's own branch, not after i, and (with a sliding ``window``, as
    transformers' ``sliding_window_overlay``) fewer than ``window`` positions back. Padding attends
    only to itself, so no softmax row is empty."""
    qp, kp = positions[:, :, None], positions[:, None, :]
    qb, kb = branches[:, :, None], branches[:, None, :]
    allowed = (kp <= qp) & ((kb == -1) | (kb == qb)) & (kb != PAD_BRANCH) & (qb != PAD_BRANCH)
    if window is not None:
        allowed &= kp > qp - window
    allowed |= torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)
    return allowed[:, None]


MASKED_ATTENTION = ("sdpa", "eager")  # implementations that take a prepared per-token mask


def check_attention_implementation(attn_implementation: str | None) -> None:
    if attn_implementation not in (None, *MASKED_ATTENTION):
        raise DietError(
            f"scoring needs per-token attention masks, which attn_implementation={attn_implementation!r} does not take",
            "load the model with attn_implementation='sdpa' (the default) or 'eager'",
        )


def attention_mask_for(allowed: torch.Tensor, attn_implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
    """A prepared 4D mask in the form the attention implementation reads: boolean for SDPA,
    additive (0 / dtype min) for eager."""
    check_attention_implementation(attn_implementation)
    if attn_implementation == "eager":
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)
    return allowed


# --------------------------------------------------------------------------------------------
class LoglikelihoodScorer:
    """Scores ``Request`` lists with a causal LM (any family with an adapter)."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        add_bos_token: bool | None = None,
        max_length: int | None = None,
        workers: int | None = None,
    ):
        self.model = model
        self.adapter = get_adapter(model)
        self.encoder = PairEncoder(tokenizer, add_bos_token)
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        self.batch_tokens = device_token_budget(model, int(batch_tokens), self.max_length)  # CPU: as given
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.encoder.prefix_token_id or 0))
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.workers = default_workers(self.device) if workers is None else max(1, int(workers))
        self.attn_implementation = getattr(model.config, "_attn_implementation", None)
        check_attention_implementation(self.attn_implementation)  # before any work, not at the first batch

    # -- public --------------------------------------------------------------------------
    def plan(self, requests: Sequence[Request]) -> list[_Plan]:
        pairs = [(c, k) for r in requests for c, k in zip(r.contexts, r.continuations)]
        enc = self.encoder.encode_pairs(pairs)
        plans, at = [], 0
        for i, r in enumerate(requests):
            plans.append(plan_request(i, enc[at : at + r.n_choices], self.max_length))
            at += r.n_choices
        return plans

    def batches(self, requests: Sequence[Request]) -> list[list[_TreeRow]]:
        """The forward passes ``score`` runs: rows sorted by length (longest first), cut into
        batches of similar length within the token budget."""
        rows = [tree_row(p) for p in self.plan(requests)]
        return [[rows[i] for i in batch] for batch in pack_by_length([len(r) for r in rows], self.batch_tokens, too_padded)]

    def score(self, requests: Sequence[Request], progress: Progress | None = None) -> list[ChoiceScores]:
        results: list[ChoiceScores | None] = [None] * len(requests)
        batches = self.batches(requests)
        done = 0

        def collect(i: int, batch_scores: list[tuple[list[float], list[bool]]]) -> None:
            nonlocal done
            for row, (lls, greedy) in zip(batches[i], batch_scores):
                plan, r = row.plan, requests[row.plan.index]
                results[plan.index] = ChoiceScores(
                    r.task, r.doc_id, lls, greedy, [len(t) for t in plan.targets], r.gold, r.choice_texts
                )
            done += len(batches[i])
            if progress is not None:
                progress(done / len(requests), f"scored {done}/{len(requests)} examples")

        run_batches(self._run_batch, batches, self.workers, collect)
        return results  # type: ignore[return-value]

    # -- one forward pass ----------------------------------------------------------------
    def _run_batch(self, batch: list[_TreeRow]) -> list[tuple[list[float], list[bool]]]:
        length = len(batch[0])
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), length), dtype=torch.long)
        branches = torch.full((len(batch), length), PAD_BRANCH, dtype=torch.long)
        for b, row in enumerate(batch):  # right padding: real tokens first
            ids[b, : len(row)] = torch.tensor(row.ids)
            positions[b, : len(row)] = torch.tensor(row.positions)
            branches[b, : len(row)] = torch.tensor(row.branches)
        positions, branches = positions.to(self.device), branches.to(self.device)

        def make(window: int | None) -> torch.Tensor:
            allowed = tree_attention_allowed(positions, branches, window)
            return attention_mask_for(allowed, self.attn_implementation, self.dtype)

        hidden = self.adapter.base_model()(
            input_ids=ids.to(self.device),
            attention_mask=self.adapter.prepared_attention_mask(make),
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state  # (B, L, D)

        # Vocabulary projection only at the positions that predict a continuation token
        sel_b, sel_i, targets, owner = [], [], [], []
        n_choices = 0
        for b, row in enumerate(batch):
            for c, at in enumerate(row.score_at):
                sel_b += [b] * len(at)
                sel_i += at
                targets += row.plan.targets[c]
                owner += [n_choices] * len(at)
                n_choices += 1
        # on hidden's device: with device_map="auto" the last block's GPU, not the embedding's
        dev = hidden.device
        picked = hidden[torch.tensor(sel_b, device=dev), torch.tensor(sel_i, device=dev)]  # (N, D)
        token_ll, token_greedy = self._token_scores(picked, torch.tensor(targets, device=dev))
        own = np.asarray(owner)
        per_choice_ll = np.bincount(own, weights=token_ll, minlength=n_choices)
        per_choice_greedy = np.bincount(own, weights=~token_greedy, minlength=n_choices) == 0
        results, at = [], 0
        for row in batch:
            k = len(row.score_at)
            results.append(([float(x) for x in per_choice_ll[at : at + k]], [bool(x) for x in per_choice_greedy[at : at + k]]))
            at += k
        return results

    def _token_scores(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) final hidden states and (N,) target ids -> log p(target) (N,) and argmax == target (N,)."""
        lls, greedy = [], []
        for i in range(0, len(targets), chunk):
            logits = self.adapter.logits(hidden[i : i + chunk])  # (n, V) fp32
            tgt = targets[i : i + chunk].to(logits.device)  # the lm_head may sit on another GPU
            # to the CPU before float64: MPS has no float64
            lls.append((logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).cpu().double())
            greedy.append((logits.argmax(-1) == tgt).cpu())
        return torch.cat(lls).numpy(), torch.cat(greedy).numpy()


def too_padded(padded: int, real: int, waste: float = 0.1, slack: int = 16) -> bool:
    """Scoring's batch rule: a batch stays within ``(1 + waste)`` of its real tokens (+ ``slack``, so
    very short rows still group). Every forward pass has a fixed cost (the weights stream through
    memory once), so a little padding beats many tiny passes."""
    return padded > (1 + waste) * real + slack


# --------------------------------------------------------------------------------------------
def perplexity(
    model, windows: np.ndarray, prefix_token_id: int | None = None, batch_size: int = 8, workers: int | None = None
) -> float:
    """exp(mean next-token NLL) over token windows (W, T); with ``prefix_token_id`` (e.g. Gemma's
    BOS) every window is preceded by it and all T tokens are predicted, else the first is context."""
    adapter = get_adapter(model)
    dev = next(model.parameters()).device
    width = windows.shape[1] + (prefix_token_id is not None)
    batch_size = max(1, device_token_budget(model, batch_size * width, width) // width)  # CPU: as given

    def batch_nll(start: int) -> tuple[float, int]:
        ids = torch.as_tensor(windows[start : start + batch_size], dtype=torch.long)
        if prefix_token_id is not None:
            ids = torch.cat([torch.full((len(ids), 1), prefix_token_id, dtype=torch.long), ids], dim=1)
        ids = ids.to(dev)
        hidden = adapter.base_model()(input_ids=ids).last_hidden_state[:, :-1]  # (B, T-1, D)
        total = 0.0
        for b in range(len(ids)):  # one row at a time keeps the (T, V) logits small
            logits = adapter.logits(hidden[b])  # (T-1, V) fp32
            total += float(F.cross_entropy(logits, ids[b, 1:].to(logits.device), reduction="sum"))
        return total, len(ids) * (ids.shape[1] - 1)

    workers = default_workers(dev) if workers is None else workers
    parts = run_batches(batch_nll, range(0, len(windows), batch_size), workers)
    return float(np.exp(sum(t for t, _ in parts) / sum(n for _, n in parts)))
