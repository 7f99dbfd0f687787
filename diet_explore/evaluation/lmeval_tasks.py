"""lm-evaluation-harness task files over the quick evaluation's held-out documents, offline.

A full evaluation must score the documents the quick evaluation holds out, not a task's whole split:
the split holds the calibration samples a mask was built from (100 per task by default, 36% of RTE),
and lm-eval scores ARC and OpenBookQA on their test split while the quick evaluation uses validation.
So each task gets ``diet_<task>.yaml`` and ``<task>.jsonl``: one row per held-out document, in the
quick evaluation's order (``evaluate.eval_requests``, which calls the project's split rule), holding
the request exactly as the quick evaluation scores it (context(s), choices, gold). lm-eval reads the
rows with ``dataset_path: json`` (no download), so ``lm_eval --limit 50`` scores exactly the 50
documents that ``diet-explore eval --limit 50`` scores. The YAMLs name their data by absolute path:
a moved folder is written again.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.tasks.registry import Request, TaskSpec, resolve_tasks

TASK_PREFIX = "diet_"  # lm-eval task names: diet_boolq, ... (lm-eval's own `boolq` reads the whole hub split)
TAG = "diet_explore"  # `--tasks diet_explore` runs every task of a folder
MARKER = "diet_lmeval_tasks.json"  # what a folder this tool wrote holds (a re-run may replace only such a folder)
ALL_HELD_OUT = 10**9  # an EvalConfig limit no split reaches: with clip_limit, every held-out document
SPLIT = "validation"  # the name lm-eval sees; the rows are the quick evaluation's held-out ones


def task_name(task: str) -> str:
    return TASK_PREFIX + task


def heldout_requests(
    tasks: str | list[str] = "all",
    cache: str | None = None,
    masks: list[str] | None = None,
    seed: int | None = None,
    limit: int | None = None,
) -> dict[str, list[Request]]:
    """The quick evaluation's held-out requests: every one (``limit`` None) or its first ``limit``,
    with the calibration ids of ``cache`` and of every mask file in ``masks`` left out, as ``eval`` does."""
    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests

    optional = {"seed": seed} if seed is not None else {}
    config = EvalConfig(
        tasks=tasks,
        limit=ALL_HELD_OUT if limit is None else limit,
        clip_limit=limit is None,
        perplexity=False,
        exclude_cache=cache,
        exclude_masks=list(masks or []),
        **optional,
    )
    return eval_requests(config)


def _row(spec: TaskSpec, r: Request) -> dict:
    """One document as the quick evaluation scores it; continuations lose the delimiter lm-eval adds back."""
    delim = spec.target_delimiter
    strip = [c[len(delim) :] if c.startswith(delim) else c for c in r.continuations]
    if spec.format == "partial":  # one context per choice, one shared continuation (WinoGrande)
        return {"doc_id": r.doc_id, "contexts": r.contexts, "continuation": strip[0], "gold": r.gold}
    return {"doc_id": r.doc_id, "context": r.contexts[0], "choices": strip, "gold": r.gold}


def _yaml(spec: TaskSpec, data_file: Path, n: int) -> str:
    # JSON strings are YAML strings: every value is written with json.dumps (no YAML library needed).
    q = json.dumps
    partial = spec.format == "partial"
    lines = [
        f"# {spec.name}: the {n} held-out documents of diet-explore's quick evaluation, in its order",
        "# (calibration examples left out), as it formats them; written by `diet-explore lmeval-tasks`.",
        f"# lm-eval's own task: {spec.lm_eval_task or '(none)'}. The data path is absolute: rewrite after moving.",
        f"task: {task_name(spec.name)}",
        f"tag: {TAG}",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    {SPLIT}: {q(str(data_file))}",
        "training_split: null",
        f"validation_split: {SPLIT}",
        "test_split: null",
        "fewshot_split: null",
        "num_fewshot: 0",
        "output_type: multiple_choice",
        # a document field named alone is returned as is (no template rendering); an int from
        # doc_to_text with doc_to_choice means one context per choice, lm-eval's WinoGrande form
        f"doc_to_text: {'gold' if partial else 'context'}",
        f"doc_to_choice: {'contexts' if partial else 'choices'}",
        f"doc_to_target: {'continuation' if partial else 'gold'}",
        f"target_delimiter: {q(spec.target_delimiter)}",
        "should_decontaminate: false",
        "metric_list:",
    ]
    for m in spec.metrics:
        lines += [f"  - metric: {m}", "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", "  version: 1.0", f"  main_metric: {spec.main_metric}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LmEvalTasks:
    folder: Path
    documents: dict[str, int]  # registry task -> held-out documents written

    @property
    def task_names(self) -> list[str]:
        return [task_name(t) for t in self.documents]


def write_lmeval_tasks(
    out: str | Path,
    tasks: str | list[str] = "all",
    cache: str | None = None,
    masks: list[str] | None = None,
    seed: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> LmEvalTasks:
    """Write ``diet_<task>.yaml`` + ``<task>.jsonl`` per task into ``out`` (staged, renamed into place);
    an existing ``out`` is replaced only with ``overwrite`` and only when this function wrote it."""
    specs = {s.name: s for s in resolve_tasks(tasks)}
    requests = heldout_requests(tasks, cache, masks, seed, limit)
    final = Path(out).expanduser().resolve()
    with atomic.staged_dir(final, overwrite=overwrite, marker=MARKER) as tmp:
        for name, reqs in requests.items():
            spec = specs[name]
            atomic.write_text(tmp / f"{name}.jsonl", "".join(json.dumps(_row(spec, r)) + "\n" for r in reqs))
            atomic.write_text(tmp / f"{task_name(name)}.yaml", _yaml(spec, final / f"{name}.jsonl", len(reqs)))
        documents = {name: len(reqs) for name, reqs in requests.items()}
        atomic.write_json(
            tmp / MARKER,
            {"tasks": documents, "cache": cache, "masks": list(masks or []), "seed": seed, "limit": limit},
        )
    return LmEvalTasks(final, documents)


def read_lmeval_tasks(folder: str | Path) -> LmEvalTasks:
    """A folder ``write_lmeval_tasks`` wrote; a DietError naming the fix for anything else."""
    marker = atomic.read_json_object(Path(folder) / MARKER)
    if marker is None or not isinstance(marker.get("tasks"), dict):
        raise DietError(
            f"{folder} is not a folder of lm-eval tasks written by diet-explore (no {MARKER})",
            f"write one with `diet-explore lmeval-tasks --out {folder}`",
        )
    return LmEvalTasks(Path(folder), {str(k): int(v) for k, v in marker["tasks"].items()})


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
#: The ways to run them: one device; one model split over every visible GPU (hf's parallelize=True, for a
#: model larger than one GPU); vLLM with one replica per GPU (data parallel, for many GPUs).
VARIANTS = ("hf", "hf-parallelize", "vllm")


def lm_eval_command(
    model_folder: str,
    tasks_dir: str | Path,
    task_names: list[str],
    variant: str = "hf",
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 8,
    gpus: int = 8,
    limit: int | None = None,
) -> str:
    """The ``lm_eval`` command scoring ``model_folder`` on the held-out tasks in ``tasks_dir``."""
    if variant not in VARIANTS:
        raise DietError(f"unknown lm-eval variant {variant!r}", f"use one of {', '.join(VARIANTS)}")
    model_args = f"pretrained={model_folder},dtype={dtype}"
    backend, batch = "hf", str(batch_size)
    if variant == "hf-parallelize":
        model_args += ",parallelize=True"
    elif variant == "vllm":
        backend, batch = "vllm", "auto"
        model_args += f",tensor_parallel_size=1,data_parallel_size={gpus},gpu_memory_utilization=0.8"
    args = ["lm_eval", "--model", backend, "--model_args", model_args]
    args += ["--include_path", str(tasks_dir), "--tasks", ",".join(task_names), "--batch_size", batch]
    if device and variant == "hf":
        args += ["--device", device]
    if limit:
        args += ["--limit", str(limit)]
    return shlex.join(args)  # quoted: a folder with a space in its path pastes as one argument


def lmeval_tasks_command(
    out: str | Path,
    tasks: list[str] | str = "all",
    cache: str | None = None,
    masks: list[str] | None = None,
    seed: int | None = None,
) -> str:
    """The ``diet-explore lmeval-tasks`` command that writes the task files ``eval`` held out."""
    args = ["diet-explore", "lmeval-tasks", "--out", str(out)]
    if tasks != "all":
        args += ["--tasks", ",".join(tasks) if isinstance(tasks, list) else tasks]
    if cache:
        args += ["--cache", str(cache)]
    for m in masks or []:
        args += ["--mask", str(m)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return shlex.join(args)


def hand_off(
    models: dict[str, str],
    tasks_dir: str | Path,
    task_names: list[str],
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    gpus: int = 8,
) -> list[str]:
    """Lines saying how to run each model (label -> folder, e.g. dense and pruned) with lm-eval on
    the held-out tasks: the one-device command for each, then the many-GPU variants (vLLM's
    ``data_parallel_size`` is ``gpus``: set it to the GPU count)."""
    lines = []
    for label, folder in models.items():
        lines.append(f"{label}: {lm_eval_command(folder, tasks_dir, task_names, 'hf', dtype, device, batch_size, limit=limit)}")
    for label, folder in models.items():
        for variant, what in (
            ("hf-parallelize", "one model over every GPU"),
            ("vllm", f"vLLM, one replica on each of {gpus} GPUs"),
        ):
            cmd = lm_eval_command(folder, tasks_dir, task_names, variant, dtype, batch_size=batch_size, gpus=gpus, limit=limit)
            lines.append(f"{label}, {what}: {cmd}")
    return lines
