"""One step of the tuning loop, as a background job: prune a copy of the dense model with a mask,
evaluate both on the same held-out examples, and record the run.

``run_prune_eval_job`` is what the app's Prune & evaluate page queues (``experiments/jobs.py`` runs
it in the worker process). The dense model's results are the same for every mask, so they come
from the evaluation cache on disk that the CLI shares (``evaluation/evalcache.py``) when it has
them; else dense and pruned are scored together, block by block. Examples are scored in blocks
interleaved across tasks (``evaluation/blocks.py``), and after every block the paired deltas on
the examples scored so far are written to the job record (``paired_so_far``), so the page shows
running numbers for every task from the first seconds. Finished blocks are kept in the job's
folder: an interrupted or stopped job resumes where it was.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from diet_explore.core.config import JsonConfig
from diet_explore.core.errors import DietError
from diet_explore.evaluation.blocks import ScoreLog
from diet_explore.evaluation.evalcache import EvalCache
from diet_explore.evaluation.evaluate import (
    EvalConfig,
    PairResult,
    cached_result,
    eval_requests,
    evaluate_cached,
    evaluate_models,
)
from diet_explore.evaluation.metrics import examples_of, paired_metrics
from diet_explore.evaluation.scoring import ChoiceScores
from diet_explore.experiments.runs import run_record
from diet_explore.pruning.slicing import count_parameters, prune_model
from diet_explore.tasks.registry import TaskSpec, resolve_tasks


def model_nbytes(model) -> int:
    """Bytes of the model's parameters in memory."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def pair_record(
    pair: PairResult,
    *,
    model: str,
    cache_path: str,
    manifest_hash: str,
    mask_config,
    n_keep: int,
    hidden_size: int,
    params: tuple[int, int],
    nbytes: tuple[int, int],
    source: str = "app",
) -> dict[str, Any]:
    """A dense-vs-pruned evaluation as a run-store record (``runs.run_record``, the one writer),
    with the parameter counts, sizes and time per example of both models. Each task keeps both
    models' scores (absolute numbers) and examples; the paired deltas live in ``paired`` only."""
    frame = pair.to_frame().reset_index()
    n_examples = int(sum(r.n for r in pair.dense.tasks.values()))
    task_rows = [
        {k: v for k, v in r.items() if not k.startswith("delta_")}
        for r in frame.to_dict(orient="records")
        if r["task"] != "average"
    ]
    for row in task_rows:  # every example of both models: runs that share examples can be paired later
        t = row["task"]
        row["examples"] = {"dense": examples_of(pair.dense.task_scores(t)), "pruned": examples_of(pair.pruned.task_scores(t))}
    return run_record(
        source=source,
        model=model,
        method=mask_config.method,
        mask_config=mask_config.to_dict(),
        target_sparsity=mask_config.sparsity,
        actual_sparsity=1.0 - n_keep / hidden_size,
        n_keep=n_keep,
        tasks=list(pair.dense.tasks),
        limit=pair.dense.config.limit,
        eval_config=pair.dense.config.to_dict(),
        dense_avg=pair.dense.average(),
        pruned_avg=pair.pruned.average(),
        dense_ppl=pair.dense.perplexity,
        pruned_ppl=pair.pruned.perplexity,
        wall_time_s=pair.dense.wall_time_s + pair.pruned.wall_time_s,
        task_results=task_rows,
        paired=pair.paired(),
        hidden_size=hidden_size,
        cache=cache_path,
        cache_manifest_hash=manifest_hash,
        parameters={"dense": params[0], "pruned": params[1]},
        bytes={"dense": nbytes[0], "pruned": nbytes[1]},
        seconds_per_example={
            "dense": pair.dense.wall_time_s / max(n_examples, 1),
            "pruned": pair.pruned.wall_time_s / max(n_examples, 1),
        },
        n_examples=n_examples,
    )


MAX_OTHERS = 3  # comparison masks one job scores beside the mask (each is a pruned copy in memory)


@dataclass
class PruneEvalJob(JsonConfig):
    """A Prune & evaluate job's config: everything the worker needs to rebuild the masks and the examples."""

    model: str  # built-in name, local folder or hub id
    cache: str  # the score cache the mask is built from
    cache_display: str  # the cache as the app names it (recorded in the run)
    manifest_hash: str  # the cache's when queued: a cache profiled again since is refused, not silently used
    mask: dict  # MaskConfig.to_dict()
    n_keep: int  # kept dims the page showed
    eval: dict  # EvalConfig.to_dict()
    source: str = "app"
    # label -> {"mask": MaskConfig dict, "n_keep"}: other masks (e.g. baselines at the same kept
    # count) scored in the same job, block by block with the mask, so the paired difference
    # between them is known from the first blocks instead of after a whole run each
    others: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.others) > MAX_OTHERS:
            raise DietError(f"{len(self.others)} comparison masks in one job", f"compare with at most {MAX_OTHERS}")
        reserved = {"dense", "pruned"} & set(self.others)
        if reserved:
            raise DietError(f"comparison mask label {sorted(reserved)[0]!r} is reserved", "name it after its method")


