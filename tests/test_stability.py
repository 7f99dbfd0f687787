import numpy as np
import pytest
from test_masks import hand_cache

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.importance import ScorePrecompute
from diet_explore.masking.selection import keep_count
from diet_explore.masking.stability import _resampled_keep, bootstrap_masks, sample_count_curve
from diet_explore.profiling.synthetic import synthetic_cache

TASKS = ("a", "b", "c", "d", "e")


@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(hidden_size=150, num_layers=3, tasks=TASKS, n_samples=30, seed=6)


def test_same_seed_same_bootstrap(cache):
    cfg = MaskConfig(sparsity=0.3)
    a = bootstrap_masks(cache, cfg, n_resamples=40, seed=1)
    b = bootstrap_masks(cache, cfg, n_resamples=40, seed=1)
    c = bootstrap_masks(cache, cfg, n_resamples=40, seed=2)
    np.testing.assert_array_equal(a.jaccard_to_full, b.jaccard_to_full)
    np.testing.assert_array_equal(a.keep_frequency, b.keep_frequency)
    assert not np.array_equal(a.jaccard_to_full, c.jaccard_to_full)
    assert a.n_resamples == 40 and a.n_samples == 30 and a.jaccard_to_full.shape == (40,)
    assert 0.5 < a.mean_jaccard < 1.0 and a.mean_jaccard == pytest.approx(a.jaccard_to_full.mean())


def test_exact_bootstrap_keeps_the_exact_count_every_time(cache):
    res = bootstrap_masks(cache, MaskConfig(sparsity=0.3, exact=True), n_resamples=25, seed=0)
    # each resample keeps exactly n dims, so the frequencies sum to n
    assert res.keep_frequency.sum() == pytest.approx(keep_count(150, 0.3))


def test_identical_samples_give_perfect_stability():
    rng = np.random.default_rng(0)
    rows = {t: rng.lognormal(size=20) for t in "xyz"}
    c = hand_cache({t: r[None] for t, r in rows.items()}, samples={t: np.tile(r, (8, 1)) for t, r in rows.items()})
    res = bootstrap_masks(c, MaskConfig(sparsity=0.4), n_resamples=30)
    np.testing.assert_array_equal(res.jaccard_to_full, 1.0)
    np.testing.assert_array_equal(res.keep_frequency, build_mask(c, MaskConfig(sparsity=0.4)).keep.astype(float))


@pytest.mark.parametrize(
    "cfg",
    [MaskConfig(sparsity=0.3), MaskConfig(sparsity=0.3, method="borda"), MaskConfig(sparsity=0.3, exact=True, multiple_of=8)],
)
def test_vectorised_resamples_equal_masks_built_one_by_one(cache, cfg):
    """Resample r = 'only sample r' must give the mask of a cache whose scores are sample r."""
    n = 6
    keep = _resampled_keep(ScorePrecompute(cache), cfg, lambda rng, n_total: np.eye(n_total)[:n], seed=0)
    for r in range(n):
        one = hand_cache({t: cache.sample_scores(t)[r][None] for t in TASKS})
        np.testing.assert_array_equal(keep[r], build_mask(one, cfg).keep)


def test_full_weights_reproduce_the_full_mask_for_other_aggregations(cache):
    cfg = MaskConfig(sparsity=0.3, layer_agg="max")
    keep = _resampled_keep(ScorePrecompute(cache), cfg, lambda rng, n_total: np.full((2, n_total), 1 / n_total), seed=0)
    np.testing.assert_array_equal(keep[0], build_mask(cache, cfg).keep)
    assert bootstrap_masks(cache, cfg, n_resamples=5).notes  # documented approximation is reported


def test_sample_count_curve(cache):
    df = sample_count_curve(cache, MaskConfig(sparsity=0.3), counts=(5, 30, 50, 15), n_resamples=20, seed=0)
    assert df["n"].tolist() == [5, 15, 30] and list(df.columns) == ["n", "mean_jaccard", "std_jaccard"]
    assert df.loc[df["n"] == 30, "mean_jaccard"].item() == pytest.approx(1.0)  # all samples = the full mask
    assert df.loc[df["n"] == 30, "std_jaccard"].item() == pytest.approx(0.0, abs=1e-12)
    assert df["mean_jaccard"].iloc[0] < df["mean_jaccard"].iloc[2]
    assert df.attrs["notes"] == ["skipped n=50: the tasks have 30 samples (the smallest task)"]


def test_bootstrap_rejects_what_it_cannot_resample(cache):
    with pytest.raises(DietError, match="'random' uses no calibration samples"):
        bootstrap_masks(cache, MaskConfig(method="random"))
    with pytest.raises(DietError, match="got 0"):
        bootstrap_masks(cache, MaskConfig(), n_resamples=0)


def test_a_weight_of_zero_is_the_same_as_leaving_the_task_out(cache):
    """Weight 0 removes a task from the vote, so it must not be resampled either: drawing its samples
    from the shared random stream shifted every later task's resamples (different numbers)."""
    first, *rest = cache.task_names
    zero = MaskConfig(sparsity=0.3, weights={first: 0.0})
    left_out = MaskConfig(sparsity=0.3, tasks=rest)
    a, b = bootstrap_masks(cache, zero, n_resamples=20), bootstrap_masks(cache, left_out, n_resamples=20)
    assert np.array_equal(a.keep_frequency, b.keep_frequency) and a.mean_jaccard == b.mean_jaccard
    curve_a = sample_count_curve(cache, zero, counts=(10,), n_resamples=10)
    curve_b = sample_count_curve(cache, left_out, counts=(10,), n_resamples=10)
    assert curve_a.equals(curve_b)
