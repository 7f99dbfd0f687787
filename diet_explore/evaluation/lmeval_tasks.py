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
from dataclasses import dataclass
from pathlib import Path

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.tasks.lmeval_commands import TAG, task_name
from diet_explore.tasks.registry import Request, TaskSpec, resolve_tasks

MARKER = "diet_lmeval_tasks.json"  # what a folder this tool wrote holds (a re-run may replace only such a folder)
ALL_HELD_OUT = 10**9  # an EvalConfig limit no split reaches: with clip_limit, every held-out document
SPLIT = "validation"  # the name lm-eval sees; the rows are the quick evaluation's held-out ones


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
