"""Pure app helpers: query string <-> MaskConfig, widget state <-> MaskConfig, names, commands."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diet_explore.core.errors import DietError
from diet_explore.masking.build import MaskConfig
from diet_explore.masking.maskfile import mask_command
from diet_explore_app import settings as S

TASKS = ["boolq", "rte", "hellaswag", "arc_easy"]


def test_default_config_encodes_to_empty_query():
    assert S.encode_query(MaskConfig()) == {}
    config, cache, warnings = S.decode_query({})
    assert config == MaskConfig() and cache is None and warnings == []


def test_encode_writes_only_changed_fields_under_field_names():
    cfg = MaskConfig(sparsity=0.35, weights={"boolq": 2.0, "rte": 0.5}, exact=True, multiple_of=8, layer_agg="max")
    q = S.encode_query(cfg, cache="cache/gemma3-270m")
    assert q == {
        "cache": "cache/gemma3-270m",
        "sparsity": "0.35",
        "weights": "boolq:2,rte:0.5",
        "layer_agg": "max",
        "exact": "1",
        "multiple_of": "8",
    }


def test_decode_round_trips_a_full_config():
    cfg = MaskConfig(
        sparsity=0.42,
        threshold=0.75,
        weights={"boolq": 1.5},
        tasks=["boolq", "rte"],
        method="borda",
        site="normed",
        layer_agg="last_k",
        last_k=6,
        normalize="zscore",
        exact=True,
        multiple_of=8,
        seed=7,
    )
    back, cache, warnings = S.decode_query(S.encode_query(cfg, "x/y"))
    assert back == cfg and cache == "x/y" and warnings == []


@settings(max_examples=60, deadline=None)
@given(
    sparsity=st.integers(0, 90).map(lambda i: i / 100),  # the sliders' positions (a link holds no other)
    threshold=st.integers(0, 20).map(lambda i: i / 20),
    weights=st.dictionaries(st.sampled_from(TASKS), st.integers(0, 20).map(lambda i: i / 10), max_size=4),
    exact=st.booleans(),
    mult=st.sampled_from([1, 8]),
    method=st.sampled_from(["diet", "mean_score", "borda", "union", "intersection", "random", "magnitude"]),
)
def test_query_round_trip_property(sparsity, threshold, weights, exact, mult, method):
    cfg = MaskConfig(sparsity=sparsity, threshold=threshold, weights=weights, exact=exact, multiple_of=mult, method=method)
    query = S.encode_query(cfg)
    assert all(isinstance(v, str) for v in query.values())
    back, _, warnings = S.decode_query(query)
    assert back == cfg and not warnings


def test_decode_drops_bad_values_with_warnings_and_ignores_unknown_keys():
    config, _, warnings = S.decode_query(
        {
            "sparsity": "1.5",
            "threshold": "abc",
            "method": "nope",
            "exact": "maybe",
            "weights": "boolq:-1",
            "utm_source": "x",
            "multiple_of": "8",
        }
    )
    assert config == MaskConfig(multiple_of=8)
    assert len(warnings) == 5 and all("ignored link setting" in w for w in warnings)
    # each says what the link may hold
    assert "threshold='abc': use a number from 0.0 to 1.0" in " ".join(warnings)
    assert "method='nope': use one of diet," in " ".join(warnings) and "exact='maybe': use 1 or 0" in " ".join(warnings)


def test_a_link_key_close_to_a_setting_is_a_typo_warning_others_are_ignored():
    config, _, warnings = S.decode_query({"multiple": "9", "treshold": "0.3", "embed": "true", "utm_source": "x"})
    assert config == MaskConfig()
    assert warnings == [
        "ignored link setting multiple='9': no such setting; did you mean multiple_of=?",
        "ignored link setting treshold='0.3': no such setting; did you mean threshold=?",
    ]


def test_a_link_value_between_the_sliders_steps_is_put_on_a_step_with_a_warning():
    """sparsity=0.333 left the slider on 0.33 and the numbers on 0.333: the page stayed faded as updating."""
    config, _, warnings = S.decode_query({"sparsity": "0.333", "threshold": "0.33", "weights": "boolq:0.27,rte:1"})
    assert (config.sparsity, config.threshold, config.weights) == (0.33, 0.35, {"boolq": 0.3, "rte": 1.0})
    assert warnings == [
        "link setting sparsity='0.333' is between the slider's steps; 0.33 is used",
        "link setting threshold='0.33' is between the slider's steps; 0.35 is used",
        "link setting weights='boolq:0.27,rte:1' is between the slider's steps; boolq:0.3,rte:1 is used",
    ]
    # past the slider's end is refused, as any value out of range (0.95 drew the handle past its end)
    config, _, warnings = S.decode_query({"sparsity": "0.95"})
    assert config.sparsity == MaskConfig().sparsity and warnings == [
        f"ignored link setting sparsity='0.95': use a number from 0.0 to {S.SPARSITY_MAX}; the default is used"
    ]
    # any config the app shows (a sweep row, a saved mask) becomes slider positions
    state = S.state_from_config(MaskConfig(sparsity=0.2049, threshold=0.51, weights={"boolq": 1.26}), TASKS)
    assert (state[S.KEY_SPARSITY], state[S.KEY_THRESHOLD], state[S.weight_key("boolq")]) == (0.2, 0.5, 1.3)


def test_an_empty_tasks_value_in_a_link_is_a_warning_like_any_unusable_value():
    config, _, warnings = S.decode_query({"tasks": ""})  # it was dropped without a word
    assert config.tasks is None
    assert warnings == ["ignored link setting tasks='': it names no task; the default is used"]


def test_decode_accepts_cli_weight_syntax():
    config, _, warnings = S.decode_query({"weights": "boolq=2,rte:0.5"})
    assert config.weights == {"boolq": 2.0, "rte": 0.5} and not warnings


def test_decode_takes_last_value_of_a_repeated_param():
    config, _, _ = S.decode_query({"sparsity": ["0.1", "0.3"]})
    assert config.sparsity == 0.3


def test_reconcile_drops_tasks_the_cache_lacks():
    cfg = MaskConfig(weights={"boolq": 2.0, "mmlu": 1.0}, tasks=["boolq", "mmlu"])
    out, warnings = S.reconcile_config(cfg, TASKS)
    assert out.weights == {"boolq": 2.0} and out.tasks == ["boolq"]
    assert warnings and "mmlu" in warnings[0]
    out, _ = S.reconcile_config(MaskConfig(tasks=["mmlu"]), TASKS)
    assert out.tasks is None  # nothing left: every task votes


def test_state_round_trip_and_weight_zero_removes_the_task():
    state = S.state_from_config(MaskConfig(), TASKS)
    assert {state[S.weight_key(t)] for t in TASKS} == {1.0}
    assert S.config_from_state(state, TASKS) == MaskConfig()
    state[S.weight_key("rte")] = 0.0
    cfg = S.config_from_state(state, TASKS)
    assert cfg.tasks == ["boolq", "hellaswag", "arc_easy"] and cfg.weights == {}
    state[S.weight_key("boolq")] = 2.0
    cfg = S.config_from_state(state, TASKS)
    assert cfg.weights == {"boolq": 2.0, "hellaswag": 1.0, "arc_easy": 1.0}
    assert S.state_from_config(cfg, TASKS)[S.weight_key("rte")] == 0.0
    state[S.KEY_MULTIPLE] = 8
    state[S.KEY_EXACT] = True
    cfg = S.config_from_state(state, TASKS)
    assert cfg.multiple_of == 8 and cfg.exact


def test_all_weights_zero_is_a_diet_error():
    state = {S.weight_key(t): 0.0 for t in TASKS}
    with pytest.raises(DietError, match="weight 0"):
        S.config_from_state(state, TASKS)


def test_default_cache_prefers_smollm2(tmp_path):
    a, s = tmp_path / "aaa", tmp_path / "smollm2-135m"
    assert S.default_cache([a, s]) == s
    assert S.default_cache([a]) == a
    assert S.default_cache([]) is None


def test_cache_root_env_override_then_the_local_folder_then_the_packaged_caches(tmp_path):
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    assert S.cache_root(tmp_path, {S.CACHE_DIR_ENV: "/elsewhere"}).as_posix() == "/elsewhere"
    packaged = S.packaged_cache_root()
    assert packaged is not None and (packaged / "smollm2-135m" / "manifest.json").is_file()
    assert S.cache_root(tmp_path, {}) == packaged  # nothing under ./cache: the caches shipped with the package
    save_cache(synthetic_cache(hidden_size=16, num_layers=2, n_samples=3), tmp_path / "cache" / "mine")
    assert S.cache_root(tmp_path, {}) == tmp_path / "cache"


def test_parameters_after_pruning():
    from diet_explore.profiling.cache import ScoreCache

    def cache(model):
        return ScoreCache({"model": model}, {})

    assert cache({"hidden_size": 100, "num_parameters": 10_000, "params_per_hidden_dim": 50}).parameters_after(100) == 10_000
    assert cache({"hidden_size": 100, "num_parameters": 10_000, "params_per_hidden_dim": 50}).parameters_after(80) == 9_000
    assert cache({"hidden_size": 100}).parameters_after(80) is None


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "/abs", "..", ".hidden", "", "a" * 200, "x..y"])
def test_export_names_with_paths_are_refused(bad):
    with pytest.raises(DietError):
        S.check_export_name(bad)


def test_export_name_ok():
    assert S.check_export_name(" smollm2-diet_0.2 ") == "smollm2-diet_0.2"


def test_default_export_name_is_always_valid():
    h = S.settings_hash
    assert (
        S.default_export_name("smollm2-135m", MaskConfig(sparsity=0.25))
        == f"smollm2-135m-diet-s0.25-{h(MaskConfig(sparsity=0.25))}"
    )
    assert S.default_export_name("/tmp/x/tiny llama/", MaskConfig()) == f"tiny-llama-diet-s0.2-{h(MaskConfig())}"
    assert S.default_export_name("Org/Model", MaskConfig(method="borda")).startswith("Model-borda-s0.2-")
    assert S.default_export_name("..", MaskConfig()).startswith("model-diet-s0.2-")
    assert len(S.default_export_name("x" * 300, MaskConfig())) <= 128


def test_different_masks_never_share_a_default_export_name():
    """Two masks at one sparsity (other weights, τ, cache) used to get the same name and overwrite each other."""
    base = MaskConfig(sparsity=0.2)
    names = {
        S.default_export_name("m", base),
        S.default_export_name("m", MaskConfig(sparsity=0.2, threshold=0.6)),
        S.default_export_name("m", MaskConfig(sparsity=0.2, weights={"boolq": 2.0})),
        S.default_export_name("m", MaskConfig(sparsity=0.2, exact=True)),
        S.default_export_name("m", base, cache_hash="another-cache"),
    }
    assert len(names) == 5
    assert S.default_export_name("m", base) == S.default_export_name("m", MaskConfig(sparsity=0.2))  # same settings, same name


def test_mask_command_parses_back_to_the_same_config():
    from diet_explore.cli import build_parser
    from diet_explore.cli.mask import config_from_args

    cfg = MaskConfig(
        sparsity=0.3,
        threshold=0.6,
        weights={"boolq": 2.0},
        tasks=["boolq", "rte"],
        exact=True,
        multiple_of=8,
        layer_agg="last_k",
        last_k=3,
    )
    cmd = mask_command("cache/my cache", cfg, "out.json")
    argv = shlex.split(cmd)
    assert argv[:2] == ["diet-explore", "mask"]
    args = build_parser().parse_args(argv[1:])
    assert args.cache == "cache/my cache" and args.out == "out.json"
    assert config_from_args(args) == cfg


@pytest.mark.parametrize("method", ["random", "union"])
def test_mask_command_leaves_out_what_the_method_does_not_read(method):
    """The app keeps τ and weights whatever the method; the CLI now refuses them where they do nothing,
    so the Export page's command must not carry them (it would be refused when pasted)."""
    from diet_explore.cli import build_parser
    from diet_explore.cli.mask import config_from_args

    cfg = MaskConfig(sparsity=0.3, threshold=0.6, weights={"boolq": 2.0}, method=method, seed=3)
    argv = shlex.split(mask_command("cache/c", cfg, "out.json"))
    assert "--threshold" not in argv and ("--weights" in argv) == (method == "union")
    back = config_from_args(build_parser().parse_args(argv[1:]))  # accepted as pasted
    assert (back.method, back.sparsity, back.seed) == (method, 0.3, 3)
