"""Tiny random models of every supported family, built locally from a config (nothing downloaded).

Used by tests and examples: hidden 64, 2 layers, 4 heads of 16, vocab 128.
"""

from __future__ import annotations

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from diet_explore.models.adapters import SUPPORTED_MODEL_TYPES, adapter_class

TINY_FAMILIES = SUPPORTED_MODEL_TYPES  # every supported family gets the per-family tests


def tiny_config(model_type: str, hidden_size: int = 64, tie: bool = True):
    """A tiny config of ``model_type``: shared sizes plus the fields its adapter's ``tiny_configs`` lists."""
    cls = adapter_class(model_type)
    if model_type not in cls.tiny_configs:
        raise KeyError(f"{cls.__name__}.tiny_configs has no entry for {model_type!r}: add one (can be empty)")
    kwargs = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(cls.tiny_configs[model_type])
    return CONFIG_MAPPING[model_type](**kwargs)


def tiny_model(model_type: str, seed: int = 0, tie: bool = True, hidden_size: int = 64):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, hidden_size, tie), dtype=torch.float32)
    # Random norm weights, so tests notice a norm that is sliced wrongly (defaults are all 1 or 0).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 - adapter_class(model_type).norm_offset))
    return model.eval()


def save_tiny_folder(folder, model_type: str = "llama", vocab_size: int = 128):
    """A tiny random model and a word-level tokenizer ("w0" ... "w126", "[UNK]") saved as a plain
    model folder, loadable by ``load_model`` with nothing downloaded; returns ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)} | {"[UNK]": vocab_size - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tiny_model(model_type).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    return folder
