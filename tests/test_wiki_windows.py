"""Wiki token windows: the same windows as tokenizing the text, shared by equal tokenizers, and
kept on disk so a fresh process does not tokenize 2 MB again."""

from __future__ import annotations

import numpy as np
import pytest

from diet_explore.core.assets import wiki_text_path
from diet_explore.models.builtin import store_path
from diet_explore.tasks import wiki


class CountingTokenizer:
    """A fast tokenizer whose calls are counted (special methods are looked up on the type, so
    wrapping is the way to see them)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.backend_tokenizer = inner.backend_tokenizer

    def __call__(self, *a, **k):
        self.calls += 1
        return self.inner(*a, **k)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty in-memory table and a private store folder; yields a loader of SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    monkeypatch.setattr(wiki, "_WINDOWS", {})
    monkeypatch.setattr(wiki, "data_home", lambda: tmp_path)
    return lambda: CountingTokenizer(AutoTokenizer.from_pretrained(store_path("smollm2-135m")))


@pytest.mark.slow
def test_windows_are_the_tokenized_text_cut_into_rows(fresh):
    tok = fresh()
    windows = wiki.wiki_token_windows(tok, 128)
    ids = tok.inner(wiki_text_path().read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    assert windows.shape == (len(ids) // 128, 128) and windows.dtype == np.int64
    assert windows.ravel().tolist() == ids[: windows.size]
    assert not windows.flags.writeable  # shared: nobody may edit it in place


@pytest.mark.slow
def test_equal_tokenizers_share_one_tokenization_and_a_fresh_process_reads_the_disk(fresh, tmp_path, monkeypatch):
    first, second = fresh(), fresh()
    a = wiki.wiki_token_windows(first, 128)
    b = wiki.wiki_token_windows(second, 128)  # another object (e.g. the pruned folder's copy), same definition
    assert (first.calls, second.calls) == (1, 0) and b is a
    (saved,) = (tmp_path / "wiki-windows").iterdir()
    monkeypatch.setattr(wiki, "_WINDOWS", {})  # a new process
    third = fresh()
    c = wiki.wiki_token_windows(third, 128)
    assert third.calls == 0 and np.array_equal(c, a)
    assert wiki.wiki_token_windows(third, 64).shape[1] == 64 and third.calls == 1  # another window, another entry
    assert saved.exists()


@pytest.mark.slow
def test_a_damaged_file_is_rebuilt_with_a_warning(fresh, tmp_path, monkeypatch):
    expected = wiki.wiki_token_windows(fresh(), 128).copy()
    (saved,) = (tmp_path / "wiki-windows").iterdir()
    saved.write_bytes(saved.read_bytes()[:1000])
    monkeypatch.setattr(wiki, "_WINDOWS", {})
    tok = fresh()
    with pytest.warns(UserWarning, match="rebuilding"):
        again = wiki.wiki_token_windows(tok, 128)
    assert tok.calls == 1 and np.array_equal(again, expected)
    monkeypatch.setattr(wiki, "_WINDOWS", {})
    assert np.array_equal(wiki.wiki_token_windows(fresh(), 128), expected)  # the rebuilt file reads cleanly


def test_a_tokenizer_without_a_definition_is_kept_in_memory_only(fresh, tmp_path):
    from test_scoring import WordTokenizer

    tok = WordTokenizer()
    windows = wiki.wiki_token_windows(tok, 32)
    assert wiki.wiki_token_windows(tok, 32) is windows
    assert not (tmp_path / "wiki-windows").exists()
