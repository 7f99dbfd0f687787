"""Top-activating contexts: for each task, site and hidden dim, the token positions where the dim's
layer-averaged |activation| is largest, with the decoded text around them.

The profile records them (``hooks.ActivationStats`` with ``top_k > 0``) and the cache stores them
next to each task's scores (``tasks/<task>.contexts.safetensors``), so the dimension inspector
shows the text that drives a dim without the model or its tokenizer.

One ``TaskContexts`` per task holds, per site, a ``TopTokens`` (D, k) and one table of decoded
tokens: every token within ``radius`` of a recorded position, once, as an index into the task's
de-duplicated token strings. A token's string is ``tokenizer.decode([id])``, so a character that
the tokenizer splits over several byte-level tokens shows as U+FFFD in each of them.

Only numpy here: loading a cache never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diet_explore.core.errors import DietError

TOP_K = 16  # positions recorded per task, site and dim
CONTEXT_RADIUS = 8  # tokens kept on each side of a recorded position
NO_ROW = np.iinfo(np.int32).max  # an empty top-k slot: loses every tie and is dropped at the end


@dataclass(frozen=True)
class TopTokens:
    """The ``k`` token positions with the largest layer-averaged |activation|, per hidden dim.

    ``row``/``position``/``value``: (D, k) int32 / int32 / float32, best first. ``row`` indexes the
    task's profiled sequences (its ``sample_ids``), ``position`` the token within that sequence as
    it was profiled (after truncation to the last ``max_length`` tokens, BOS included). Order: value
    descending, then row, then position, so the result does not depend on how the sequences were
    batched.
    """

    row: np.ndarray
    position: np.ndarray
    value: np.ndarray

    @property
    def k(self) -> int:
        return int(self.value.shape[1])


def empty_top(hidden_size: int, k: int) -> TopTokens:
    """``k`` empty slots per dim (value -inf, row and position ``NO_ROW``)."""
    return TopTokens(
        np.full((hidden_size, k), NO_ROW, dtype=np.int32),
        np.full((hidden_size, k), NO_ROW, dtype=np.int32),
        np.full((hidden_size, k), -np.inf, dtype=np.float32),
    )


def merge_top(a: TopTokens, b: TopTokens, k: int) -> TopTokens:
    """The best ``k`` per dim of two candidate sets (value descending, then row, then position).
    The two sets must not share a position (they come from different batches)."""
    row = np.concatenate([a.row, b.row], axis=1)
    pos = np.concatenate([a.position, b.position], axis=1)
    val = np.concatenate([a.value, b.value], axis=1)
    order = np.lexsort((pos, row, -val.astype(np.float64)), axis=1)[:, :k]  # (D, k)
    return TopTokens(*(np.take_along_axis(x, order, axis=1) for x in (row, pos, val)))


def trim_top(top: TopTokens) -> TopTokens:
    """Drop the slots that stayed empty (a task with fewer than k tokens in all): every dim saw the
    same tokens, so the filled slots are the same leading columns for every dim."""
    filled = np.isfinite(top.value).all(0)
    n = int(filled.sum())
    return TopTokens(*(np.ascontiguousarray(x[:, :n]) for x in (top.row, top.position, top.value)))


@dataclass(frozen=True)
class Context:
    """One top-activating position of a dim, with its decoded neighbourhood."""

    row: int  # index into the task's sample_ids
    position: int  # token index in the profiled sequence
    value: float  # layer-averaged |activation| of the dim at that token
    tokens: list[str]  # decoded tokens around it (at most ``radius`` on each side)
    marked: int  # index in ``tokens`` of the activating token


@dataclass(frozen=True)
class TaskContexts:
    """One task's top-activating positions per site and the decoded tokens around them.

    ``token_row``/``token_position``: (M,) int32, sorted by (row, position), every token within
    ``radius`` of a recorded position; ``token_string``: (M,) int32 index into ``strings``.
    """

    top: dict[str, TopTokens]
    token_row: np.ndarray
    token_position: np.ndarray
    token_string: np.ndarray
    strings: tuple[str, ...]
    radius: int = CONTEXT_RADIUS
    _keys: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", _key(self.token_row, self.token_position))

    @property
    def k(self) -> int:
        return next(iter(self.top.values())).k if self.top else 0

    def window(self, row: int, position: int) -> tuple[list[str], int]:
        """(decoded tokens from ``position - radius`` to ``position + radius`` that exist, index of
        ``position`` among them)."""
        wanted = _key(np.full(2 * self.radius + 1, row), np.arange(position - self.radius, position + self.radius + 1))
        at = np.searchsorted(self._keys, wanted)
        found = (at < self._keys.size) & (self._keys[np.minimum(at, self._keys.size - 1)] == wanted)
        offsets = np.flatnonzero(found) - self.radius  # relative to the position
        tokens = [self.strings[int(self.token_string[i])] for i in at[found]]
        return tokens, int(np.flatnonzero(offsets == 0)[0]) if (offsets == 0).any() else -1

    def contexts(self, site: str, dim: int) -> list[Context]:
        """The recorded positions of ``dim`` at ``site``, best first, each with its decoded window."""
        top = self.top[site]
        out = []
        for j in range(top.k):
            row, pos = int(top.row[dim, j]), int(top.position[dim, j])
            tokens, marked = self.window(row, pos)
            out.append(Context(row, pos, float(top.value[dim, j]), tokens, marked))
        return out

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.to_tensors().values())

    # ------------------------------------------------------------------ (de)serialisation
    def to_tensors(self) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file (strings as one UTF-8 blob plus offsets)."""
        out: dict[str, np.ndarray] = {}
        for site, top in self.top.items():
            out[f"{site}.top.row"] = np.ascontiguousarray(top.row, dtype=np.int32)
            out[f"{site}.top.position"] = np.ascontiguousarray(top.position, dtype=np.int32)
            out[f"{site}.top.value"] = np.ascontiguousarray(top.value, dtype=np.float32)
        out["tokens.row"] = np.ascontiguousarray(self.token_row, dtype=np.int32)
        out["tokens.position"] = np.ascontiguousarray(self.token_position, dtype=np.int32)
        out["tokens.string"] = np.ascontiguousarray(self.token_string, dtype=np.int32)
        encoded = [s.encode("utf-8") for s in self.strings]
        out["strings.utf8"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        out["strings.offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)
        return out

    @classmethod
    def from_tensors(
        cls,
        arrays: dict[str, np.ndarray],
        sites: Sequence[str],
        hidden_size: int,
        token_counts: Sequence[int],
        radius: int,
        path: Path,
    ) -> TaskContexts:
        """Validated contexts from a task's contexts file; every problem is a ``DietError`` naming it."""

        def bad(what: str) -> DietError:
            return DietError(f"{path}: {what}", "re-run the profile for this task")

        def get(key: str, dtype, ndim: int) -> np.ndarray:
            if key not in arrays:
                raise bad(f"lacks array {key!r}")
            arr = arrays[key]
            if arr.dtype != dtype or arr.ndim != ndim:
                raise bad(f"{key} is {arr.dtype} with {arr.ndim} axes, expected {np.dtype(dtype)} with {ndim}")
            return arr

        counts = np.asarray(token_counts, dtype=np.int64)
        top: dict[str, TopTokens] = {}
        for site in sites:
            row, pos, val = (
                get(f"{site}.top.{n}", t, 2) for n, t in (("row", np.int32), ("position", np.int32), ("value", np.float32))
            )
            if not row.shape == pos.shape == val.shape or row.shape[0] != hidden_size:
                raise bad(f"{site}.top arrays have shapes {row.shape}, {pos.shape}, {val.shape}; expected ({hidden_size}, k)")
            if not np.isfinite(val).all():
                raise bad(f"{site}.top.value contains NaN or inf")
            if row.size and (row.min() < 0 or row.max() >= counts.size or pos.min() < 0 or (pos >= counts[row]).any()):
                raise bad(f"{site}.top names a sample or token position that the task does not have")
            top[site] = TopTokens(row, pos, val)
        t_row, t_pos, t_str = (get(f"tokens.{n}", np.int32, 1) for n in ("row", "position", "string"))
        blob, offsets = get("strings.utf8", np.uint8, 1), get("strings.offsets", np.int64, 1)
        if not t_row.shape == t_pos.shape == t_str.shape:
            raise bad("tokens.row, tokens.position and tokens.string differ in length")
        if offsets.size < 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] > blob.size:
            raise bad("strings.offsets is not an increasing list of offsets into strings.utf8")
        keys = _key(t_row, t_pos)
        if keys.size and (np.diff(keys) <= 0).any():
            raise bad("tokens are not sorted by (row, position) without repeats")
        if t_str.size and (t_str.min() < 0 or t_str.max() >= offsets.size - 1):
            raise bad("tokens.string points past the string table")
        raw = blob.tobytes()
        try:
            strings = tuple(raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:]))
        except UnicodeDecodeError:
            raise bad("strings.utf8 is not valid UTF-8") from None
        for a in (*[x for t in top.values() for x in (t.row, t.position, t.value)], t_row, t_pos, t_str):
            a.setflags(write=False)
        return cls(top, t_row, t_pos, t_str, strings, int(radius))


