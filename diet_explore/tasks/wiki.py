"""Generic text (wiki): token windows for task-agnostic calibration and held-out perplexity.

The first half of the windows is the calibration pool (the ``wiki`` baseline), the second half is
held out for perplexity, so the two never overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.core import atomic
from diet_explore.core.assets import data_home, wiki_text_path
from diet_explore.core.errors import DietError
from diet_explore.tasks.data import DEFAULT_SEED
from diet_explore.tasks.registry import GENERIC_TASK

# ------------------------------------------------------------------------------------------------
# Generic text (wiki): task-agnostic calibration and held-out perplexity
# ------------------------------------------------------------------------------------------------
WIKI_TASK = GENERIC_TASK  # the cache and eval name of the wiki text set (one name: tasks.registry)


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """Digest of a fast tokenizer's full definition (``backend_tokenizer.to_str()``: normalizer,
    pre-tokenizer, model, post-processor), so equal tokenizers share work whatever folder they came
    from (a pruned folder holds a copy of its source's); None for tokenizers without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    with contextlib.suppress(TypeError):  # remembered per object: serialising Gemma's takes 0.5 s
        if tokenizer in _FINGERPRINTS:
            return _FINGERPRINTS[tokenizer]
    digest = hashlib.sha256(f"{type(tokenizer).__name__}\n{backend.to_str()}".encode()).hexdigest()[:20]
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tokenizer] = digest
    return digest


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_WINDOWS: dict[tuple[Any, int], np.ndarray] = {}  # (fingerprint or tokenizer, window) -> windows
_WINDOWS_KEPT = 4
_WINDOWS_LOCK = threading.Lock()


def wiki_token_windows(tokenizer: Any, window: int = 128) -> np.ndarray:
    """Non-overlapping windows (W, window) of token ids over the wiki text (no special tokens).

    The first half of the windows is the calibration pool, the second half held out for perplexity.
    Tokenizing the 2 MB text takes about 2 s, so the windows are kept in memory per tokenizer
    definition and, for fast tokenizers, on disk as ``.npy`` next to the model store (keyed by the
    tokenizer's and the text's digests; a file that cannot be read is rebuilt)."""
    path = wiki_text_path()
    fingerprint = tokenizer_fingerprint(tokenizer)
    key = (fingerprint or tokenizer, window)  # the object itself (kept alive here), never a reusable id()
    with _WINDOWS_LOCK:
        if key in _WINDOWS:
            return _WINDOWS[key]
    text = path.read_text(encoding="utf-8")
    disk = None
    if fingerprint is not None:
        text_digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        disk = data_home() / "wiki-windows" / f"{fingerprint}-{text_digest}-{window}.npy"
    windows = _read_windows(disk, window) if disk is not None else None
    if windows is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // window
        windows = np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)
        if disk is not None:
            with contextlib.suppress(OSError):  # a read-only store only costs the next process 2 s
                buf = io.BytesIO()
                np.save(buf, windows.astype(np.int32), allow_pickle=False)
                atomic.write_bytes(disk, buf.getvalue())
    windows.setflags(write=False)  # shared between callers and threads
    with _WINDOWS_LOCK:
        while len(_WINDOWS) >= _WINDOWS_KEPT:
            _WINDOWS.pop(next(iter(_WINDOWS)))
        _WINDOWS[key] = windows
    return windows


def _read_windows(path: Path, window: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        warnings.warn(f"rebuilding {path} ({exc})", stacklevel=3)
        return None
    if arr.ndim != 2 or arr.shape[1] != window or arr.dtype != np.int32:
        warnings.warn(f"rebuilding {path} (shape {arr.shape}, dtype {arr.dtype})", stacklevel=3)
        return None
    return arr.astype(np.int64)


def wiki_calibration_ids(n_windows: int, n: int, seed: int = DEFAULT_SEED) -> list[int]:
    pool = n_windows // 2
    if n > pool:
        raise DietError(f"wiki text has {pool} calibration windows; {n} asked for", f"use --samples {pool} or fewer")
    return sorted(int(i) for i in np.random.default_rng([seed, 7]).permutation(pool)[:n])


def wiki_heldout_ids(n_windows: int, n: int) -> list[int]:
    start = n_windows // 2
    if n > n_windows - start:
        raise DietError(
            f"wiki text has {n_windows - start} held-out windows; {n} asked for",
            f"use --ppl-windows {n_windows - start} or fewer (every held-out window of this tokenizer), or --no-perplexity",
        )
    return list(range(start, start + n))


def max_heldout_windows(window: int) -> int:
    """The most held-out windows of ``window`` tokens any tokenizer can give, known before a model
    loads: a token covers at least one byte of the text (byte-level BPE, SentencePiece's byte
    fallback), so there are at most ``bytes / window`` windows (one more for a tokenizer's added
    prefix), and half of them are held out. A tokenizer's own count is lower (``wiki_heldout_ids``)."""
    n = wiki_text_path().stat().st_size // window + 1
    return n - n // 2


def check_heldout_windows(n: int, window: int) -> None:
    """Refuse, before a model loads, a perplexity window count no tokenizer could give."""
    most = max_heldout_windows(window)
    if n > most:
        raise DietError(
            f"--ppl-windows {n} is more than the wiki text holds (at most {most} held-out windows of {window} tokens)",
            f"the exact limit is the model tokenizer's, below {most}: e.g. --ppl-windows 32 (the default), or --no-perplexity",
        )
