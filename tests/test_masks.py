import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, build_mask, mask_overlap, paper_default
from diet_explore.masking.importance import ScorePrecompute, aggregate_scores
from diet_explore.masking.selection import keep_count, top_k_mask
from diet_explore.masking.vote import merge
from diet_explore.profiling.cache import ScoreCache, TaskScores
from diet_explore.profiling.synthetic import synthetic_cache

TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy")


def hand_cache(layers, samples=None, generic=(), baselines=None):
    """A ScoreCache from hand-written arrays: ``layers[task]`` (L, D); samples default to the layer mean."""
    tasks = {}
    for name, layer in layers.items():
        layer = np.atleast_2d(np.asarray(layer, np.float32))
        sample = np.asarray(samples[name] if samples else layer.mean(0, keepdims=True), np.float32)
        kind = "generic" if name in generic else "task"
        tasks[name] = TaskScores(
            {"residual": layer, "normed": layer},
            {"residual": sample, "normed": sample},
            list(range(len(sample))),
            [1] * len(sample),
            kind,
        )
    n_layers, d = next(iter(tasks.values())).layer["residual"].shape
    manifest = {
        "schema_version": 1,
        "kind": "diet-explore-score-cache",
        "sites": ["residual", "normed"],
        "model": {"name": "hand", "id": "hand/model", "hidden_size": d, "num_layers": n_layers},
        "tasks": {t: {"kind": s.kind} for t, s in tasks.items()},
    }
    return ScoreCache(manifest, tasks, baselines or {}, None)


# a: keeps {0,1} at s=0.5; b: {1,2}; c: {0,3}
HAND = {"a": [4, 3, 2, 1], "b": [1, 4, 3, 2], "c": [4, 1, 2, 3]}


@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(hidden_size=200, num_layers=4, tasks=TASKS, n_samples=10, seed=5, task_noise=0.5)


# ---------------------------------------------------------------- vote properties, through merge (what build_mask runs)
score_arrays = arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=st.integers(0, 8).map(float)
)  # small integers: many ties at the cut
sparsities = st.floats(0.0, 0.95)


def vote(scores, weights, tau, sparsity):
    """merge's keep for the DIET vote (the production path of build_mask and the bootstrap)."""
    keep, _, _ = merge(scores, np.asarray(weights, float), MaskConfig(sparsity=sparsity, threshold=tau))
    return keep


def independent_keep(scores, sparsity):
    """Per task, the top keep_count dims by a stable sort (ties to the lower index): (T, D) bool."""
    t, d = scores.shape
    n = keep_count(d, sparsity)
    keep = np.zeros((t, d), bool)
    for i in range(t):
        keep[i, np.argsort(-scores[i], kind="stable")[:n]] = True
    return keep


@given(score_arrays, sparsities)
def test_equal_weights_half_threshold_is_the_majority_vote(scores, s):
    t = scores.shape[0]
    counts = independent_keep(scores, s).sum(0)
    np.testing.assert_array_equal(vote(scores, np.ones(t), 0.5, s), 2 * counts >= t)  # an exact half is kept


@given(score_arrays, sparsities, st.lists(st.floats(0.01, 5.0), min_size=6, max_size=6))
def test_tiny_threshold_is_union_and_one_is_intersection(scores, s, w):
    w = np.array(w[: scores.shape[0]])
    keep = independent_keep(scores, s)
    np.testing.assert_array_equal(vote(scores, w, 1e-9, s), keep.any(0))
    np.testing.assert_array_equal(vote(scores, w, 1.0, s), keep.all(0))
    assert vote(scores, w, 0.0, s).all()  # τ = 0 exactly keeps everything (documented)


@given(score_arrays, sparsities, st.lists(st.floats(0.0, 5.0), min_size=6, max_size=6), st.floats(0, 1), st.floats(0, 1))
def test_raising_threshold_never_adds_a_dim(scores, s, w, t1, t2):
    w = np.array(w[: scores.shape[0]])
    if w.sum() == 0:
        w[0] = 1.0
    lo, hi = sorted((t1, t2))
    assert not (vote(scores, w, hi, s) & ~vote(scores, w, lo, s)).any()


@given(score_arrays, sparsities, st.lists(st.floats(0.01, 5.0), min_size=6, max_size=6), st.floats(0, 1), st.randoms())
def test_task_order_and_zero_weight_tasks_change_nothing(scores, s, w, tau, rnd):
    w = np.array(w[: scores.shape[0]])
    perm = list(range(scores.shape[0]))
    rnd.shuffle(perm)
    base = vote(scores, w, tau, s)
    np.testing.assert_array_equal(vote(scores[perm], w[perm], tau, s), base)
    extra = np.vstack([scores, -scores[:1]])
    np.testing.assert_array_equal(vote(extra, np.append(w, 0.0), tau, s), base)


