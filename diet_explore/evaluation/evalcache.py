"""A disk cache of one model's quick-evaluation results, so a tuning loop scores the dense model once.

``diet-explore eval --model pruned --compare-to smollm2-135m`` evaluates the same dense model on
the same examples every time a mask changes; that is half of each run. Like lm-eval's
``--use_cache``, results are stored per model and looked up by a key of everything that
determines them:

* the model's files: name, size and modification time (ns) of every file of its folder (weights,
  config, tokenizer), the same test ``make`` uses, so rewriting a folder (``prune --overwrite``)
  invalidates it; a hub model by its resolved commit hash (hub snapshots are content-addressed);
* the requests themselves (task, document id, every context and continuation, gold), which covers
  the task data, the seed, the limit and the excluded calibration ids;
* perplexity settings and the wiki text file (name, size, mtime); device type and dtype; the versions of diet-explore, torch and transformers;
  ``FORMAT_VERSION``, bumped whenever scoring changes what it computes.

Batch size, token budget and worker count are not in the key: they change float rounding only
(predictions are identical; tests/test_scoring.py), and the entry records the ones it was made with.

Entries are JSON (no pickle), written atomically; an unreadable or mismatched entry, or one with a
wrongly typed or non-finite value, is reported and recomputed, never trusted. A model the key cannot describe (an in-memory model, a hub model
without a commit hash) is simply not cached.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diet_explore.core import atomic
from diet_explore.core.assets import data_home, env_path
from diet_explore.core.clock import utc_timestamp
from diet_explore.core.config import is_finite_number, is_whole_number

FORMAT_VERSION = 1
KIND = "diet-explore-eval-cache"
STORE_LOCK = "store"  # locked() holds <root>/.store.lock while a writer works (removed after)


EVAL_CACHE_ENV = "DIET_EXPLORE_EVAL_CACHE"


def default_root() -> Path:
    """``DIET_EXPLORE_EVAL_CACHE``, else ``<data home>/eval-cache`` (``<repo>/.store/eval-cache`` in a checkout)."""
    return env_path(EVAL_CACHE_ENV) or data_home() / "eval-cache"


def folder_fingerprint(folder: str | Path) -> str:
    """Digest of every file's name, size and mtime in a model folder (symlinks resolved, so a hub
    snapshot's content-addressed blob names count too)."""
    return files_fingerprint(p for p in Path(folder).iterdir() if p.is_file())


