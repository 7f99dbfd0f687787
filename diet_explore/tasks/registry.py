"""The task registry: tasks are data (``builtin.json`` + user JSON files), turned into requests here.

A request is what both the profiler and the quick evaluation consume, so the two can never format
a task differently: ``contexts[i] + delimiter + continuations[i]`` is choice i's full text, and
the log-likelihood of the continuation given the context scores it.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from diet_explore.core.atomic import DuplicateKeyError, loads_json
from diet_explore.core.errors import DietError
from diet_explore.tasks.formats import PREPROCESSORS

#: Bump when a template or preprocessor changes: caches record it, so stale ones are visible.
PROMPT_FORMAT_VERSION = 1
TARGET_DELIMITER = " "
FORMATS = ("multiple_choice", "partial")
METRICS = ("acc", "acc_norm")
FORMAT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "partial": ("acc",)}  # what each format can report
GOLD_TYPES = ("bool", "int", "index_of")
DATASET_KEYS = ("local", "path", "hub", "hub_name", "split")
GOLD_KEYS = ("field", "type", "offset", "in")
GENERIC_TASK = "wikitext"  # the generic text set a profile adds (tasks/wiki.py): a cache entry, not a registry task
RESERVED_NAMES = ("all", GENERIC_TASK)  # `--tasks all` means every task; the generic set's name is taken
# a task name is a file name in a score cache (tasks/<name>.safetensors) and an item of a comma list
# (--tasks a,b): letters, digits, '_', '-', '.', starting with a letter or digit, at most 64 characters
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FORMAT_WIDTH = 1000  # a template field's format width or precision ("{s:>999999999}" is refused)
MAX_TEXT_CHARS = 1_000_000  # a filled-in template: far above any prompt, far below what breaks a tokenizer
SCHEMA_HINT = "see the fields documented in diet_explore/tasks/builtin.json (_doc)"


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
    # What evaluation reports for this task, and which of it is the task's headline number (the
    # paper-style average averages that one). acc_norm needs one context per request, so partial
    # scoring (WinoGrande) reports acc only, as lm-eval does. None: the format's default.
    metrics: tuple[str, ...] | None = None
    main_metric: str = "acc"

    def __post_init__(self) -> None:
        if self.metrics is None:
            object.__setattr__(self, "metrics", FORMAT_METRICS.get(self.format, ("acc",)))
        else:
            object.__setattr__(self, "metrics", tuple(self.metrics))


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


# ------------------------------------------------------------------------------------------------
# Documents -> requests. Every way a task entry can disagree with its data ends here as a DietError
# naming the task, the entry field and the document, never as a KeyError deep in a profile run.
# ------------------------------------------------------------------------------------------------
def _where(spec: TaskSpec, doc_id: int) -> str:
    return f"task {spec.name!r}, doc {doc_id}"


def _fields_hint(doc: Any, entry_field: str) -> str:
    if not isinstance(doc, Mapping):
        return f"fix {entry_field} in the task entry"
    names = sorted(str(k) for k in doc)
    shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
    return f"fix {entry_field} in the task entry; the document's fields are: {shown}"


def _get(spec: TaskSpec, doc: dict[str, Any], dotted: str, entry_field: str, doc_id: int) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; ``entry_field`` names the task-entry field that asked for it."""
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise DietError(
                f"{_where(spec, doc_id)}: {entry_field} {dotted!r} is not in the document", _fields_hint(value, entry_field)
            )
        value = value[part]
    return value


def _get_list(spec: TaskSpec, doc: dict[str, Any], dotted: str, entry_field: str, doc_id: int) -> list[Any]:
    value = _get(spec, doc, dotted, entry_field, doc_id)
    # A string is iterable too, but its characters are never the intended choices.
    if not isinstance(value, (list, tuple)) or not value:
        raise DietError(
            f"{_where(spec, doc_id)}: {entry_field} {dotted!r} is {type(value).__name__} {str(value)[:60]!r}, "
            "not a non-empty list",
            f"point {entry_field} at a list field of the document",
        )
    return list(value)