@given(score_arrays, sparsities, st.lists(st.floats(0.01, 5.0), min_size=6, max_size=6), st.floats(0, 1))
@pytest.mark.slow
def test_weighted_vote_matches_an_exact_recount(scores, s, w, tau):
    """Σ_t w_t keep_t ≥ τ Σ_t w_t, recounted in exact rational arithmetic (w and τ as given floats)."""
    from fractions import Fraction

    w = [Fraction(x) for x in w[: scores.shape[0]]]
    keep = independent_keep(scores, s)
    share = [sum((wt for wt, k in zip(w, keep[:, j]) if k), Fraction(0)) / sum(w) for j in range(scores.shape[1])]
    expected = np.array([sh >= Fraction(tau) for sh in share])
    got = vote(scores, np.array([float(x) for x in w]), tau, s)
    # the production rule allows 1e-12 of float slack on the share; only shares that close to τ may differ
    close = np.array([abs(float(sh) - tau) <= 1e-12 for sh in share])
    np.testing.assert_array_equal(got[~close], expected[~close])


def test_vote_hand_example():
    # a keeps {0,1}, b {1,2}, c {0,3} at sparsity 0.5
    scores = np.array([[4, 3, 2, 1], [1, 4, 3, 2], [4, 1, 2, 3]], dtype=float)
    assert vote(scores, [1.0, 1.0, 1.0], 0.5, 0.5).tolist() == [True, True, False, False]
    # weights 2, 1, 1: dim 2 has 1/4 < 0.5, dim 0 has 3/4
    assert vote(scores, [2.0, 1.0, 1.0], 0.5, 0.5).tolist() == [True, True, False, False]
    assert vote(scores, [0.0, 1.0, 1.0], 0.5, 0.5).tolist() == [True, True, True, True]
    # two tasks, one dim each way: an exact half (1 of 2) is kept at τ = 0.5
    assert vote(np.array([[2.0, 1.0], [1.0, 2.0]]), [1.0, 1.0], 0.5, 0.5).tolist() == [True, True]


# ---------------------------------------------------------------- build_mask on hand values
def test_diet_vote_on_hand_scores():
    r = build_mask(hand_cache(HAND), MaskConfig(sparsity=0.5))
    assert r.per_task_keep.astype(int).tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]]
    np.testing.assert_allclose(r.votes, [2 / 3, 2 / 3, 1 / 3, 1 / 3])
    assert r.keep.tolist() == [True, True, False, False] and r.kept_indices.tolist() == [0, 1]
    assert r.n_keep == 2 and r.sparsity == 0.5 and not r.keep.flags.writeable


def test_exact_mode_breaks_vote_ties_by_mean_rank():
    c = hand_cache(HAND)
    # s = 0.25: per task keep 3 -> votes (2/3, 2/3, 1, 2/3); the plain vote keeps all 4 dims
    assert build_mask(c, MaskConfig(sparsity=0.25)).n_keep == 4
    # exact: dim 2 first, then the tie at 2/3 by mean rank: d0 2/3 > d1 5/9 > d3 1/3
    r = build_mask(c, MaskConfig(sparsity=0.25, exact=True))
    assert r.kept_indices.tolist() == [0, 1, 2]


def test_weights_change_the_hand_vote():
    c = hand_cache(HAND)
    r = build_mask(c, MaskConfig(sparsity=0.5, weights={"b": 3.0}))  # b alone reaches 3/5 >= 0.5
    np.testing.assert_allclose(r.votes, [2 / 5, 4 / 5, 3 / 5, 1 / 5])
    assert r.kept_indices.tolist() == [1, 2] and r.weights.tolist() == [1.0, 3.0, 1.0]


# ---------------------------------------------------------------- build_mask properties on a synthetic cache
@pytest.mark.parametrize("s", [0.1, 0.2, 0.37, 0.5, 0.9])
@pytest.mark.parametrize("mult", [1, 8])
def test_exact_mode_hits_the_exact_count(cache, s, mult):
    for method in ("diet", "union", "intersection"):
        r = build_mask(cache, MaskConfig(sparsity=s, exact=True, multiple_of=mult, method=method))
        assert r.n_keep == keep_count(200, s, mult)


def test_exact_keeps_the_highest_votes(cache):
    r = build_mask(cache, MaskConfig(sparsity=0.3, exact=True))
    assert r.votes[r.keep].min() >= r.votes[~r.keep].max()