def files_fingerprint(files) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(json.dumps([f.name, f.resolve().name, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def model_fingerprint(name_or_path: str) -> str | None:
    """What identifies a model's weights and tokenizer without reading them; None when nothing can."""
    from diet_explore.models.builtin import store_path
    from diet_explore.models.loading import load_config, resolve_source

    kind, loc = resolve_source(name_or_path)
    if kind == "builtin":
        folder = store_path(loc)
        return "folder:" + folder_fingerprint(folder) if (folder / "config.json").exists() else None
    if kind == "local":
        return "folder:" + folder_fingerprint(loc)
    commit = getattr(load_config(name_or_path), "_commit_hash", None)
    return f"hub:{name_or_path}@{commit}" if commit else None


def requests_fingerprint(requests: dict[str, list]) -> str:
    h = hashlib.sha256()
    for task, reqs in requests.items():
        for r in reqs:
            h.update(json.dumps([task, r.doc_id, list(r.contexts), list(r.continuations), r.gold]).encode())
    return h.hexdigest()


def cache_key(model_fp: str, requests: dict[str, list], config, device: str, dtype) -> str:
    """The entry name for a model fingerprint, requests, an EvalConfig, a device ("cpu", "cuda:1")
    and a dtype (torch.float32 or "float32")."""
    import torch
    import transformers

    from diet_explore import __version__
    from diet_explore.core.assets import wiki_text_path
    from diet_explore.models.loading import dtype_name

    ppl = bool(config.perplexity)
    parts = {
        "format": FORMAT_VERSION,
        "model": model_fp,
        "requests": requests_fingerprint(requests),
        "perplexity": ppl,
        "ppl_windows": int(config.ppl_windows) if ppl else None,
        "wiki": files_fingerprint([wiki_text_path()]) if ppl else None,
        "device": device.split(":")[0],
        "dtype": dtype_name(dtype),
        "diet_explore": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CachedEval:
    """One stored evaluation: the raw per-request scores and the perplexity, from which
    ``evaluate.result_from_scores`` rebuilds the full result."""

    key: str
    created: str
    model_name: str
    info: dict[str, Any]
    scores: list[dict[str, Any]]  # per request, in request order: task, doc_id, lls, is_greedy, n_tokens
    perplexity: float | None
    wall_time_s: float
    made_with: dict[str, Any]  # batch_tokens, workers, batch_size of the run that computed it


# field -> (check, what it must be); an entry with another value is damaged, never reused
_ENTRY_FIELDS: dict[str, tuple[Any, str]] = {
    "created": (lambda v: isinstance(v, str), "a string"),
    "model_name": (lambda v: isinstance(v, str), "a string"),
    "info": (lambda v: isinstance(v, dict) and isinstance(v.get("name", ""), (str, type(None))), "an object"),
    "scores": (lambda v: isinstance(v, list), "a list"),
    "perplexity": (lambda v: v is None or (is_finite_number(v) and v > 0), "a finite number > 0 or null"),
    "wall_time_s": (lambda v: is_finite_number(v) and v >= 0, "a finite number ≥ 0"),
    "made_with": (lambda v: isinstance(v, dict), "an object"),
}
_SCORE_LISTS: dict[str, tuple[Any, str]] = {  # per choice, in a stored score (ChoiceScores.stored)
    "lls": (is_finite_number, "finite numbers"),
    "is_greedy": (lambda v: isinstance(v, bool), "true/false"),
    "n_tokens": (lambda v: is_whole_number(v) and v >= 0, "whole numbers ≥ 0"),
}


def _checked_entry(raw: Any, key: str, requests: dict[str, list]) -> CachedEval:
    """The entry ``raw`` stands for when it holds exactly ``requests``' examples, every value of
    the type and range a result is rebuilt from; else a ValueError saying what is wrong."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND or raw.get("format") != FORMAT_VERSION or raw.get("key") != key:
        raise ValueError("not an entry of this cache format")
    missing = [k for k in CachedEval.__dataclass_fields__ if k not in raw]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    for name, (ok, what) in _ENTRY_FIELDS.items():
        if not ok(raw[name]):
            raise ValueError(f"its {name} is {raw[name]!r:.40}, not {what}")
    expected = [(t, r.doc_id, r.n_choices) for t, reqs in requests.items() for r in reqs]
    if len(raw["scores"]) != len(expected):
        raise ValueError("its examples are not the requested ones")
    for i, (s, (task, doc_id, n)) in enumerate(zip(raw["scores"], expected)):
        if not isinstance(s, dict) or any(k not in s for k in ("task", "doc_id", *_SCORE_LISTS)):
            raise ValueError(f"its score {i} is not a stored score")
        if s["task"] != task or s["doc_id"] != doc_id or not isinstance(s["lls"], list) or len(s["lls"]) != n:
            raise ValueError("its examples are not the requested ones")
        for name, (ok, what) in _SCORE_LISTS.items():
            values = s[name]
            if not isinstance(values, list) or len(values) != n or not all(ok(v) for v in values):
                raise ValueError(f"its score {i} ({task} example {doc_id}) has {name} {values!r:.40}, not {n} {what}")
    return CachedEval(**{k: raw[k] for k in CachedEval.__dataclass_fields__})


class EvalCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        # what a message calls a root the caller did not give: the variable that set it, or the default
        self._default_name = None if root is not None else (EVAL_CACHE_ENV if env_path(EVAL_CACHE_ENV) else "evaluation cache")

    def key_for(self, name_or_path: str, requests: dict[str, list], config, device: str, dtype) -> str | None:
        """The key of ``name_or_path``'s evaluation, or None when the model cannot be fingerprinted."""
        fingerprint = model_fingerprint(name_or_path)
        return cache_key(fingerprint, requests, config, device, dtype) if fingerprint else None

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def check(self, what: str = "--eval-cache") -> None:
        """Refuse now a folder ``save`` could not write after minutes of evaluation (a file, read-only).
        The message names ``what`` when the caller gave the root, else ``DIET_EXPLORE_EVAL_CACHE``
        when that set it (never a flag the user did not give)."""
        atomic.check_writable(self.root, self._default_name or what, folder=True)

    def load(self, key: str, requests: dict[str, list]) -> CachedEval | None:
        """The entry for ``key``, or None (missing, unreadable or not matching ``requests``; the
        last two with a warning, and the entry is then overwritten by the fresh result)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return _checked_entry(atomic.loads_json(path.read_text()), key, requests)
        except (OSError, ValueError) as exc:  # _checked_entry says what is wrong in words
            warnings.warn(f"ignoring eval cache entry {path} ({exc}); recomputing", stacklevel=2)
            return None

    def save(self, key: str, result, info: dict[str, Any], made_with: dict[str, Any]) -> Path:
        """Store an ``EvalResult``'s scores and perplexity under ``key``; returns the path."""
        entry = {
            "kind": KIND,
            "format": FORMAT_VERSION,
            "key": key,
            "created": utc_timestamp(),
            "model_name": result.model_name,
            "info": info,
            "scores": [s.stored() for s in result.scores],
            "perplexity": result.perplexity,
            "wall_time_s": result.wall_time_s,
            "made_with": made_with,
        }
        path = self.path(key)
        with atomic.locked(self.root / STORE_LOCK):  # two evaluations of one model at once: one writes after the other
            atomic.write_text(path, json.dumps(entry) + "\n")
        return path