def _gold(spec: TaskSpec, doc: dict[str, Any], doc_id: int) -> int:
    g = spec.gold
    raw = _get(spec, doc, g["field"], "gold.field", doc_id)
    kind = g.get("type", "int")
    if kind == "bool":
        return int(bool(raw))
    if kind == "int":
        try:
            return int(raw) + int(g.get("offset", 0))
        except (TypeError, ValueError):
            raise DietError(
                f"{_where(spec, doc_id)}: gold.field {g['field']!r} is {raw!r}, not an integer",
                "use gold.type index_of (with gold.in) or bool for non-integer answers",
            ) from None
    if kind == "index_of":
        labels = [str(x).strip() for x in _get_list(spec, doc, g["in"], "gold.in", doc_id)]
        answer = str(raw).strip()
        if answer not in labels:
            raise DietError(
                f"{_where(spec, doc_id)}: gold {answer!r} (from {g['field']!r}) is not among {g['in']!r} {labels}",
                "fix gold.field / gold.in so the answer is one of the labels",
            )
        return labels.index(answer)
    raise DietError(f"task {spec.name!r}: unknown gold type {kind!r}", f"use one of {', '.join(GOLD_TYPES)}")


def _format_text(spec: TaskSpec, doc: dict[str, Any], doc_id: int) -> str:
    assert spec.text is not None  # guaranteed for multiple_choice by _validate
    try:
        text = spec.text.format_map(doc)
        if len(text) > MAX_TEXT_CHARS:  # a tokenizer given gigabytes panics (rc 134) instead of raising
            raise DietError(
                f"{_where(spec, doc_id)}: the filled-in text is {len(text)} characters, over {MAX_TEXT_CHARS}",
                "check the template and the document's fields; a prompt is a few thousand characters",
            )
        return text
    except KeyError as exc:
        raise DietError(
            f"{_where(spec, doc_id)}: text {spec.text!r} names field {{{exc.args[0]}}}, which the document lacks",
            _fields_hint(doc, "text"),
        ) from None
    except (AttributeError, IndexError, TypeError, ValueError) as exc:  # "{a.b}", "{a[9]}", "{a:d}" on the wrong value
        raise DietError(
            f"{_where(spec, doc_id)}: text {spec.text!r} cannot be filled from the document ({exc})", _fields_hint(doc, "text")
        ) from None


def _preprocess(spec: TaskSpec, doc: dict[str, Any], doc_id: int) -> dict[str, Any]:
    assert spec.preprocess is not None
    try:
        return PREPROCESSORS[spec.preprocess](doc)
    except KeyError as exc:
        raise DietError(
            f"{_where(spec, doc_id)}: preprocess {spec.preprocess!r} needs field {exc.args[0]!r}, which the document lacks",
            _fields_hint(doc, "preprocess"),
        ) from None
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise DietError(
            f"{_where(spec, doc_id)}: preprocess {spec.preprocess!r} failed on the document ({exc})",
            "use a preprocessor written for this dataset, or none",
        ) from None


def build_request(spec: TaskSpec, doc: dict[str, Any], doc_id: int) -> Request:
    if spec.preprocess:
        doc = _preprocess(spec, doc, doc_id)
    delim = spec.target_delimiter
    if spec.format == "partial":
        assert spec.contexts_field is not None and spec.continuation_field is not None
        contexts = [str(c) for c in _get_list(spec, doc, spec.contexts_field, "contexts_field", doc_id)]
        cont = delim + str(_get(spec, doc, spec.continuation_field, "continuation_field", doc_id))
        continuations = [cont] * len(contexts)
    else:
        if spec.choices is not None:
            choices = spec.choices
        else:
            assert spec.choices_field is not None
            choices = _get_list(spec, doc, spec.choices_field, "choices_field", doc_id)
        context = _format_text(spec, doc, doc_id)
        contexts = [context] * len(choices)
        continuations = [delim + str(c) for c in choices]
    gold = _gold(spec, doc, doc_id)
    # Checked here, not when the gold text is read: an out-of-range label (e.g. -1 in an unlabelled
    # split, or a 1-based label without offset -1) must not surface as an IndexError mid-run.
    if not 0 <= gold < len(continuations):
        raise DietError(
            f"{_where(spec, doc_id)}: gold index {gold} (from {spec.gold['field']!r}) is outside "
            f"the {len(continuations)} choice(s)",
            "fix choices / gold.offset (1-based labels need offset -1), or use a labelled split",
        )
    return Request(spec.name, doc_id, contexts, continuations, gold)


