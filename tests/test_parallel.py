"""run_batches: order, progress in the calling thread, errors, and the intra-op thread count."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from diet_explore.evaluation.parallel import default_workers, run_batches


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_back_in_item_order_and_progress_runs_in_the_caller(workers):
    caller = threading.get_ident()
    seen = []

    def on_done(i, result):
        assert threading.get_ident() == caller
        seen.append(i)

    items = list(range(11))
    assert run_batches(lambda x: x * x, items, workers, on_done) == [x * x for x in items]
    assert sorted(seen) == items


def test_work_runs_in_inference_mode_with_its_share_of_the_threads():
    restore = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        got = run_batches(
            lambda _: (torch.is_inference_mode_enabled(), torch.get_num_threads(), threading.get_ident()), range(8), workers=2
        )
        assert all(mode for mode, _, _ in got)
        assert {n for _, n, _ in got} == {2}
        assert threading.get_ident() not in {t for _, _, t in got}
        assert torch.get_num_threads() == 4  # the caller's setting is back
        # and a thread started afterwards starts from it, not from a worker's 2
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [4]
    finally:
        torch.set_num_threads(restore)


def test_the_first_error_is_raised_in_the_caller_and_stops_the_rest():
    started = []

    def fn(x):
        started.append(x)
        time.sleep(0.01)
        if x == 2:
            raise ValueError("batch 2 is bad")
        return x

    with pytest.raises(ValueError, match="batch 2 is bad"):
        run_batches(fn, list(range(50)), workers=2)
    assert len(started) < 50


def test_default_workers():
    assert default_workers("cpu", threads=2) == 2
    assert default_workers("cpu", threads=1) == 1
    assert default_workers("cuda", threads=16) == 1


def test_overlapping_calls_restore_the_thread_count_from_before_the_first():
    """Two app sessions scoring at once: the second must not take the first's lowered count for
    the original, or every later thread starts with fewer intra-op threads."""
    restore = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        first_running, release = threading.Event(), threading.Event()

        def slow(_):
            first_running.set()
            release.wait(10)
            return torch.get_num_threads()

        def fast(_):
            return torch.get_num_threads()

        out = {}
        first = threading.Thread(target=lambda: out.setdefault("first", run_batches(slow, range(2), workers=2)))
        first.start()
        first_running.wait(10)
        second = threading.Thread(target=lambda: out.setdefault("second", run_batches(fast, range(4), workers=2)))
        second.start()
        second.join(10)
        release.set()
        first.join(10)
        assert out["first"] == [2, 2] and out["second"] == [2, 2, 2, 2]  # each worker gets its share of 4
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [4] and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(restore)
