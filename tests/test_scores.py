import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diet_explore.core.errors import DietError
from diet_explore.masking.importance import ScorePrecompute, aggregate_scores, normalize_scores, score_matrix
from diet_explore.masking.selection import keep_count, rank_dims, top_k_mask
from diet_explore.profiling.synthetic import synthetic_cache


@pytest.mark.parametrize(
    "d, s, m, expected",
    [
        (576, 0.2, 1, 461),  # 115.2 pruned -> floor 115
        (10, 0.3, 1, 7),  # 0.3 * 10 = 3.0000000000000004: prune 3
        (10, 0.7, 1, 3),  # 7.000000000000001: prune 7
        (10, 0.29, 1, 8),  # 2.9: never prune more than asked
        (20, 0.55, 1, 9),  # 11.000000000000002
        (3, 0.5, 1, 2),  # 1.5 -> prune 1
        (100, 0.57, 1, 43),  # 0.57 * 100 = 56.99999999999999: the epsilon prunes the 57 asked for
        (10, 0.0, 1, 10),
        (10, 0.99, 1, 1),
        (1, 0.5, 1, 1),  # at least one dim kept
        (576, 0.2, 8, 464),  # 461 -> nearest multiple of 8
        (100, 0.1, 8, 88),  # 90 -> 88
        (12, 0.5, 8, 8),  # 6 -> 8
        (576, 0.3, 8, 408),  # 404 is a tie between 400 and 408 -> up
        (20, 0.8, 8, 8),  # 4 is a tie between 0 and 8 -> up
        (20, 0.9, 8, 8),  # 2 -> 0, clamped to the multiple
        (100, 0.0, 8, 100),  # 100 -> 104, clamped to D
        (3584, 0.5, 64, 1792),
    ],
)
def test_keep_count_rounding_table(d, s, m, expected):
    assert keep_count(d, s, m) == expected


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_keep_count_rejects_sparsity_naming_it(bad):
    with pytest.raises(DietError, match=f"got {bad}"):
        keep_count(100, bad)


def test_keep_count_rejects_multiple_above_hidden_size():
    with pytest.raises(DietError, match="--multiple-of 16 exceeds the hidden size 8"):
        keep_count(8, 0.2, 16)


def test_rank_dims_breaks_ties_by_lower_index():
    assert rank_dims(np.array([1.0, 3.0, 3.0, 2.0, 3.0])).tolist() == [1, 2, 4, 3, 0]


def test_top_k_mask_ties_at_the_cut_go_to_lower_index():
    s = np.array([5.0, 1.0, 3.0, 3.0, 3.0, 0.0])
    assert top_k_mask(s, 3).tolist() == [True, False, True, True, False, False]
    assert top_k_mask(s, 0).sum() == 0 and top_k_mask(s, 6).sum() == 6


@settings(max_examples=200, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(1, 4), st.integers(1, 30)), elements=st.integers(0, 4)), st.data())
def test_top_k_mask_equals_first_k_of_rank_dims_batched(scores, data):
    scores = scores.astype(np.float64)  # small integers: many ties
    k = data.draw(st.integers(0, scores.shape[1]))
    batched = top_k_mask(scores, k)
    for row, got in zip(scores, batched):
        want = np.zeros(row.shape, bool)
        want[rank_dims(row)[:k]] = True
        np.testing.assert_array_equal(got, want)
    assert (batched.sum(1) == k).all()


def test_normalizations_on_hand_values():
    x = np.array([10.0, 30.0, 20.0, 40.0])
    np.testing.assert_allclose(normalize_scores(x, "sum"), [0.1, 0.3, 0.2, 0.4])
    np.testing.assert_allclose(normalize_scores(x, "rank"), [0.0, 2 / 3, 1 / 3, 1.0])
    z = normalize_scores(x, "zscore")
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1.0) < 1e-12
    np.testing.assert_allclose(normalize_scores(np.array([1.0, 2.0, 2.0]), "rank"), [0.0, 0.75, 0.75])  # average ranks
    np.testing.assert_array_equal(normalize_scores(np.full(3, 2.0), "zscore"), [0.0, 0.0, 0.0])


def test_layer_aggregations_match_numpy():
    cache = synthetic_cache(hidden_size=24, num_layers=6, tasks=("a", "b"), n_samples=5, seed=2)
    layer = cache.layer_scores("b").astype(np.float64)
    np.testing.assert_allclose(aggregate_scores(cache, "b"), layer.mean(0))
    np.testing.assert_allclose(aggregate_scores(cache, "b", layer_agg="max"), layer.max(0))
    np.testing.assert_allclose(aggregate_scores(cache, "b", layer_agg="last_k", last_k=2), layer[-2:].mean(0))
    np.testing.assert_allclose(aggregate_scores(cache, "b", normalize="sum").sum(), 1.0)
    m = score_matrix(cache, ["b", "a"], site="normed")
    assert m.shape == (2, 24) and m.dtype == np.float64
    np.testing.assert_allclose(m[1], cache.layer_scores("a", "normed").astype(np.float64).mean(0))


def test_precompute_memoises_and_matches_the_cache():
    cache = synthetic_cache(hidden_size=24, num_layers=6, tasks=("a", "b"), n_samples=5, seed=2)
    pre = ScorePrecompute(cache)
    first = pre.matrix(["a", "b"])
    assert pre.matrix(["a", "b"]) is first and not first.flags.writeable
    np.testing.assert_array_equal(score_matrix(pre, ["a", "b"]), score_matrix(cache, ["a", "b"]))


def test_unknown_aggregation_and_normalization_are_named():
    cache = synthetic_cache(hidden_size=8, num_layers=2, tasks=("a",), n_samples=2)
    with pytest.raises(DietError, match="'median'"):
        aggregate_scores(cache, "a", layer_agg="median")
    with pytest.raises(DietError, match="'l2'"):
        aggregate_scores(cache, "a", normalize="l2")
    with pytest.raises(DietError, match="--last-k must be 1 to the 2 layers this cache has, got 0"):
        aggregate_scores(cache, "a", layer_agg="last_k", last_k=0)
