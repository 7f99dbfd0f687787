"""The task registry: tasks are data (``builtin.json`` + user JSON files), turned into requests here.

A request is what both the profiler and the quick evaluation consume, so the two can never format
a task differently: ``contexts[i] + delimiter + continuations[i]`` is choice i's full text, and
the log-likelihood of the continuation given the context scores it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from diet_explore.errors import DietError
from diet_explore.tasks.formats import PREPROCESSORS

#: Bump when a template or preprocessor changes: caches record it, so stale ones are visible.
PROMPT_FORMAT_VERSION = 1
TARGET_DELIMITER = " "
FORMATS = ("multiple_choice", "partial")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: dict[str, Any]
    format: str = "multiple_choice"
    text: str | None = None
    choices: list[str] | None = None
    choices_field: str | None = None
    contexts_field: str | None = None
    continuation_field: str | None = None
    gold: dict[str, Any] = field(default_factory=dict)
    preprocess: str | None = None
    lm_eval_task: str | None = None
    target_delimiter: str = TARGET_DELIMITER


@dataclass(frozen=True)
class Request:
    """One document as scored: choice i's text is ``contexts[i] + delimiter + continuations[i]``."""

    task: str
    doc_id: int
    contexts: list[str]
    continuations: list[str]  # each already starts with the target delimiter
    gold: int

    @property
    def n_choices(self) -> int:
        return len(self.continuations)

    @property
    def choice_texts(self) -> list[str]:
        """The raw choice strings (used by acc_norm's length normalisation, as lm-eval does)."""
        return [c[1:] if c.startswith(TARGET_DELIMITER) else c for c in self.continuations]

    def gold_text(self) -> str:
        """Full text of the correct choice: what the profiler runs through the model."""
        return self.contexts[self.gold] + self.continuations[self.gold]


def _get(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value[part]
    return value


def _gold(spec: TaskSpec, doc: dict[str, Any]) -> int:
    g = spec.gold
    raw = _get(doc, g["field"])
    kind = g.get("type", "int")
    if kind == "bool":
        return int(bool(raw))
    if kind == "int":
        return int(raw) + int(g.get("offset", 0))
    if kind == "index_of":
        return list(_get(doc, g["in"])).index(str(raw).strip())
    raise DietError(f"task {spec.name}: unknown gold type {kind!r}", "use bool, int or index_of")


def build_request(spec: TaskSpec, doc: dict[str, Any], doc_id: int) -> Request:
    if spec.preprocess:
        doc = PREPROCESSORS[spec.preprocess](doc)
    delim = spec.target_delimiter
    if spec.format == "partial":
        contexts = list(_get(doc, spec.contexts_field))
        cont = delim + str(_get(doc, spec.continuation_field))
        continuations = [cont] * len(contexts)
    else:
        choices = spec.choices if spec.choices is not None else list(_get(doc, spec.choices_field))
        context = spec.text.format_map(doc)
        contexts = [context] * len(choices)
        continuations = [delim + str(c) for c in choices]
    return Request(spec.name, doc_id, contexts, continuations, _gold(spec, doc))


def _validate(name: str, entry: dict[str, Any], source: str) -> TaskSpec:
    try:
        spec = TaskSpec(name=name, **entry)
    except TypeError as exc:
        raise DietError(f"task {name!r} in {source}: {exc}", "see the fields documented in diet_explore/tasks/builtin.json") from None
    if spec.format not in FORMATS:
        raise DietError(f"task {name!r} in {source}: format {spec.format!r} is unknown", f"use one of {', '.join(FORMATS)}")
    if spec.preprocess and spec.preprocess not in PREPROCESSORS:
        raise DietError(f"task {name!r} in {source}: preprocess {spec.preprocess!r} is unknown", f"use one of {', '.join(PREPROCESSORS)}")
    if spec.format == "multiple_choice" and (spec.text is None or (spec.choices is None) == (spec.choices_field is None)):
        raise DietError(f"task {name!r} in {source}: needs 'text' and exactly one of 'choices' / 'choices_field'", "see builtin.json")
    if spec.format == "partial" and not (spec.contexts_field and spec.continuation_field):
        raise DietError(f"task {name!r} in {source}: partial format needs contexts_field and continuation_field", "see winogrande in builtin.json")
    if "field" not in spec.gold:
        raise DietError(f"task {name!r} in {source}: gold needs a 'field'", "e.g. {\"field\": \"label\", \"type\": \"int\"}")
    return spec


def load_registry(extra_files: list[str | Path] | None = None) -> dict[str, TaskSpec]:
    """Built-in tasks plus user JSON files (``DIET_EXPLORE_TASKS`` = ``os.pathsep``-separated list)."""
    sources: list[tuple[str, dict[str, Any]]] = [("builtin.json", json.loads(files("diet_explore.tasks").joinpath("builtin.json").read_text()))]
    env = os.environ.get("DIET_EXPLORE_TASKS")
    paths = list(extra_files or []) + ([p for p in env.split(os.pathsep) if p] if env else [])
    for p in paths:
        try:
            sources.append((str(p), json.loads(Path(p).read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise DietError(f"task file {p} could not be read ({exc})", "fix the path or the JSON") from None
    registry: dict[str, TaskSpec] = {}
    for source, entries in sources:
        for name, entry in entries.items():
            if not name.startswith("_"):
                registry[name] = _validate(name, entry, source)
    return registry


def resolve_tasks(names: str | list[str], registry: dict[str, TaskSpec] | None = None) -> list[TaskSpec]:
    """``"all"`` or a comma list / list of names → specs; an unknown name lists the known ones."""
    registry = registry or load_registry()
    if isinstance(names, str):
        names = list(registry) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise DietError(f"unknown task(s): {', '.join(unknown)}", f"known tasks: {', '.join(registry)}")
    if not names:
        raise DietError("no task given", f"use --tasks all or some of: {', '.join(registry)}")
    return [registry[n] for n in names]