def test_multiple_of_without_exact_rounds_the_vote_count_along_the_vote_order(cache):
    plain = build_mask(cache, MaskConfig(sparsity=0.3))
    rounded = build_mask(cache, MaskConfig(sparsity=0.3, multiple_of=8))
    assert rounded.n_keep % 8 == 0 and abs(rounded.n_keep - plain.n_keep) <= 4
    inner, outer = (rounded, plain) if rounded.n_keep <= plain.n_keep else (plain, rounded)
    assert not (inner.keep & ~outer.keep).any()


@pytest.mark.parametrize("exact", [False, True])
def test_permuting_task_order_changes_nothing(cache, exact):
    w = {"boolq": 2.0, "rte": 0.5}
    a = build_mask(cache, MaskConfig(sparsity=0.25, weights=w, tasks=list(TASKS), exact=exact))
    b = build_mask(cache, MaskConfig(sparsity=0.25, weights=w, tasks=list(reversed(TASKS)), exact=exact))
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_allclose(a.votes, b.votes, atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_weight_zero_equals_removing_the_task(cache, exact):
    zero = build_mask(cache, MaskConfig(sparsity=0.3, weights={"rte": 0.0}, exact=exact))
    removed = build_mask(cache, MaskConfig(sparsity=0.3, tasks=[t for t in TASKS if t != "rte"], exact=exact))
    np.testing.assert_array_equal(zero.keep, removed.keep)


def test_union_and_intersection_are_any_and_all_of_task_keeps(cache):
    u = build_mask(cache, MaskConfig(method="union"))
    i = build_mask(cache, MaskConfig(method="intersection"))
    np.testing.assert_array_equal(u.keep, u.per_task_keep.any(0))
    np.testing.assert_array_equal(i.keep, i.per_task_keep.all(0))
    assert i.n_keep <= build_mask(cache, MaskConfig()).n_keep <= u.n_keep
    np.testing.assert_array_equal(u.keep, build_mask(cache, MaskConfig(threshold=1e-9)).keep)
    np.testing.assert_array_equal(i.keep, build_mask(cache, MaskConfig(threshold=1.0)).keep)


def test_top_k_merges(cache):
    n = keep_count(200, 0.2)
    single = build_mask(cache, MaskConfig(method="single", single_task="rte"))
    np.testing.assert_array_equal(single.keep, top_k_mask(aggregate_scores(cache, "rte"), n))
    assert single.tasks == ["rte"]
    borda = build_mask(cache, MaskConfig(method="borda"))
    mean_rank = build_mask(cache, MaskConfig(method="mean_score", normalize="rank"))
    np.testing.assert_array_equal(borda.keep, mean_rank.keep)
    mean_raw = build_mask(cache, MaskConfig(method="mean_score", weights={"boolq": 3.0}))
    want = (3 * aggregate_scores(cache, "boolq") + sum(aggregate_scores(cache, t) for t in TASKS[1:])) / 7
    np.testing.assert_array_equal(mean_raw.keep, top_k_mask(want, n))
    assert borda.n_keep == mean_raw.n_keep == n


def test_baselines(cache):
    n = keep_count(200, 0.4, 8)
    r1 = build_mask(cache, MaskConfig(method="random", sparsity=0.4, multiple_of=8, seed=7))
    r2 = build_mask(cache, MaskConfig(method="random", sparsity=0.4, multiple_of=8, seed=7))
    r3 = build_mask(cache, MaskConfig(method="random", sparsity=0.4, multiple_of=8, seed=8))
    np.testing.assert_array_equal(r1.keep, r2.keep)
    assert r1.n_keep == r3.n_keep == n and (r1.keep != r3.keep).any()
    mag = build_mask(cache, MaskConfig(method="magnitude", sparsity=0.4))
    np.testing.assert_array_equal(mag.keep, top_k_mask(cache.baselines["weight_magnitude"], keep_count(200, 0.4)))
    loo = build_mask(cache, MaskConfig(method="leave_one_out", held_out_task="rte"))
    np.testing.assert_array_equal(loo.keep, build_mask(cache, MaskConfig(tasks=[t for t in TASKS if t != "rte"])).keep)
    assert loo.tasks == [t for t in TASKS if t != "rte"]


def test_wiki_baseline_uses_the_generic_task():
    layers = dict(HAND, wikitext=[1, 2, 3, 4])
    c = hand_cache(layers, generic=("wikitext",))
    assert c.task_names == ["a", "b", "c"]
    r = build_mask(c, MaskConfig(method="wiki", sparsity=0.5))
    assert r.tasks == ["wikitext"] and r.kept_indices.tolist() == [2, 3]


def test_missing_baseline_inputs_are_clear_errors():
    c = hand_cache(HAND)
    with pytest.raises(DietError, match="no 'weight_magnitude'"):
        build_mask(c, MaskConfig(method="magnitude"))
    with pytest.raises(DietError, match="no generic calibration set"):
        build_mask(c, MaskConfig(method="wiki"))
    with pytest.raises(DietError, match="needs --held-out-task"):
        build_mask(c, MaskConfig(method="leave_one_out"))
    with pytest.raises(DietError, match="needs --single-task"):
        build_mask(c, MaskConfig(method="single"))


def test_precompute_and_paper_default_match(cache):
    pre = ScorePrecompute(cache)
    a = paper_default(cache, 0.3)
    np.testing.assert_array_equal(build_mask(pre, MaskConfig(sparsity=0.3)).keep, a.keep)
    assert a.config == MaskConfig(sparsity=0.3, threshold=0.5, layer_agg="mean", site="residual")


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"sparsity": 1.0}, "got 1.0"),
        ({"sparsity": -0.2}, "got -0.2"),
        ({"threshold": 1.5}, "got 1.5"),
        ({"weights": {"rte": -1.0}}, "'rte' is -1.0"),
        ({"weights": {"rte": float("inf")}}, "'rte' is inf"),
        ({"method": "vote"}, "'vote'"),
        ({"site": "attn"}, "'attn'"),
        ({"layer_agg": "median"}, "'median'"),
        ({"normalize": "l2"}, "'l2'"),
        ({"multiple_of": 0}, "got 0"),
        ({"tasks": []}, "names no task"),
        ({"tasks": ["a", "a"]}, "twice: a"),
    ],
)
def test_bad_config_values_are_named(kwargs, pattern):
    with pytest.raises(DietError, match=pattern):
        MaskConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"tasks": ["a", "zz"]}, "task 'zz' is not in this cache"),
        ({"weights": {"zz": 1.0}}, "unknown task 'zz'"),
        ({"weights": {"a": 0, "b": 0, "c": 0.0}}, "weight 0"),
        ({"multiple_of": 8}, "--multiple-of 8 exceeds the hidden size 4"),
    ],
)
def test_config_checked_against_the_cache(kwargs, pattern):
    with pytest.raises(DietError, match=pattern):
        build_mask(hand_cache(HAND), MaskConfig(**kwargs))


