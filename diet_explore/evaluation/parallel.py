"""Independent forward passes on several CPU workers at once.

On a small CPU a forward pass does not use its cores well with intra-op threads alone: matrix
multiplications run about 10% faster as two single-threaded calls side by side than as one
two-threaded call, and the element-wise work, attention and Python overhead between them do not
split across threads at all. So batches that do not depend on each other (scoring batches,
perplexity windows) run on ``workers`` Python threads, each with its share of the intra-op threads.
Torch releases the GIL inside every op, and a batch always runs with the same thread count, so
results do not depend on which worker took it. On a GPU there is one worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def default_workers(device: torch.device | str, threads: int | None = None) -> int:
    """Two workers on a CPU with at least two intra-op threads, else one."""
    threads = torch.get_num_threads() if threads is None else threads
    return 2 if torch.device(device).type == "cpu" and threads >= 2 else 1


def run_batches(
    fn: Callable[[T], R], items: Sequence[T], workers: int = 1, on_done: Callable[[int, R], None] | None = None
) -> list[R]:
    """``[fn(item) for item in items]`` under ``torch.inference_mode``, on ``workers`` threads that
    take items in order (put the largest first). ``on_done(index, result)`` runs in the calling
    thread as each item finishes. The first error stops the workers and is raised here."""
    results: list = [None] * len(items)
    if workers <= 1 or len(items) <= 1:
        with torch.inference_mode():
            for i, item in enumerate(items):
                results[i] = fn(item)
                if on_done is not None:
                    on_done(i, results[i])
        return results

    restore = _borrow_threads()
    per_worker = max(1, restore // workers)
    todo = iter(enumerate(items))
    take = threading.Lock()
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        torch.set_num_threads(per_worker)  # this thread's intra-op threads
        with torch.inference_mode():
            while not stop.is_set():
                with take:
                    nxt = next(todo, None)
                if nxt is None:
                    return
                i, item = nxt
                try:
                    done.put((i, fn(item), None))
                except BaseException as exc:  # handed to the caller, which re-raises it
                    stop.set()
                    done.put((i, None, exc))
                    return

    threads = [threading.Thread(target=work, daemon=True, name=f"diet-worker-{k}") for k in range(min(workers, len(items)))]
    try:
        for t in threads:
            t.start()
        for _ in range(len(items)):
            i, result, exc = _get(done, threads)
            if exc is not None:
                raise exc
            results[i] = result
            if on_done is not None:
                on_done(i, result)
    finally:
        stop.set()
        for t in threads:
            t.join()
        _return_threads()
    return results


# A worker's set_num_threads also sets the default that new threads start from, so the count is
# restored when the last of overlapping calls (two app sessions scoring at once) ends, to what it
# was before the first began: each call restoring its own reading would keep a lowered value.
_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


def _borrow_threads() -> int:
    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
        _threads_users += 1
        return _threads_before


def _return_threads() -> None:
    global _threads_users
    with _threads_lock:
        _threads_users -= 1
        if _threads_users == 0:
            torch.set_num_threads(_threads_before)


def _get(done: queue.Queue, threads: list[threading.Thread]):
    """The next finished item; polls so that Ctrl-C reaches the calling thread."""
    while True:
        try:
            return done.get(timeout=0.2)
        except queue.Empty:
            if not any(t.is_alive() for t in threads) and done.empty():
                raise RuntimeError("scoring workers stopped without a result") from None