def _key(row: np.ndarray, position: np.ndarray) -> np.ndarray:
    """One sortable int64 per (row, position)."""
    return (np.asarray(row, dtype=np.int64) << 32) + np.asarray(position, dtype=np.int64)


def build_contexts(
    top: dict[str, TopTokens], seqs: Sequence[Sequence[int]], decode: Callable[[int], str], radius: int = CONTEXT_RADIUS
) -> TaskContexts:
    """Attach the decoded neighbourhood of every recorded position: the union of the windows, each
    token once, its string decoded once per distinct token id (``decode``, e.g.
    ``lambda i: tokenizer.decode([i])``)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    rows = np.concatenate([t.row.ravel() for t in top.values()]).astype(np.int64)
    pos = np.concatenate([t.position.ravel() for t in top.values()]).astype(np.int64)
    centres = np.unique(_key(rows, pos))
    c_row, c_pos = centres >> 32, centres & 0xFFFFFFFF
    w_pos = c_pos[:, None] + np.arange(-radius, radius + 1)[None, :]  # (C, 2r+1)
    w_row = np.broadcast_to(c_row[:, None], w_pos.shape)
    ok = (w_pos >= 0) & (w_pos < lengths[w_row])
    keys = np.unique(_key(w_row[ok], w_pos[ok]))
    t_row, t_pos = (keys >> 32).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.int32)
    index: dict[int, int] = {}
    strings: list[str] = []
    t_str = np.empty(keys.size, dtype=np.int32)
    for i, (r, p) in enumerate(zip(t_row.tolist(), t_pos.tolist())):
        tid = int(seqs[r][p])
        if tid not in index:
            index[tid] = len(strings)
            strings.append(decode(tid))
        t_str[i] = index[tid]
    # the same string from two ids (rare) is stored once
    unique: dict[str, int] = {}
    remap = np.array([unique.setdefault(s, len(unique)) for s in strings], dtype=np.int32)
    return TaskContexts(dict(top), t_row, t_pos, remap[t_str] if strings else t_str, tuple(unique), int(radius))