def test_config_json_round_trip_and_unknown_field():
    cfg = MaskConfig(sparsity=0.3, weights={"rte": 2.0}, tasks=["rte", "boolq"], exact=True, multiple_of=8)
    assert MaskConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(DietError, match="sparsty"):
        MaskConfig.from_dict({"sparsty": 0.2})


def test_mask_overlap_numbers():
    a = np.array([1, 1, 1, 0, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0, 0], bool)
    o = mask_overlap(a, b)
    assert o == {"jaccard_kept": 0.5, "jaccard_pruned": 0.5, "n_diff": 2, "only_a": 1, "only_b": 1}
    assert mask_overlap(np.ones(3, bool), np.ones(3, bool))["jaccard_pruned"] == 1.0
    with pytest.raises(DietError, match="different sizes"):
        mask_overlap(a, a[:3])


def test_result_config_is_kept_for_provenance(cache):
    cfg = MaskConfig(sparsity=0.25, weights={"rte": 2.0})
    r = build_mask(cache, cfg)
    assert r.config is cfg and dataclasses.asdict(r.config)["weights"] == {"rte": 2.0}
    assert r.per_task_keep.shape == (5, 200) and (r.per_task_keep.sum(1) == keep_count(200, 0.25)).all()


def test_mask_engine_imports_neither_torch_nor_streamlit():
    import subprocess
    import sys

    code = (
        "import sys, diet_explore.masking.build, diet_explore.masking.agreement, diet_explore.masking.stability, diet_explore.masking.maskfile; "
        "print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_vote_that_keeps_nothing_is_refused():
    disjoint = hand_cache({"a": [4, 3, 1, 1], "b": [1, 1, 4, 3]})  # a keeps {0, 1}, b keeps {2, 3} at s=0.5
    with pytest.raises(DietError, match="the intersection mask keeps no dimension"):
        build_mask(disjoint, MaskConfig(method="intersection", sparsity=0.5))
    assert build_mask(disjoint, MaskConfig(method="intersection", sparsity=0.5, exact=True)).n_keep == 2