# ------------------------------------------------------------------------------------------------
# Registry files -> TaskSpecs. A file of the wrong shape fails here, naming file, task and field.
# ------------------------------------------------------------------------------------------------
_STR_FIELDS = (
    "format",
    "text",
    "choices_field",
    "contexts_field",
    "continuation_field",
    "preprocess",
    "lm_eval_task",
    "target_delimiter",
    "main_metric",
)
_NULLABLE = ("text", "choices_field", "contexts_field", "continuation_field", "preprocess", "lm_eval_task")


def _type_name(value: Any) -> str:
    return (
        "null"
        if value is None
        else {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
    )


def _describe(value: Any) -> str:
    """``string 'ab'``, ``int 3``, ``null``: a bad value as the JSON author wrote it, kept short."""
    if value is None:
        return "null"
    shown = repr(value)
    return f"{_type_name(value)} {shown if len(shown) <= 80 else shown[:77] + '...'}"


def _check_template(text: str, where: str) -> None:
    # Parsed now so a bad template fails when the file is read, not at the first document.
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise DietError(
            f"{where}: text {text!r} is not a valid template ({exc})",
            "write fields as {name}; double a literal brace as {{ or }}",
        ) from None
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name == "" or name[0].isdigit():  # format_map has no positional arguments to fill these
            raise DietError(
                f"{where}: text {text!r} has a positional field {{{name}}}",
                "name a document field, e.g. {question}; double a literal brace as {{ or }}",
            )
        # "{s.__class__.__mro__}" walks attributes of the document's values, "{s[0]}" indexes them
        if "." in name or "[" in name:
            raise DietError(
                f"{where}: text {text!r} has the field {{{name[:60]}}}; templates take plain field names only",
                "name a document field, e.g. {question}, and use a preprocessor for anything more",
            )
        if "{" in (spec or ""):
            raise DietError(f"{where}: text {text!r} has a nested field in the format of {{{name}}}", "write a fixed format")
        widths = [int(n) for n in re.findall(r"\d+", spec or "")]  # "{s:>999999999}" built a 1 GB string per document
        if widths and max(widths) > MAX_FORMAT_WIDTH:
            raise DietError(
                f"{where}: text {text!r} asks for width {max(widths)} in {{{name}:{spec[:40]}}}; "
                f"a format's width or precision is at most {MAX_FORMAT_WIDTH}",
                "drop the format or use a small width, e.g. {question:>10}",
            )


def _check_dataset(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise DietError(
            f"{where}: dataset is {_describe(d)}, not an object",
            'e.g. "dataset": {"path": "/data/my_task", "split": "validation"}',
        )
    unknown = [k for k in d if k not in DATASET_KEYS]
    if unknown:
        raise DietError(
            f"{where}: dataset has unknown field(s) {', '.join(map(repr, unknown))}", f"use {', '.join(DATASET_KEYS)}"
        )
    for key, value in d.items():
        if value is not None and not isinstance(value, str):
            raise DietError(f"{where}: dataset.{key} is {_describe(value)}, not a string", SCHEMA_HINT)


def _check_gold(g: Any, where: str) -> None:
    example = 'e.g. "gold": {"field": "label", "type": "int"}'
    if not isinstance(g, dict):
        raise DietError(f"{where}: gold is {_describe(g)}, not an object", example)
    unknown = [k for k in g if k not in GOLD_KEYS]
    if unknown:
        raise DietError(f"{where}: gold has unknown field(s) {', '.join(map(repr, unknown))}", f"use {', '.join(GOLD_KEYS)}")
    if not isinstance(g.get("field"), str) or not g["field"]:
        raise DietError(f"{where}: gold needs a 'field' naming the answer's document field", example)
    kind = g.get("type", "int")
    if kind not in GOLD_TYPES:
        raise DietError(f"{where}: gold.type {kind!r} is unknown", f"use one of {', '.join(GOLD_TYPES)}")
    offset = g.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise DietError(f"{where}: gold.offset is {_describe(offset)}, not an integer", "e.g. -1 for 1-based labels")
    if kind == "index_of" and (not isinstance(g.get("in"), str) or not g["in"]):
        raise DietError(
            f"{where}: gold.type index_of needs gold.in, the field listing the choice labels",
            'e.g. "gold": {"field": "answerKey", "type": "index_of", "in": "choices.label"}',
        )


def _check_metrics(spec: TaskSpec, where: str) -> None:
    allowed = FORMAT_METRICS[spec.format]
    bad = [m for m in spec.metrics if m not in allowed]
    if bad or not spec.metrics:
        raise DietError(
            f"{where}: metrics {list(spec.metrics)} are not all reportable for format {spec.format!r}",
            f"use some of {', '.join(allowed)}",
        )
    if spec.main_metric not in spec.metrics:
        raise DietError(
            f"{where}: main_metric {spec.main_metric!r} is not among its metrics {list(spec.metrics)}",
            f"use one of {', '.join(spec.metrics)}",
        )


def check_task_name(name: str, source: str) -> None:
    """A task name is safe as a cache file name and as a ``--tasks`` item, and not a reserved word."""
    if not TASK_NAME.fullmatch(name):
        raise DietError(
            f"task name {name[:80]!r} in {source} is not a valid task name",
            "use letters, digits, '_', '-' and '.' (starting with a letter or digit, at most 64 characters), e.g. my_task",
        )
    if name.lower() in RESERVED_NAMES:  # in any case: a cache file name on a case-insensitive disk
        raise DietError(
            f"task name {name!r} in {source} is reserved ({', '.join(RESERVED_NAMES)}: every task / the generic wiki text)",
            f"give the task another name, e.g. my_{name}",
        )


def _validate(name: str, entry: Any, source: str) -> TaskSpec:
    where = f"task {name!r} in {source}"
    check_task_name(name, source)
    if not isinstance(entry, dict):
        raise DietError(f"{where}: entry is {_describe(entry)}, not an object", SCHEMA_HINT)
    known = [f.name for f in fields(TaskSpec) if f.name != "name"]
    unknown = [k for k in entry if k not in known]
    if unknown:
        raise DietError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}", f"use {', '.join(known)}")
    if "dataset" not in entry:
        raise DietError(f"{where}: needs a 'dataset'", 'e.g. "dataset": {"path": "/data/my_task"}')
    _check_dataset(entry["dataset"], where)
    for key in _STR_FIELDS:
        value = entry.get(key)
        if key in entry and not isinstance(value, str) and not (value is None and key in _NULLABLE):
            raise DietError(f"{where}: {key} is {_describe(value)}, not a string", SCHEMA_HINT)
    metrics = entry.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise DietError(f"{where}: metrics is {_describe(metrics)}, not a list of metric names", f"e.g. {list(METRICS)}")
    if "main_metric" in entry and entry["main_metric"] not in METRICS:
        raise DietError(f"{where}: main_metric is {_describe(entry['main_metric'])}", f"use one of {', '.join(METRICS)}")
    choices = entry.get("choices")
    if choices is not None and (not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)):
        raise DietError(
            f"{where}: choices is {_describe(choices)}, not a non-empty list of strings", 'e.g. "choices": ["no", "yes"]'
        )
    spec = TaskSpec(name=name, **entry)
    if spec.format not in FORMATS:
        raise DietError(f"{where}: format {spec.format!r} is unknown", f"use one of {', '.join(FORMATS)}")
    if spec.preprocess and spec.preprocess not in PREPROCESSORS:
        raise DietError(f"{where}: preprocess {spec.preprocess!r} is unknown", f"use one of {', '.join(PREPROCESSORS)}")
    if spec.format == "multiple_choice" and (spec.text is None or (spec.choices is None) == (spec.choices_field is None)):
        raise DietError(f"{where}: needs 'text' and exactly one of 'choices' / 'choices_field'", "see builtin.json")
    if spec.format == "partial" and not (spec.contexts_field and spec.continuation_field):
        raise DietError(f"{where}: partial format needs contexts_field and continuation_field", "see winogrande in builtin.json")
    if spec.text is not None:
        _check_template(spec.text, where)
    _check_metrics(spec, where)
    _check_gold(spec.gold, where)
    if not any(spec.dataset.get(k) for k in ("local", "path", "hub")):
        raise DietError(
            f"{where}: dataset names no data", "give dataset.path (a save_to_disk folder), dataset.local or dataset.hub"
        )
    return spec


