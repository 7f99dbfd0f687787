"""``diet-explore eval``: quick zero-shot evaluation of a model, optionally against a reference."""

from __future__ import annotations

from pathlib import Path

from diet_explore.cli._common import add_device_args, csv_list, int_arg, progress_printer
from diet_explore.core.errors import DietError
from diet_explore.core.numbers import perplexity, points
from diet_explore.tasks.data import DEFAULT_SEED

# what leads every file eval writes, so a later run may replace it and nothing else (``atomic.begins_with_kind``)
EVAL_KIND = "diet-explore-eval"  # --json
PREDICTIONS_KIND = "diet-explore-predictions"  # --predictions: every line


def register(sub) -> None:
    p = sub.add_parser("eval", help="quick lm-eval-compatible evaluation on held-out examples (+ wiki perplexity)")
    p.add_argument("--model", required=True, help="model to evaluate: built-in name, folder (e.g. a pruned one) or hub id")
    p.add_argument("--compare-to", default=None, help="reference model (e.g. the dense source) on the same examples")
    p.add_argument("--tasks", default="all", help="'all' or a comma list (see `diet-explore tasks`)")
    p.add_argument("--limit", type=int_arg, default=50, help="held-out examples per task")
    p.add_argument(
        "--clip-limit",
        action="store_true",
        help="--limit is an upper bound: a task with fewer held-out examples (RTE, ARC-Challenge) uses all it has",
    )
    p.add_argument(
        "--seed", type=int_arg, default=DEFAULT_SEED, help="the seeded draw shared with calibration (keeps them disjoint)"
    )
    p.add_argument("--cache", default=None, help="score cache whose calibration ids are excluded as well")
    p.add_argument("--no-perplexity", action="store_true", help="skip the held-out wiki perplexity")
    p.add_argument("--ppl-windows", type=int_arg, default=32, help="held-out wiki windows of 128 tokens")
    p.add_argument("--batch-tokens", type=int_arg, default=None, help="padded tokens per scoring pass (default 1024)")
    p.add_argument(
        "--workers", type=int_arg, default=None, help="forward passes side by side (default: 2 on a multi-core CPU, 1 on GPU)"
    )
    p.add_argument("--predictions", default=None, help="write per-example predictions to this JSONL file")
    p.add_argument("--json", default=None, help="write the full result as JSON")
    p.add_argument("--eval-cache", default=None, help="folder of cached per-model results (default: <data home>/eval-cache)")
    p.add_argument(
        "--no-eval-cache", action="store_true", help="recompute every model and store nothing (e.g. to time a cold run)"
    )
    add_device_args(p)
    # each model evaluated to the end is in the evaluation cache, which a re-run reuses
    p.set_defaults(func=run, resumes=lambda args: not args.no_eval_cache)


