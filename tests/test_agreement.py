import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import spearmanr

from diet_explore.core.errors import DietError
from diet_explore.masking.agreement import (
    agreement_report,
    prune_matrix,
    spearman_matrix,
    upset_overlaps,
    vote_counts,
    vote_matrix_sorted,
)
from diet_explore.masking.importance import aggregate_scores
from diet_explore.masking.selection import jaccard, keep_count, top_k_mask
from diet_explore.profiling.synthetic import synthetic_cache


def pairwise_jaccard(sets):
    return jaccard(sets[:, None, :], sets[None, :, :])


PRUNE = np.array(
    [
        [1, 1, 0, 0, 1, 0],
        [0, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ],
    dtype=bool,
)


def test_jaccard_on_hand_sets():
    j = pairwise_jaccard(np.vstack([PRUNE, np.zeros((1, 6), bool)]))
    assert j[0, 1] == pytest.approx(2 / 4) and j[0, 2] == pytest.approx(1 / 4) and j[1, 2] == pytest.approx(1 / 4)
    assert j[0, 3] == 0.0 and j[3, 3] == 1.0  # two empty sets count as identical
    np.testing.assert_array_equal(j, j.T)
    np.testing.assert_array_equal(np.diag(j), 1.0)


def test_spearman_on_hand_rows_matches_scipy():
    s = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 3.0, 2.0, 2.0, 9.0]])
    m = spearman_matrix(s)
    assert m[0, 1] == pytest.approx(-1.0) and m[0, 0] == pytest.approx(1.0)
    for a in range(3):
        for b in range(3):
            assert m[a, b] == pytest.approx(spearmanr(s[a], s[b]).statistic)


def test_spearman_constant_row_is_nan():
    m = spearman_matrix(np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
    assert np.isnan(m[1, 0]) and np.isnan(m[1, 1]) and m[0, 0] == pytest.approx(1.0)


def test_vote_counts_and_sorted_vote_matrix():
    assert vote_counts(PRUNE).tolist() == [1, 2, 1, 0, 3, 1]
    df = vote_matrix_sorted(PRUNE, ["a", "b", "c"])
    assert df.index.name == "dim" and df.index.tolist() == [4, 1, 0, 2, 5, 3]
    assert df["votes"].tolist() == [3, 2, 1, 1, 1, 0]
    assert df.loc[5, ["a", "b", "c"]].tolist() == [False, False, True]


def test_upset_exact_combinations_on_hand_sets():
    df = upset_overlaps(PRUNE, ["a", "b", "c"])
    got = {row.combination: row.size for row in df.itertuples()}
    assert got == {("a", "b", "c"): 1, ("a", "b"): 1, ("a",): 1, ("b",): 1, ("c",): 1}
    assert df.iloc[0]["combination"] == ("a", "b", "c")  # size ties: larger degree first
    assert df["degree"].tolist() == [len(c) for c in df["combination"]]
    assert df.loc[df["combination"] == ("a", "b"), ["a", "b", "c"]].values.tolist() == [[True, True, False]]


@given(arrays(bool, st.tuples(st.integers(1, 7), st.integers(1, 60))))
def test_upset_sizes_sum_to_dims_with_a_vote(prune):
    tasks = [f"t{i}" for i in range(prune.shape[0])]
    df = upset_overlaps(prune, tasks)
    assert df["size"].sum() == int(prune.any(0).sum())
    assert len(set(df["combination"])) == len(df)
    assert (df["size"].diff().dropna() <= 0).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(DietError, match=r"\(3, 6\).*2 task names"):
        upset_overlaps(PRUNE, ["a", "b"])


@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(hidden_size=120, num_layers=3, tasks=("a", "b", "c", "d"), n_samples=6, seed=4)


def test_prune_matrix_is_the_complement_of_each_task_top_k(cache):
    p = prune_matrix(cache, 0.25, tasks=["c", "a"])
    assert p.shape == (2, 120) and (p.sum(1) == 120 - keep_count(120, 0.25)).all()
    np.testing.assert_array_equal(p[0], ~top_k_mask(aggregate_scores(cache, "c"), keep_count(120, 0.25)))


def test_agreement_report_bundles_labelled_tables(cache):
    rep = agreement_report(cache, 0.25)
    assert list(rep.jaccard.index) == ["a", "b", "c", "d"] == list(rep.spearman.columns)
    np.testing.assert_allclose(rep.jaccard.values, pairwise_jaccard(rep.prune))
    assert rep.vote_counts.sum() == 4 * (120 - keep_count(120, 0.25))
    assert rep.upset["size"].sum() == int((rep.vote_counts > 0).sum())
    data = json.loads(json.dumps(rep.to_json_dict()))
    assert sum(data["vote_histogram"]) == 120 and data["jaccard"]["a"]["a"] == 1.0
    assert data["spearman"]["b"]["c"] == pytest.approx(rep.spearman.loc["b", "c"], abs=1e-6)