def _builtin_entries() -> dict[str, Any]:
    return json.loads(files("diet_explore.tasks").joinpath("builtin.json").read_text())


def builtin_task_names() -> list[str]:
    """The built-in tasks (the paper's seven zero-shot tasks), in registry order."""
    return [name for name in _builtin_entries() if not name.startswith("_")]


def load_registry(extra_files: list[str | Path] | None = None) -> dict[str, TaskSpec]:
    """Built-in tasks plus user JSON files (``DIET_EXPLORE_TASKS`` = ``os.pathsep``-separated list)."""
    sources: list[tuple[str, Any]] = [("builtin.json", _builtin_entries())]
    env = os.environ.get("DIET_EXPLORE_TASKS")
    paths = list(extra_files or []) + ([p for p in env.split(os.pathsep) if p] if env else [])
    unique: dict[str, str | Path] = {}  # a file named twice (DIET_EXPLORE_TASKS and --task-file) is read once,
    for p in paths:  # not as a conflict with itself
        unique.setdefault(os.path.realpath(p), p)
    paths = list(unique.values())
    for p in paths:
        if not Path(p).is_file():  # a FIFO would block the read for ever; a folder or a missing path fails it
            what = "does not exist" if not Path(p).exists() else "is not a regular file"
            raise DietError(f"task file {p} {what}", "give a JSON task file (see `diet-explore tasks --help`)")
        try:
            sources.append((str(p), loads_json(Path(p).read_text(encoding="utf-8"), unique_keys=True)))
        except DuplicateKeyError as exc:
            raise DietError(f"task file {p} names {exc.key!r} twice in one object", "keep one definition per name") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DietError(f"task file {p} could not be read ({exc})", "fix the path or the JSON") from None
    registry: dict[str, TaskSpec] = {}
    defined_in: dict[str, str] = {}
    for source, entries in sources:
        if not isinstance(entries, dict):
            raise DietError(
                f"task file {source}: the top level is {_type_name(entries)}, not an object of tasks",
                'write {"my_task": {"dataset": ..., "text": ..., "choices": ..., "gold": ...}}',
            )
        for name, entry in entries.items():
            if name.startswith("_"):
                continue
            same = next((n for n in registry if n.lower() == name.lower()), None)  # BoolQ is boolq's file on macOS
            if same is not None:  # a second definition would change what the name means in caches and results
                first = "is built in" if defined_in[same] == "builtin.json" else f"is defined in {defined_in[same]}"
                raise DietError(
                    f"task {name!r} in {source}: a task of that name{'' if same == name else f' ({same!r})'} {first}",
                    f"give the task another name, e.g. my_{name}",
                )
            registry[name] = _validate(name, entry, source)
            defined_in[name] = source
    return registry


def resolve_tasks(names: str | list[str], registry: dict[str, TaskSpec] | None = None) -> list[TaskSpec]:
    """``"all"`` or a comma list / list of names → specs, each task once (``rte,rte`` is rte: profile
    ran it twice, eval once); an unknown name lists the known ones."""
    registry = registry or load_registry()
    if isinstance(names, str):
        names = list(registry) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(n.strip() for n in names))
    if "all" in names:  # " all " or ["all"] is every task, as "all" is; "rte,all" was "unknown task(s): all"
        if len(names) > 1:
            raise DietError(
                f"--tasks {','.join(names)}: 'all' is every task and goes alone", "give --tasks all, or list the tasks"
            )
        names = list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise DietError(f"unknown task(s): {', '.join(unknown)}", f"known tasks: {', '.join(registry)}")
    if not names:
        raise DietError("no task given", f"use --tasks all or some of: {', '.join(registry)}")
    return [registry[n] for n in names]