def other_run_id(run_id: str, label: str) -> str:
    """The run id a job's comparison mask ``label`` is stored under: fixed by the job's run id, so
    a resumed job replaces that run rather than adding a second one."""
    return f"{run_id.split('-')[0]}-{hashlib.sha256(f'{run_id}:{label}'.encode()).hexdigest()[:8]}"


def pruned_copies_fit(model, copies: int) -> bool:
    """Whether ``copies`` pruned copies of ``model`` (each at most its size) fit in half the free
    memory of its device, beside it: then a job scores every mask at once."""
    import psutil

    from diet_explore.core.batching import gpu_free_bytes

    device = next(model.parameters()).device
    free = gpu_free_bytes(str(device)) if device.type == "cuda" else psutil.virtual_memory().available
    return copies * model_nbytes(model) <= 0.5 * free


def mask_progress(index: int, count: int, name: str, fraction: float, message: str) -> tuple[float, str]:
    """(the whole job's share done, the text under its bar) while mask ``index`` (0-based) of
    ``count`` is scored, ``fraction`` of that mask's examples done (``message``: the scorer's own
    count). The text starts with the share as the bar shows it (whole percent, rounded down), so
    bar and text never disagree; the mask's own count follows, named."""
    share = max(0.0, min(1.0, (index + fraction) / max(count, 1)))
    return share, f"{int(share * 100)}% of the job · mask {index + 1} of {count} ({name}): {message}"


