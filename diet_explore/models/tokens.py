"""What the tokenizer puts before a text: the one BOS rule that scoring, perplexity and profiling share."""

from __future__ import annotations


def bos_prefix(tokenizer) -> int | None:
    """The BOS id when the tokenizer prepends it by default (Gemma), else None (SmolLM2, Llama-3).

    lm-eval's HF backend calls the tokenizer with its own default, so this decides whether a
    request starts with BOS; profiling and perplexity put the same token before generic text."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None
