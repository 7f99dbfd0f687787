"""Scoring in blocks of examples interleaved across tasks, so results arrive as they are computed.

A block is the next few held-out examples of *every* task (round-robin over the tasks, in request
order). The held-out ids are a seeded random draw, so at any moment the scored part of an
evaluation is a random subsample of every task, never "the first tasks" or "the longest
examples": a running paired delta is an unbiased estimate with an honest CI, from the first block.

Blocks start small (``BLOCK_FIRST`` examples per task, so the first numbers come within seconds)
and double up to ``BLOCK_MAX`` (fewer, fuller forward passes later: a block is batched by length
on its own, and small blocks pad more). Within a block, rows are sorted by length and batched
exactly as ``LoglikelihoodScorer.score`` does; the batches of every block of every model run
through one ``parallel.run_batches`` call in block order, so the workers never wait for each
other at a block boundary. Batch composition changes float rounding only: predictions are the
same as scoring all requests in one call (tests/test_blocks.py, benchmarks/bench_jobs.py).

A ``ScoreLog`` keeps every finished block on disk (one file per model and block, written once,
atomically), so an interrupted evaluation resumes where it stopped and reuses what was scored.
A ``should_stop`` callback is asked after every forward pass; when it names a reason, scoring
stops there with ``Stopped`` and every finished block is kept.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from diet_explore.core import atomic
from diet_explore.evaluation.parallel import run_batches
from diet_explore.evaluation.scoring import ChoiceScores, LoglikelihoodScorer
from diet_explore.tasks.registry import Request

BLOCK_FIRST = 1  # examples per task in the first block: the first numbers within seconds
# and at most this many later. A running CI can only be read at a block's end, so smaller blocks
# give a decision sooner and batch a little worse: on SmolLM2, 7 x 50 examples, DIET vs random
# (bench_jobs.py), a cap of 16 showed the decision at 31 examples per task (63.7 s), 12 at 27
# (51.6 s), 8 at 23 (47.8 s, but 1.06x one scorer call against 0.91-1.0x for 12 and 16).
BLOCK_MAX = 12

Progress = Callable[[float, str], None]
StopCheck = Callable[[], "str | None"]


class Stopped(Exception):
    """Scoring stopped between forward passes because ``should_stop`` said why (``reason``);
    every block finished before it is kept (``ScoreLog``, ``on_block``)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def block_bounds(n: int, first: int = BLOCK_FIRST, cap: int = BLOCK_MAX) -> list[tuple[int, int]]:
    """``[start, stop)`` example ranges per task for ``n`` examples: sizes first, 2·first, … up to cap."""
    out, start, size = [], 0, max(1, first)
    while start < n:
        out.append((start, min(n, start + size)))
        start += size
        size = min(max(cap, 1), size * 2)
    return out


def interleaved_blocks(requests: Mapping[str, Sequence[Request]]) -> list[list[Request]]:
    """The requests as blocks: block k holds examples ``block_bounds[k]`` of every task, tasks in order."""
    n = max((len(r) for r in requests.values()), default=0)
    blocks = [[r for reqs in requests.values() for r in reqs[a:b]] for a, b in block_bounds(n)]
    return [b for b in blocks if b]


@dataclass(frozen=True, eq=False)  # compared by identity: the requests are lists
class Unit:
    """One block of one model's requests: what is scored, reported and stored as a whole."""

    label: str  # which model ("dense", "pruned", "diet@0.1", ...)
    index: int  # block number
    requests: tuple[Request, ...]