def run_prune_eval_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The job behind Prune & evaluate (``ctx``: ``jobs.JobContext``): build the mask (and the
    comparison masks), prune copies, evaluate them block by block (dense from the evaluation
    cache when it has it), store each run. Returns ``{"run_id", "dense_reused", "others"}``
    (``others``: label -> run id)."""
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.profiling.cache import load_cache

    spec = PruneEvalJob.from_dict(config)
    ecfg = EvalConfig.from_dict(spec.eval)
    requests = eval_requests(ecfg)  # bad tasks or limits fail before the model loads
    cache = load_cache(spec.cache)
    if cache.manifest_hash != spec.manifest_hash:
        raise DietError(
            f"the score cache {spec.cache_display} changed since this job was queued (profiled again?)",
            "queue the run again from the Prune & evaluate page",
        )
    wanted = {"pruned": (spec.mask, spec.n_keep)} | {k: (v["mask"], int(v["n_keep"])) for k, v in spec.others.items()}
    masks = {}
    for label, (mask_config, n_keep) in wanted.items():
        masks[label] = build_mask(cache, MaskConfig.from_dict(mask_config))
        if masks[label].n_keep != n_keep:
            raise DietError(
                f"the {'mask' if label == 'pruned' else label + ' mask'} now keeps {masks[label].n_keep} dims, not the "
                f"{n_keep} shown when the job was queued",
                "queue the run again from the Prune & evaluate page",
            )
    mask = masks["pruned"]
    ctx.log(f"Loading {spec.model}…")
    model, tokenizer, info = ctx.load_model(spec.model, ecfg.device, ecfg.dtype)
    if int(model.config.hidden_size) != mask.hidden_size:
        raise DietError(
            f"{spec.model} has hidden size {model.config.hidden_size}, the mask is for {mask.hidden_size}",
            "use the model the score cache was profiled from",
        )
    ctx.log(f"Pruning to {mask.n_keep} hidden dims (a copy; the loaded model is untouched)…")
    param = next(model.parameters())
    eval_cache = EvalCache()
    dense = cached_result(spec.model, ecfg, requests, eval_cache, param.device.type, param.dtype, label="dense")
    if dense is not None:
        ctx.log(
            "Dense results reused: same model and held-out examples as an earlier run "
            f"(evaluation cache, computed {dense.extra['cached']['created']})."
        )
    specs = {s.name: s for s in resolve_tasks(list(requests))}
    scored: dict[str, dict[tuple[str, int], ChoiceScores]] = {"dense": {}} | {label: {} for label in masks}
    if dense is not None:
        scored["dense"] = {(s.task, s.doc_id): s for s in dense.scores}

    def on_block(unit, scores: list[ChoiceScores]) -> None:
        scored[unit.label].update(((s.task, s.doc_id), s) for s in scores)
        ctx.partial(paired_so_far(scored, specs, requests))

    # Every mask's pruned copy together, blocks interleaved, so a comparison (DIET vs random) streams
    # from the first block, when the copies fit in memory; else one copy at a time (built, scored, freed).
    labels = list(masks)
    groups = [labels] if pruned_copies_fit(model, len(labels)) else [[label] for label in labels]
    results, sizes, blocks = {}, {}, ScoreLog(ctx.folder / "blocks")
    for i, group in enumerate(groups):
        pruned = {label: prune_model(model, masks[label].keep, saveable=False) for label in group}
        sizes |= {label: (count_parameters(p), model_nbytes(p)) for label, p in pruned.items()}
        models = ({"dense": model} if dense is None and i == 0 else {}) | pruned
        name = ", ".join(masks[label].config.label() for label in group) + (", with dense" if "dense" in models else "")
        part = lambda f, msg, i=i, name=name: ctx.progress(*mask_progress(i, len(groups), name, f, msg))
        results |= evaluate_models(
            models, tokenizer, ecfg, part, requests, log=blocks, on_block=on_block, should_stop=ctx.should_stop
        )
        del pruned, models
    reused = dense is not None
    if dense is None:  # stored for the next mask, as `eval` and `compare` would
        dense = evaluate_cached(
            spec.model,
            ecfg,
            requests,
            eval_cache,
            param.device.type,
            param.dtype,
            lambda: (results["dense"], info.to_dict()),
            label="dense",
        )
    run_ids = {label: ctx.job["run_id"] if label == "pruned" else other_run_id(ctx.job["run_id"], label) for label in masks}
    for label, m in masks.items():
        record = pair_record(
            PairResult(dense, results[label]),
            model=spec.model,
            cache_path=spec.cache_display,
            manifest_hash=spec.manifest_hash,
            mask_config=m.config,
            n_keep=m.n_keep,
            hidden_size=m.hidden_size,
            params=(count_parameters(model), sizes[label][0]),
            nbytes=(model_nbytes(model), sizes[label][1]),
            source=spec.source,
        )
        ctx.runs.save(record, run_id=run_ids[label])  # under ids fixed by the job: a re-run replaces, never adds
    ctx.log(f"Done: run {run_ids['pruned']}" + "".join(f", {label} {run_ids[label]}" for label in spec.others))
    return {"run_id": run_ids["pruned"], "dense_reused": reused, "others": {k: run_ids[k] for k in spec.others}}


def _paired_on_shared(
    a: dict[tuple[str, int], ChoiceScores], b: dict[tuple[str, int], ChoiceScores], specs: dict[str, TaskSpec], requests
) -> dict[str, Any]:
    """``metrics.paired_metrics`` of ``b`` against ``a`` (``b − a``) on the examples both have scored."""
    by_task = [{t: [m[k] for k in ((r.task, r.doc_id) for r in reqs) if k in m] for t, reqs in requests.items()} for m in (a, b)]
    return paired_metrics(by_task[0], by_task[1], {t: specs[t] for t in requests})


def paired_so_far(
    scored: dict[str, dict[tuple[str, int], ChoiceScores]],
    specs: dict[str, TaskSpec],
    requests: dict[str, list],
) -> dict[str, Any]:
    """What the page shows while a job runs, from the examples scored so far (``scored``: model
    label -> (task, doc id) -> scores, with ``"dense"`` and ``"pruned"``): ``metrics.paired_metrics``
    of pruned vs dense on the examples both have; ``scored`` / ``total`` / ``task_totals`` count
    examples; and for every other mask, ``others[label]`` = ``{"vs_dense": ..., "versus": pruned −
    label}``, the paired difference between the two masks."""
    out = _paired_on_shared(scored["dense"], scored["pruned"], specs, requests)
    out["scored"] = {label: len(m) for label, m in scored.items()}
    out["total"] = sum(len(r) for r in requests.values())
    out["task_totals"] = {t: len(r) for t, r in requests.items()}
    others = [label for label in scored if label not in ("dense", "pruned")]
    if others:
        out["others"] = {
            label: {
                "vs_dense": _paired_on_shared(scored["dense"], scored[label], specs, requests),
                "versus": _paired_on_shared(scored[label], scored["pruned"], specs, requests),
            }
            for label in others
        }
    return out
