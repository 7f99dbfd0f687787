"""The dimension card, the massive-activation rule and the disagreement table agree with the library
numbers they summarise; ``diet-explore dim`` prints the same card; bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diet_explore.cli import main
from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.dims import (
    FIRST_TOKEN_SHARE,
    NO_CONTEXTS,
    check_dim,
    dim_card,
    display_token,
    first_token_counts,
    first_token_dims,
    ranks,
    split_votes,
)
from diet_explore.masking.importance import aggregate_scores
from diet_explore.masking.massive import MASSIVE_FACTOR, is_massive, massive_dims, massive_ratio
from diet_explore.masking.selection import keep_count, rank_dims
from diet_explore.masking.stability import bootstrap_masks
from diet_explore.masking.vote import vote_share
from diet_explore.profiling.cache import load_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from app_helpers import make_alpha

    return make_alpha()


# -------------------------------------------------------------------------------- check_dim
@pytest.mark.parametrize("bad", [576, -1, "abc", "1.5", "", True, 10**20, "5e2"])
def test_a_dim_that_is_not_an_index_names_the_range(bad):
    with pytest.raises(DietError, match=r"not an index in 0\.\.575") as err:
        check_dim(bad, 576)
    assert "0 to 575" in err.value.hint


@pytest.mark.parametrize(("given", "value"), [(0, 0), ("575", 575), (" 12 ", 12), (np.int64(7), 7)])
def test_check_dim_accepts_indices(given, value):
    assert check_dim(given, 576) == value


def test_ranks_follow_rank_dims():
    s = np.array([3.0, 1.0, 3.0, 7.0])
    assert ranks(s).tolist() == [2, 4, 3, 1]
    assert (np.argsort(ranks(s)) == rank_dims(s)).all()


def test_display_token_shows_control_characters():
    assert display_token("a\nb\tc") == "a↵b⇥c"


# -------------------------------------------------------------------------------- massive rule
def test_massive_ratio_is_the_median_over_tasks_of_score_over_the_task_median():
    scores = np.array([[1.0, 1.0, 2.0, 30.0, 1.0], [2.0, 2.0, 2.0, 16.0, 200.0], [1.0, 1.0, 1.0, 11.0, 1.0]])
    ratio = massive_ratio(scores)
    assert ratio[3] == pytest.approx(11.0)  # medians 1, 2, 1: ratios 30, 8, 11 -> 11
    assert ratio[4] == pytest.approx(1.0)  # 100x in one task only: not flagged
    assert is_massive(ratio).tolist() == [False, False, False, True, False]
    assert is_massive(MASSIVE_FACTOR) and not is_massive(MASSIVE_FACTOR - 1e-9)
    assert massive_ratio(np.zeros((2, 4))).tolist() == [0.0] * 4


@pytest.mark.parametrize(("name", "flagged"), [("smollm2-135m", [507, 247, 17]), ("gemma3-270m", [163])])
def test_massive_dims_of_the_committed_caches(name, flagged):
    """What the README reports: SmolLM2's 507, 247 and 17 and Gemma-3's 163 at the residual site."""
    found = massive_dims(load_cache(REPO / "cache" / name))
    assert found.dims == flagged
    assert found.ratio[flagged].min() >= MASSIVE_FACTOR


def _positions_cache(*tasks_positions):
    """A stand-in cache whose tasks recorded contexts at these (D, k) token positions (site residual)."""
    from types import SimpleNamespace

    from diet_explore.profiling.contexts import TopTokens

    def task(pos):
        pos = np.asarray(pos, dtype=np.int32)
        top = TopTokens(np.zeros_like(pos), pos, np.ones(pos.shape, dtype=np.float32))
        return SimpleNamespace(contexts=SimpleNamespace(top={"residual": top}))

    return SimpleNamespace(tasks={f"t{i}": task(p) for i, p in enumerate(tasks_positions)})


def test_first_token_dims_count_every_tasks_contexts_at_position_zero():
    # 4 dims, 2 tasks x 2 contexts each
    cache = _positions_cache([[0, 0], [0, 5], [3, 4], [0, 7]], [[0, 2], [0, 0], [1, 0], [6, 0]])
    counts, total = first_token_counts(cache, "residual")
    assert counts.tolist() == [3, 3, 1, 2] and total == 4
    # 1 of 4 is under half; exactly half (2 of 4) counts
    assert first_token_dims(cache, "residual").tolist() == [True, True, False, True]
    assert FIRST_TOKEN_SHARE == 0.5 and first_token_counts(cache, "normed") is None


@pytest.mark.parametrize(
    ("name", "site", "lo", "hi"),
    [("smollm2-135m", "residual", 450, 576), ("smollm2-135m", "normed", 0, 5), ("gemma3-270m", "residual", 1, 10)],
)
def test_first_token_dims_of_the_committed_caches(name, site, lo, hi):
    """What the Overview and README report: on SmolLM2 (no BOS) the first token holds the largest
    residual activation of most dims; the norm divides it out; Gemma-3 (with <bos>) has a few."""
    assert lo <= int(first_token_dims(load_cache(REPO / "cache" / name), site).sum()) <= hi


def test_the_card_says_when_a_dim_fires_on_the_first_token():
    cache = load_cache(REPO / "cache" / "smollm2-135m")
    counts, total = first_token_counts(cache, "residual")
    card = dim_card(cache, MaskConfig(), 507)
    said = [n for n in card.notes if "first token of their sequence" in n]
    assert said and said[0].startswith(f"{int(counts[507])} of its {total} top contexts") and "note: " + said[0] in card.to_text()
    other = int(np.flatnonzero(counts < FIRST_TOKEN_SHARE * total)[0])
    assert not any("first token" in n for n in dim_card(cache, MaskConfig(), other).notes)
    normed = first_token_dims(cache, "normed")
    either = int(np.flatnonzero(~normed & (counts >= FIRST_TOKEN_SHARE * total))[0])  # flagged at residual only
    assert not any("first token" in n for n in dim_card(cache, MaskConfig(site="normed"), either).notes)


# -------------------------------------------------------------------------------- the card
@pytest.mark.parametrize(
    "config",
    [
        MaskConfig(sparsity=0.2),
        MaskConfig(sparsity=0.35, threshold=0.7, weights={"rte": 2.0}, tasks=["boolq", "rte", "hellaswag", "arc_easy"]),
        MaskConfig(sparsity=0.2, site="normed", layer_agg="max"),
        MaskConfig(sparsity=0.1, method="magnitude"),
    ],
)
def test_the_card_matches_the_library(cache, config):
    result = build_mask(cache, config)
    stab = bootstrap_masks(cache, config, n_resamples=20) if config.method != "magnitude" else None
    n_keep = keep_count(576, config.sparsity)
    for dim in (int(rank_dims(aggregate_scores(cache, "boolq"))[0]), 100, int(rank_dims(aggregate_scores(cache, "rte"))[-1])):
        card = dim_card(cache, config, dim, stab)
        assert card.mask_kept == bool(result.keep[dim]) and card.mask_n_keep == result.n_keep
        assert card.n_keep_per_task == n_keep
        assert [t.task for t in card.tasks] == cache.task_names + cache.generic_names
        voting = dict(zip(result.tasks, result.weights, strict=True))
        for row in card.tasks:
            s = aggregate_scores(cache, row.task, config.site, config.layer_agg, config.last_k)
            assert row.score == pytest.approx(s[dim]) and row.rank == int(np.flatnonzero(rank_dims(s) == dim)[0]) + 1
            assert row.threshold == pytest.approx(np.sort(s)[::-1][n_keep - 1])
            assert row.kept == bool(s[dim] >= row.threshold)
            assert row.weight == (voting.get(row.task) or None)
            np.testing.assert_allclose(row.layers, cache.layer_scores(row.task, config.site)[:, dim])
            assert row.contexts is None  # a synthetic cache has no contexts
        if result.tasks:
            assert card.vote_share == pytest.approx(result.votes[dim])
            kept_votes = [row.kept for row in card.tasks if row.task in result.tasks]
            assert kept_votes == result.per_task_keep[:, dim].tolist()
        else:
            assert card.vote_share is None and card.notes
        if stab is not None:
            assert card.keep_frequency == pytest.approx(stab.keep_frequency[dim]) and card.n_resamples == 20
        assert card.weight_magnitude_rank == ranks(cache.baselines["weight_magnitude"])[dim]
        wiki = aggregate_scores(cache, "wikitext", config.site, config.layer_agg, config.last_k)
        assert card.wiki_rank == ranks(wiki)[dim] and card.wiki_task == "wikitext"
        massive = massive_dims(cache, config.site, config.layer_agg, config.last_k)
        assert card.massive_ratio == pytest.approx(massive.ratio[dim]) and card.massive == bool(massive.flagged[dim])


def test_the_card_says_re_profile_without_contexts(cache):
    card = dim_card(cache, MaskConfig(), 3)
    assert not card.has_contexts
    assert NO_CONTEXTS in card.to_text() and NO_CONTEXTS in card.to_json_dict()["notes"]


def test_the_card_shows_the_contexts_of_a_profiled_cache(tiny_cache_root):
    cache = load_cache(tiny_cache_root / "tiny")
    card = dim_card(cache, MaskConfig(), 5)
    assert card.has_contexts
    for row in card.tasks:
        ctx = cache.tasks[row.task].contexts
        assert len(row.contexts) == ctx.k == 16
        first = row.contexts[0]
        assert first.sample_id == cache.tasks[row.task].sample_ids[int(ctx.top["residual"].row[5, 0])]
        assert first.value == pytest.approx(float(ctx.top["residual"].value[5, 0]))
        assert f"[[{display_token(first.tokens[first.marked])}]]" in first.text()
    text = card.to_text(contexts_per_task=2)
    shown = [line for line in text.splitlines() if " sample " in line]
    assert "top-activating contexts" in text and len(shown) == 2 * len(card.tasks)
    assert all("[[" in line and "]]" in line for line in shown)
    none = card.to_text(contexts_per_task=0)  # not a header per task with nothing under it
    assert "not shown (0 per task asked for)" in none and not any(f"  {t.task}:" in none for t in card.tasks)


# -------------------------------------------------------------------------------- disagreement
def test_split_votes_lists_the_most_divided_dims_first(cache):
    config = MaskConfig(sparsity=0.3, weights={"boolq": 2.0, "rte": 0.0})
    df = split_votes(cache, config, n=25)
    voters = [t for t in cache.task_names if t != "rte"]
    assert list(df.columns[6:]) == voters
    from diet_explore.masking.selection import top_k_mask

    scores = np.stack([aggregate_scores(cache, t) for t in voters])
    per_task = top_k_mask(scores, keep_count(576, 0.3))
    share = vote_share(per_task, np.array([2.0 if t == "boolq" else 1.0 for t in voters]))
    distance = np.abs(share - 0.5)
    assert len(df) == 25 and np.allclose(df["keep share"], np.round(share[df["dim"]], 4))
    assert distance[df["dim"]].max() <= np.sort(distance)[25] + 1e-12  # the 25 closest to one half
    assert (np.diff(np.round(distance[df["dim"]], 12)) >= 0).all()
    keep = build_mask(cache, config).keep
    for _, row in df.iterrows():
        kept, pruned = row["kept by"].split(", "), row["pruned by"].split(", ")
        assert sorted(t for t in kept + pruned if t) == sorted(voters)
        assert row["mask"] == ("kept" if keep[row["dim"]] else "pruned")
        assert row["boolq"] == pytest.approx(round(scores[0, row["dim"]], 4))


# -------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def alpha_dir(tmp_path_factory, cache):
    from diet_explore.profiling.cache import save_cache

    return save_cache(cache, tmp_path_factory.mktemp("dimcli") / "alpha")


def test_cli_json_is_the_card(alpha_dir, cache, capsys):
    assert main(["dim", "--cache", str(alpha_dir), "--dim", "42", "--sparsity", "0.3", "--json", "--resamples", "15"]) == 0
    out = json.loads(capsys.readouterr().out)
    config = MaskConfig(sparsity=0.3)
    card = dim_card(cache, config, 42, bootstrap_masks(cache, config, n_resamples=15))
    expected = json.loads(json.dumps(card.to_json_dict()))
    # the loaded cache knows its folder, so its command names it; the in-memory one cannot
    assert out.pop("contexts_command").endswith(f"--out {alpha_dir} --add-contexts")
    assert expected.pop("contexts_command").endswith("--out <this cache folder> --add-contexts")
    assert out == expected
    assert out["massive_rule"].startswith("median over tasks")


def test_cli_text_card(alpha_dir, capsys):
    assert main(["dim", "--cache", str(alpha_dir), "--dim", "7", "--resamples", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dim 7 of 576 (alpha-576") and "re-profile to see contexts" in out
    assert "bootstrap" not in out and "weight-magnitude rank" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dim", "576"], "dimension '576' is not an index in 0..575"),
        (["--dim", "x"], "dimension 'x' is not an index in 0..575"),
        (["--dim", "3", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        (["--dim", "3", "--resamples", "-1"], "--resamples must be 0 or more, got -1"),
        (["--dim", "3", "--contexts", "-2"], "--contexts must be 0 or more, got -2"),
        (["--dim", "3", "--site", "nowhere"], "unknown site"),
    ],
)
def test_cli_bad_input_is_one_clear_line(alpha_dir, capsys, argv, message):
    assert main(["dim", "--cache", str(alpha_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_cli_on_a_missing_cache(tmp_path, capsys):
    assert main(["dim", "--cache", str(tmp_path / "none"), "--dim", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_add_contexts_command_repeats_the_caches_profile(alpha_dir):
    import shlex

    from diet_explore.cli import build_parser
    from diet_explore.masking.dims import contexts_command

    cache = load_cache(alpha_dir)
    card = dim_card(cache, MaskConfig(), 1)
    assert card.contexts_command == contexts_command(cache)
    args = build_parser().parse_args(shlex.split(card.contexts_command)[1:])
    assert args.command == "profile" and args.add_contexts and args.out == str(alpha_dir)
    assert args.tasks.split(",") == cache.task_names and args.samples == cache.manifest["config"]["samples"]
    assert args.sites.split(",") == cache.sites and args.dtype == "float32" and args.device == "cpu"


@pytest.mark.parametrize(
    "config, cause",
    [
        (
            MaskConfig(threshold=0.6, weights={"boolq": 2.0}, multiple_of=64),
            "rounded from the vote's 465 to 448, a multiple of 64",
        ),
        (MaskConfig(threshold=0.6, weights={"boolq": 2.0}, exact=True), "--exact keeps exactly the target count, 461"),
    ],
)
def test_a_dim_whose_share_reaches_tau_but_is_pruned_says_why(cache, alpha_dir, capsys, config, cause):
    """Gemma-3: four dims with keep share 0.625 > τ 0.6 showed as 'pruned' with no reason (a carried multiple-of)."""
    n_keep = keep_count(576, config.sparsity)
    keep = np.zeros((7, 576), dtype=bool)
    for i, t in enumerate(cache.task_names):  # the vote by hand: each task's top dims, boolq counting twice
        keep[i, rank_dims(aggregate_scores(cache, t))[:n_keep]] = True
    w = np.array([2.0 if t == "boolq" else 1.0 for t in cache.task_names])
    share = (w[:, None] * keep).sum(0) / w.sum()
    mask = build_mask(cache, config).keep
    odd = np.flatnonzero((share >= 0.6 - 1e-9) & ~mask)
    assert odd.size  # the settings prune some dims the vote keeps
    card = dim_card(cache, config, int(odd[0]))
    assert not card.mask_kept and card.vote_share == pytest.approx(share[odd[0]])
    (note,) = [n for n in card.notes if "although" in n]
    assert f"pruned although its share reaches τ 0.6 (share {share[odd[0]]:.3f})" in note and cause in note
    assert card.why.startswith("Pruned although its share reaches τ 0.6") and cause in card.why
    assert not [n for n in dim_card(cache, config, int(np.flatnonzero(mask)[0])).notes if "although" in n]
    argv = ["dim", "--cache", str(alpha_dir), "--dim", str(odd[0]), "--resamples", "0", "--threshold", "0.6"]
    argv += ["--weights", "boolq=2"] + (["--exact"] if config.exact else ["--multiple-of", "64"])
    assert main(argv) == 0
    assert cause in capsys.readouterr().out
