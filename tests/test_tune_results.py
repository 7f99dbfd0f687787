"""The committed tuned-DIET row (``docs/results/tune-smollm2-135m-*.report.json``), checked from its
per-example test results by a paired bootstrap written here, apart from ``evaluation/metrics.py``.

    python tests/test_tune_results.py      # prints the bootstrap next to the reported intervals

The report's intervals are Newcombe per task combined over tasks by MOVER; this bootstrap resamples
each task's test examples (paired: one draw for both models) and averages the per-task means, as the
average is defined. The two must give the same point estimate and nearly the same interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
REPORTS = sorted(RESULTS.glob("tune-smollm2-135m-*.report.json"))
SPARSITIES = ("0.1", "0.2")
RESAMPLES = 4000
CI_TOLERANCE = 0.025  # bootstrap and Newcombe/MOVER endpoints agree within 2.5 points at ~34 examples per task


def correct(examples: dict[str, list], metric: str) -> dict[int, int]:
    """doc id -> 1 when the model's choice is the gold one (acc: summed log-likelihood; acc_norm: per character)."""
    out = {}
    for doc, gold, lls, chars in zip(examples["doc_id"], examples["gold"], examples["lls"], examples["chars"]):
        score = np.asarray(lls, float) / (np.asarray(chars, float) if metric == "acc_norm" else 1.0)
        out[int(doc)] = int(int(np.argmax(score)) == int(gold))
    return out


def paired_diffs(report: dict, a: str, b: str) -> dict[str, np.ndarray]:
    """task -> per-example main-metric differences b − a on the test examples both scored."""
    from diet_explore.tasks.registry import resolve_tasks

    ex = report["test"]["examples"]
    out = {}
    for spec in resolve_tasks(list(ex[a])):
        ca, cb = correct(ex[a][spec.name], spec.main_metric), correct(ex[b][spec.name], spec.main_metric)
        out[spec.name] = np.array([cb[d] - ca[d] for d in sorted(ca) if d in cb], float)
    return out


def bootstrap(diffs: dict[str, np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """(mean over tasks of the mean difference, 2.5th and 97.5th percentiles over resamples within each task)."""
    rng = np.random.default_rng(seed)
    est = float(np.mean([d.mean() for d in diffs.values()]))
    draws = np.mean([d[rng.integers(0, len(d), (RESAMPLES, len(d)))].mean(axis=1) for d in diffs.values()], axis=0)
    return est, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def comparisons(report: dict):
    """(name, reported entry, paired diffs) for tuned minus each baseline and each model minus dense."""
    for k, e in report["test"]["tuned_minus"].items():
        yield f"tuned − {k}", e["main"], paired_diffs(report, k, "tuned")
    for k, e in report["test"]["vs_dense"].items():
        yield f"{k} − dense", e["main"], paired_diffs(report, "dense", k)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_both_sparsities_are_committed_small_enough_with_their_split():
    assert [p.name.split("-")[-1].removesuffix(".report.json") for p in REPORTS] == list(SPARSITIES)
    for path in REPORTS:
        assert path.stat().st_size < 10_000_000
        report = load(path)
        split, ex = report["split"], report["test"]["examples"]
        for task, test_ids in split["test"].items():
            assert not set(test_ids) & set(split["tuning"][task])  # no test document was tuned on
            for model in ex:
                assert ex[model][task]["doc_id"] == sorted(test_ids)  # every model on every test example


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_an_independent_bootstrap_agrees_with_the_reported_intervals(path):
    report = load(path)
    seen = 0
    for name, entry, diffs in comparisons(report):
        est, low, high = bootstrap(diffs)
        assert est == pytest.approx(entry["delta"], abs=1e-9), name
        assert entry["n"] == sum(len(d) for d in diffs.values()), name
        assert abs(low - entry["ci_low"]) < CI_TOLERANCE and abs(high - entry["ci_high"]) < CI_TOLERANCE, name
        seen += 1
    assert seen >= 6  # tuned against default, random and wiki at least, and every model against dense


def main() -> None:
    for path in REPORTS:
        report = load(path)
        print(f"{path.name}: best {report['best']['label']}, {report['best']['n_keep']} kept")
        for name, entry, diffs in comparisons(report):
            est, low, high = bootstrap(diffs)
            n = sum(len(d) for d in diffs.values())
            print(
                f"  {name:<20} reported {100 * entry['delta']:+.1f} [{100 * entry['ci_low']:+.1f}, "
                f"{100 * entry['ci_high']:+.1f}]  bootstrap {100 * est:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]  n={n}"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