def run(args) -> int:
    import json

    from diet_explore.core import atomic
    from diet_explore.evaluation.evalcache import EvalCache
    from diet_explore.evaluation.evaluate import EvalConfig, PairResult, eval_requests, evaluate_cached, evaluate_model
    from diet_explore.models.adapters import check_supported
    from diet_explore.models.loading import load_config, load_model, pick_device, pick_dtype

    for path, flag in ((args.predictions, "--predictions"), (args.json, "--json")):
        if path:  # refused now, not after minutes of evaluation
            atomic.check_writable(path, flag, folder=False)
    if args.predictions and args.json and atomic.file_target(args.predictions) == atomic.file_target(args.json):
        raise DietError(
            f"--predictions and --json name the same file ({args.json}): the second would replace the first",
            "give them different paths, e.g. --predictions preds.jsonl --json results.json",
        )
    names = [args.compare_to, args.model] if args.compare_to else [args.model]
    # an output inside a folder this command reads (--cache, a model folder) would replace one of its
    # files: --json <cache>/manifest.json destroyed the score cache, --predictions <model>/config.json the model
    inputs = [(args.cache, "--cache"), (args.model, "--model"), (args.compare_to, "--compare-to")]
    for path, flag in ((args.predictions, "--predictions"), (args.json, "--json")):
        for folder, source in inputs:
            if path and folder and Path(folder).is_dir() and atomic.file_target(path).is_relative_to(Path(folder).resolve()):
                raise DietError(
                    f"{flag} {path} is inside the {source} folder {folder}, which this command reads: it would replace one of its files",
                    f"write it elsewhere, e.g. {flag} {Path(path).name}",
                )
    # and anywhere else, an existing file is replaced only when eval wrote it (its marker leads the file):
    # --json cache_copy/manifest.json, another model's config.json or a mask file were replaced with exit 0
    for path, flag, kind in ((args.predictions, "--predictions", PREDICTIONS_KIND), (args.json, "--json", EVAL_KIND)):
        if path:
            what = f'a file eval wrote (one that begins with "kind": "{kind}")'
            atomic.check_replaceable_file(path, flag, lambda p, kind=kind: atomic.begins_with_kind(p, kind), what)
    optional = {"batch_tokens": args.batch_tokens} if args.batch_tokens is not None else {}  # else the config's default
    config = EvalConfig(
        tasks=csv_list(args.tasks) if args.tasks != "all" else "all",
        limit=args.limit,
        clip_limit=args.clip_limit,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        perplexity=not args.no_perplexity,
        ppl_windows=args.ppl_windows,
        exclude_cache=args.cache,
        exclude_masks=pruned_folder_masks(names, args.cache),
        workers=args.workers,
        **optional,
    )
    requests = eval_requests(config)  # bad task names / limits fail before any model loads
    for name in names:  # a missing or unsupported model fails before the other one is evaluated
        check_supported(load_config(name).model_type)
    cache = None if args.no_eval_cache else EvalCache(args.eval_cache)
    if cache is not None:
        cache.check()  # a file or read-only folder is refused now, not after the evaluation
    device = pick_device(args.device)
    results = []
    for name in names:

        def compute(name=name):
            model, tokenizer, info = load_model(name, device, args.dtype)
            print(f"evaluating {info.name} ({info.num_parameters / 1e6:.2f} M parameters, hidden {info.hidden_size}) ...")
            return evaluate_model(model, tokenizer, config, progress_printer(info.name), info.name, requests), info.to_dict()

        result = evaluate_cached(name, config, requests, cache, device, pick_dtype(args.dtype, device), compute)
        if "cached" in result.extra:
            print(
                f"{result.model_name}: reusing its results of {result.extra['cached']['created']} "
                f"({result.extra['cached']['path']}); --no-eval-cache recomputes"
            )
        results.append(result)
    if args.compare_to:
        pair = PairResult(results[0], results[1])
        print(format_pair(pair))
        records, full = pair.predictions(), pair.to_json_dict()
    else:
        print(format_single(results[0]))
        records, full = results[0].predictions, results[0].to_json_dict()
    # the marker goes first, where the check above looks for it when a later run names the same file
    records, full = [{"kind": PREDICTIONS_KIND, **r} for r in records], {"kind": EVAL_KIND, **full}
    print(hand_off_text(args, config, list(requests), device))
    if args.predictions:
        atomic.write_text(args.predictions, "".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {len(records)} predictions to {args.predictions}")
    if args.json:
        atomic.write_json(args.json, full)
        print(f"wrote {args.json}")
    return 0


LMEVAL_DIR = "lmeval-tasks"  # the --out the printed lmeval-tasks command writes


def hand_off_text(args, config, tasks: list[str], device: str) -> str:
    """The full evaluation of the same held-out documents with lm-eval: the command that writes the task
    files (calibration left out), then the lm_eval commands of both models and their many-GPU variants."""
    from diet_explore.models.builtin import BUILTIN_MODELS, store_path
    from diet_explore.models.loading import dtype_name, pick_dtype
    from diet_explore.tasks.lmeval_commands import hand_off, lmeval_tasks_command, task_name

    def folder(name: str) -> str:
        return str(store_path(name)) if name in BUILTIN_MODELS else name

    if args.compare_to:
        labels = ("dense", "pruned") if config.exclude_masks else ("reference", "model")
        models = {labels[0]: folder(args.compare_to), labels[1]: folder(args.model)}
    else:  # a pruned folder alone: its dense source from its mask, when the mask names one
        dense = _dense_source(config.exclude_masks)
        models = {"dense": dense, "pruned": folder(args.model)} if dense else {"model": folder(args.model)}
    seed = args.seed if args.seed != DEFAULT_SEED else None
    write = lmeval_tasks_command(LMEVAL_DIR, config.tasks, args.cache, config.exclude_masks, seed)
    dtype = dtype_name(pick_dtype(args.dtype, device))
    lines = [
        "\nfull evaluation with lm-evaluation-harness on every held-out document (calibration examples left out, "
        f"offline; lm_eval --limit {config.limit} scores exactly the documents above):",
        f"  {write}",
    ]
    lines += [f"  {line}" for line in hand_off(models, LMEVAL_DIR, [task_name(t) for t in tasks], dtype, device)]
    return "\n".join(lines)


def _dense_source(masks: list[str]) -> str | None:
    """The model a pruned folder's mask was built from, as lm_eval loads it (a built-in: its
    de-quantized store folder); None without a mask or a recorded model id."""
    from diet_explore.masking.maskfile import load_mask
    from diet_explore.models.builtin import builtin_for, store_path

    if not masks:
        return None
    mask = load_mask(masks[0])
    spec = builtin_for(mask.model_name)
    return str(store_path(spec.name)) if spec else mask.model_id


def pruned_folder_masks(names: list[str], cache: str | None) -> list[str]:
    """The mask files of the pruned folders among ``names``: their recorded calibration examples
    are left out of the evaluation, whatever seed and sample count the profile used."""
    import warnings

    from diet_explore.core.atomic import check_path
    from diet_explore.masking.maskfile import load_mask
    from diet_explore.pruning.saving import MASK_FILE

    masks = [Path(n, MASK_FILE) for n in names if (check_path(n, "--model") / MASK_FILE).is_file()]
    for path in masks:
        if load_mask(path).calibration_ids is None and not cache:
            warnings.warn(
                f"{path} does not record its calibration examples (a mask from an older diet-explore), so "
                "only the default draw is left out; pass --cache <the score cache it was built from> to "
                "leave out exactly the profiled examples",
                stacklevel=2,
            )
    return [str(p) for p in masks]


MAIN_MARK = "*"  # marks each task's main metric (TaskSpec.main_metric), the one the average averages
MAIN_NOTE = f"{MAIN_MARK} the task's main metric; the average is the mean of the main metrics"


def _score(value: float, stderr: float, main: bool | None = None) -> str:
    """An accuracy in points with its standard error; with ``main`` given, a two-character slot that
    holds `` *`` for the task's main metric (so the column stays aligned)."""
    slot = "" if main is None else f" {MAIN_MARK}" if main else "  "
    if value != value:  # NaN: not reported for this task (WinoGrande's acc_norm)
        return "-" + slot
    return f"{points(value)} ± {points(stderr)}" + slot


def format_single(result) -> str:
    lines = [f"\n{'task':14s} {'n':>4s} {'acc (points)':>15s} {'acc_norm (points)':>18s}"]
    for t, m in result.task_metrics().items():
        cells = [_score(m[k], m[f"{k}_stderr"], m["main_metric"] == k) for k in ("acc", "acc_norm")]
        lines.append(f"{t:14s} {m['n']:4d} {cells[0]:>15s} {cells[1]:>18s}")
    avg = result.to_frame().loc["average"]
    lines.append(f"{'average (main)':14s} {'':4s} {_score(avg['main'], avg['main_stderr'], False):>15s}")
    lines.append(MAIN_NOTE)
    if result.perplexity is not None:
        lines.append(f"wiki perplexity (held-out): {perplexity(result.perplexity)}")
    lines.append(f"wall time {_wall(result)}")
    return "\n".join(lines)


def _delta(value, low, high, metric: str = "main") -> str:
    """A paired difference with its 95% interval as every screen prints it (``decision.format_estimate``:
    accuracy in points, never "-0.0"), with the ASCII minus a terminal shows."""
    from diet_explore.evaluation.decision import format_estimate

    return format_estimate(value, low, high, metric, minus="-")


def format_pair(pair) -> str:
    d, p = pair.dense, pair.pruned
    lines = [f"\n{'task':14s} {'metric':10s} {d.model_name[:16]:>16s} {p.model_name[:16]:>16s} {'Δ points [95% CI]':>24s}"]
    frame = pair.to_frame()
    for t in d.tasks:
        row = frame.loc[t]
        for key in ("acc", "acc_norm"):
            if row[f"dense_{key}"] != row[f"dense_{key}"]:  # NaN: undefined (WinoGrande acc_norm)
                continue
            label = f"{key} {MAIN_MARK}" if row["metric"] == key else key
            lines.append(
                f"{t:14s} {label:10s} {_score(row[f'dense_{key}'], row[f'dense_{key}_stderr']):>16s} "
                f"{_score(row[f'pruned_{key}'], row[f'pruned_{key}_stderr']):>16s} "
                f"{_delta(row[f'delta_{key}'], row[f'delta_{key}_ci_low'], row[f'delta_{key}_ci_high']):>24s}"
            )
    m, lo, hi = pair.average_delta()
    lines.append(f"{'average':14s} {'main':10s} {points(d.average()):>16s} {points(p.average()):>16s} {_delta(m, lo, hi):>24s}")
    lines.append(MAIN_NOTE)
    lines.append(f"\n{'task':14s} {'agreement % [95% CI]':>26s} {'Δ gold LL/char [95% CI]':>29s} {'choice KL [95% CI]':>26s}")
    paired = pair.paired()
    for t, entries in [*paired["tasks"].items(), ("average", paired["average"])]:
        cells = [_cell(entries[k], k) for k in ("agreement", "gold_ll_per_char", "choice_kl")]
        lines.append(f"{t:14s} {cells[0]:>26s} {cells[1]:>29s} {cells[2]:>26s}")
    if d.perplexity is not None:
        lines.append(f"wiki perplexity (held-out): {perplexity(d.perplexity)} -> {perplexity(p.perplexity)}")
    lines.append(f"wall time {_wall(d)} + {_wall(p)}")
    return "\n".join(lines)


def _cell(e: dict, metric: str) -> str:
    """One paired metric entry as ``_delta`` prints it (agreement in %, log-likelihoods in nats)."""
    return _delta(e["delta"], e["ci_low"], e["ci_high"], metric)


def _wall(result) -> str:
    return f"{result.wall_time_s:.1f} s" + (" (cached)" if "cached" in result.extra else "")