class ScoreLog:
    """Finished blocks on disk: ``<folder>/<label>/<block>.json``, each written once, atomically.

    A file is trusted only when it holds exactly its block's examples (task, doc id, number of
    choices); anything else (a damaged file, other examples) is ignored and scored again."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, unit: Unit) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.@=-]", "_", unit.label) or "_"
        return self.folder / safe / f"{unit.index:05d}.json"

    def load(self, unit: Unit) -> list[ChoiceScores] | None:
        path = self.path(unit)
        try:
            raw = atomic.loads_json(path.read_text())
            if raw.get("label") != unit.label or len(raw["scores"]) != len(unit.requests):
                return None
            out = []
            for r, s in zip(unit.requests, raw["scores"]):
                if (s["task"], s["doc_id"], len(s["lls"])) != (r.task, r.doc_id, r.n_choices):
                    return None
                out.append(ChoiceScores.from_stored(r, s))
            return out
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, unit: Unit, scores: Sequence[ChoiceScores]) -> None:
        body = {"label": unit.label, "index": unit.index, "scores": [s.stored() for s in scores]}
        atomic.write_text(self.path(unit), json.dumps(body) + "\n")


def score_blocks(
    scorers: Mapping[str, LoglikelihoodScorer],
    requests: Mapping[str, Sequence[Request]],
    *,
    log: ScoreLog | None = None,
    on_block: Callable[[Unit, list[ChoiceScores]], None] | None = None,
    should_stop: StopCheck | None = None,
    progress: Progress | None = None,
    busy: dict[str, float] | None = None,
) -> dict[str, list[ChoiceScores]]:
    """Every request scored by every model in ``scorers`` (label -> scorer), in interleaved blocks:
    block 0 of each model, then block 1 of each, ... Returns per label the scores in request
    order (the order ``LoglikelihoodScorer.score`` returns them in).

    ``log``: blocks already stored there are reused, the others are stored as they finish.
    ``on_block(unit, scores)`` runs for every finished block (reused ones first), in the calling
    thread. ``should_stop()`` is asked after every forward pass; a reason stops with ``Stopped``.
    ``busy`` (label -> seconds) gets each model's forward-pass time added to it."""
    blocks = interleaved_blocks(requests)
    units = [Unit(label, k, tuple(block)) for k, block in enumerate(blocks) for label in scorers]
    finished: dict[Unit, list[ChoiceScores]] = {}
    total = sum(len(u.requests) for u in units)
    report = progress or (lambda f, m: None)
    for unit in units:
        reused = log.load(unit) if log is not None else None
        if reused is not None:
            finished[unit] = reused
            if on_block is not None:
                on_block(unit, reused)
    todo = [u for u in units if u not in finished]
    scored = sum(len(u.requests) for u in finished)
    if finished:
        report(scored / max(total, 1), f"reused {scored}/{total} scored examples")
    if should_stop is not None and (why := should_stop()):
        raise Stopped(why)

    timing = threading.Lock()
    plans: dict[tuple, list] = {}

    def batches(unit: Unit) -> list:
        """The unit's forward passes; planned once per block for every model with the same tokenizer
        and limits (the pruned copies of one model), since planning is tokenization."""
        sc = scorers[unit.label]
        key = (id(sc.encoder.tokenizer), sc.max_length, sc.batch_tokens, unit.index)
        if key not in plans:
            plans[key] = sc.batches(unit.requests)
        return plans[key]

    def run_wave(wave: list[Unit]) -> None:
        nonlocal scored
        items: list[tuple[int, list]] = [(i, batch) for i, unit in enumerate(wave) for batch in batches(unit)]
        pending = [0] * len(wave)
        for i, _ in items:
            pending[i] += 1
        rows_done: list[list[ChoiceScores | None]] = [[None] * len(u.requests) for u in wave]

        def run(item: tuple[int, list]):
            i, batch = item
            label = wave[i].label
            t0 = time.perf_counter()
            out = scorers[label]._run_batch(batch)
            if busy is not None:
                with timing:
                    busy[label] = busy.get(label, 0.0) + time.perf_counter() - t0
            return out

        def collect(n: int, batch_scores) -> None:
            nonlocal scored
            i, batch = items[n]
            unit = wave[i]
            for row, (lls, greedy) in zip(batch, batch_scores):
                r = unit.requests[row.plan.index]
                rows_done[i][row.plan.index] = ChoiceScores(
                    r.task, r.doc_id, lls, greedy, [len(t) for t in row.plan.targets], r.gold, r.choice_texts
                )
            pending[i] -= 1
            if pending[i] == 0:
                scores = list(rows_done[i])  # type: ignore[arg-type]
                finished[unit] = scores
                scored += len(scores)
                if log is not None:
                    log.save(unit, scores)
                if on_block is not None:
                    on_block(unit, scores)
                report(scored / max(total, 1), f"scored {scored}/{total} examples")
            if should_stop is not None and (why := should_stop()):
                raise Stopped(why)

        run_batches(run, items, workers, collect)

    workers = max((s.workers for s in scorers.values()), default=1)
    # The first block to be scored runs on its own, so its numbers do not wait for every later
    # block to be planned (tokenized); the rest run as one stream, with no wait between blocks.
    first = [u for u in todo if u.index == todo[0].index] if todo else []
    for wave in (first, [u for u in todo if u not in first]):
        if wave:
            run_wave(wave)
    position = {id(r): i for i, r in enumerate(r for reqs in requests.values() for r in reqs)}
    out: dict[str, list[ChoiceScores]] = {}
    for label in scorers:
        ordered: list = [None] * len(position)
        for u in units:
            if u.label == label:
                for r, s in zip(u.requests, finished[u]):
                    ordered[position[id(r)]] = s
        out[label] = ordered
    return out
