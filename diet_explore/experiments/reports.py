"""Sweep reports: the paper-style table (CSV + markdown), the DIET-minus-method paired table and the
curves (main metric, Δ gold log-likelihood, perplexity vs sparsity), from result rows.

Everything here reads result rows (``results.py``) and writes files or returns tables; nothing
evaluates a model. Every delta and CI is recomputed from the rows' per-example data
(``results.row_paired``, the rules in ``evaluation/metrics.py``), not read from what a row stored
when it was written, so older results files are reported with today's intervals. A ``Sweep`` holds
the rows and computes their paired results once; the functions take a ``Sweep`` or plain rows.

Committed sweeps live in ``docs/results`` as ``<name>.results.jsonl`` (+ ``<name>.config.json``,
``<name>.md``, ``<name>.csv`` and, when written, ``<name>.verdict.md``); a sweep folder made by
``compare --out DIR`` holds ``results.jsonl``, ``config.json`` and optionally ``verdict.md``.
``load_sweep`` opens either.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diet_explore import plots
from diet_explore.core import atomic
from diet_explore.core.assets import PROJECT_ROOT
from diet_explore.core.errors import DietError
from diet_explore.core.numbers import perplexity, points
from diet_explore.evaluation.decision import format_entry
from diet_explore.evaluation.metrics import MAIN, PAIRED_METRICS, average_proportion
from diet_explore.experiments.history import run_label
from diet_explore.experiments.results import METHODS, RESULTS, read_results_file, row_paired

if TYPE_CHECKING:
    from diet_explore.experiments.sweep import CompareConfig

Progress = Callable[[float, str], None]
RESULTS_DIR_ENV = "DIET_EXPLORE_RESULTS_DIR"  # where the committed sweeps are (default <repo>/docs/results)
RESULTS_SUFFIX = ".results.jsonl"


def results_dir() -> Path:
    """The committed sweeps' folder: ``DIET_EXPLORE_RESULTS_DIR``, else ``<repo>/docs/results``."""
    env = os.environ.get(RESULTS_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else PROJECT_ROOT / "docs" / "results"


# --------------------------------------------------------------------------------------------
# A sweep and its paired results
# --------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """A sweep's rows (dense first when present) with their paired results, computed once."""

    rows: list[dict[str, Any]]
    name: str = "sweep"
    config: dict[str, Any] | None = None
    verdict: str | None = None
    source: str = ""
    problems: list[str] = field(default_factory=list)  # one line per damaged row left out (``load_sweep``)
    _vs_dense: dict[str, dict[str, Any]] | None = field(default=None, init=False, repr=False)
    _versus: dict[str, list[tuple[dict, dict, dict]]] = field(default_factory=dict, init=False, repr=False)

    @property
    def dense(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["method"] == "dense"), None)

    @property
    def pruned(self) -> list[dict[str, Any]]:
        """The non-dense rows, by sparsity and then method (``METHODS`` order, other methods after)."""
        return sorted((r for r in self.rows if r["method"] != "dense"), key=lambda r: (r["sparsity"], self.method_rank(r)))

    def method_rank(self, row: dict[str, Any]) -> int:
        return self.methods().index(row["method"]) if row["method"] in self.methods() else len(METHODS)

    def methods(self) -> list[str]:
        """Methods present besides dense: ``METHODS`` order first, then any other (e.g. a new baseline) as they appear."""
        present = list(dict.fromkeys(r["method"] for r in self.rows if r["method"] != "dense"))
        return [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]

    def labels(self) -> dict[str, str]:
        """Method -> what its runs' masks were (``history.run_label``, e.g. "diet τ0.6 boolq×2"), what the
        tables and curve legends name it by; a method whose runs carry several labels keeps its name."""
        out: dict[str, str] = {}
        for method in ["dense", *self.methods()]:
            found = {run_label(r) for r in self.rows if r["method"] == method}
            out[method] = found.pop() if len(found) == 1 else method
        return out

    def vs_dense(self) -> dict[str, dict[str, Any]]:
        """Row key -> ``row_paired(row, dense)`` for every non-dense row (empty without a dense row)."""
        if self._vs_dense is None:
            dense = self.dense
            self._vs_dense = {} if dense is None else {r["key"]: row_paired(r, dense) for r in self.pruned}
        return self._vs_dense

    def versus(self, reference: str = "diet") -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """(reference row, other row, ``row_paired(reference, other)``) for every other method at a
        sparsity the reference has: "reference minus other", paired on the same examples."""
        if reference not in self._versus:
            refs = {r["sparsity"]: r for r in self.rows if r["method"] == reference}
            others = [r for r in self.pruned if r["method"] != reference and r["sparsity"] in refs]
            self._versus[reference] = [(refs[r["sparsity"]], r, row_paired(refs[r["sparsity"]], r)) for r in others]
        return self._versus[reference]

    def has_examples(self) -> bool:
        """Whether the paired results hold more than the main metric (rows with per-example log-likelihoods)."""
        return any(p["average"]["gold_ll_per_char"]["delta"] is not None for p in self.vs_dense().values())


def as_sweep(rows: list[dict[str, Any]] | Sweep) -> Sweep:
    return rows if isinstance(rows, Sweep) else Sweep(list(rows))


def list_sweeps(folder: str | Path | None = None) -> list[Path]:
    """The sweeps in ``folder`` (default ``results_dir()``): its ``<name>.results.jsonl`` files and its sub-folders that hold a
    ``results.jsonl``, by name."""
    folder = Path(folder) if folder is not None else results_dir()
    if not folder.is_dir():
        return []
    files = sorted(folder.glob(f"*{RESULTS_SUFFIX}"))
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / RESULTS).is_file())
    return files + subs


def sweep_name(path: str | Path) -> str:
    path = Path(path)
    return path.name[: -len(RESULTS_SUFFIX)] if path.name.endswith(RESULTS_SUFFIX) else path.name


def _sidecars(path: Path) -> tuple[Path, Path, Path]:
    """(results file, config file, verdict file) of a sweep file or folder."""
    if path.is_dir():
        return path / RESULTS, path / "config.json", path / "verdict.md"
    stem = path.parent / sweep_name(path)
    return path, Path(f"{stem}.config.json"), Path(f"{stem}.verdict.md")


def load_sweep(path: str | Path) -> Sweep:
    """The sweep in ``path``: a ``compare --out`` folder or a committed ``<name>.results.jsonl``,
    with its config and verdict text when they exist. A ``DietError`` when there is no result in it.
    A damaged row (``results.row_problem``) is left out and said in ``Sweep.problems``."""
    path = Path(path).expanduser()
    results, config_path, verdict_path = _sidecars(path)
    if not results.is_file():
        raise DietError(
            f"{path} is not a sweep: there is no {results.name} there",
            "give a folder made by `diet-explore compare --out DIR`, or a docs/results/<name>.results.jsonl file",
        )
    problems: list[str] = []
    # every row checked (results.row_problem): damaged ones left out, said in problems; a row with
    # neither method nor tasks (a key alone) is no finished result
    rows = [r for r in read_results_file(results, problems) if "tasks" in r]
    if not rows:
        raise DietError(
            f"{results} holds no finished result" + (f" ({len(problems)} damaged row(s): {problems[0]})" if problems else ""),
            "wait for the sweep's first row, or re-run compare",
        )
    config = None
    if config_path.is_file():
        try:
            config = atomic.loads_json(config_path.read_text())
        except (OSError, json.JSONDecodeError):
            config = None
    verdict = verdict_path.read_text() if verdict_path.is_file() else None
    dense_first = sorted(rows, key=lambda r: r["method"] != "dense")
    return Sweep(dense_first, name=sweep_name(path), config=config, verdict=verdict, source=str(results), problems=problems)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def results_frame(rows: list[dict[str, Any]] | Sweep):
    """Long table: one row per (method, sparsity, task) plus an 'average' task row. ``value``/``stderr``:
    the main metric; ``delta``/``ci_low``/``ci_high``: its paired difference vs dense (95% CI);
    ``delta_<metric>`` (+ ``_ci_low``, ``_ci_high``) for every paired metric (NaN where not recorded)."""
    import pandas as pd

    sweep = as_sweep(rows)
    paired = sweep.vs_dense()
    recs = []
    for r in sweep.rows:
        p = paired.get(r["key"])
        parts = [(t, v, p["tasks"][t] if p else None) for t, v in r["tasks"].items()]
        parts.append(("average", None, p["average"] if p else None))
        for t, v, entries in parts:
            rec = {"method": r["method"], "sparsity": r["sparsity"], "n_keep": r["n_keep"], "task": t}
            if v is not None:
                rec |= {"metric": v["metric"], "n": v["n"], "value": v["main"], "stderr": v["stderr"]}
            else:
                n = sum(v["n"] for v in r["tasks"].values())
                rec |= {"metric": "main", "n": n, "value": r["avg"], "stderr": r["avg_stderr"]}
            main = entries[MAIN] if entries else None
            if r["method"] == "dense":
                rec |= {"delta": 0.0, "ci_low": float("nan"), "ci_high": float("nan")}
            else:
                rec |= {"delta": _num(main and main["delta"]), "ci_low": _num(main and main["ci_low"])}
                rec["ci_high"] = _num(main and main["ci_high"])
            for m in PAIRED_METRICS:
                e = entries[m] if entries else None
                rec |= {f"delta_{m}": _num(e and e["delta"]), f"delta_{m}_ci_low": _num(e and e["ci_low"])}
                rec[f"delta_{m}_ci_high"] = _num(e and e["ci_high"])
            if t == "average":
                rec["ppl"] = r.get("ppl")
            recs.append(rec)
    return pd.DataFrame(recs)


def _interval(e: dict[str, Any] | None, metric: str = MAIN) -> str:
    """A paired entry as a report prints it: ``decision.format_entry`` with ASCII minus signs."""
    return format_entry(e, metric, minus="-")


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows]) + "\n"


def paper_cells(rows: list[dict[str, Any]] | Sweep) -> tuple[list[str], list[list[str]]]:
    """(header, one list of cells per line) of the paper-style table: one line per (sparsity, method),
    tasks as columns (main metric ± stderr, in %), the average with its paired delta vs dense and
    95% CI, and wiki perplexity; where the rows keep per-example log-likelihoods, also the average
    agreement with the dense model's choices (%) and the average Δ gold log-likelihood per character
    (nats), each with its 95% CI."""
    sweep = as_sweep(rows)
    if not sweep.rows:
        return [], []
    first = sweep.rows[0]
    tasks = list(first["tasks"])
    metric = {t: first["tasks"][t]["metric"] for t in tasks}
    extra = sweep.has_examples()
    head = ["sparsity", "method", "kept"] + [f"{t} ({metric[t]})" for t in tasks] + ["avg", "Δ avg [95% CI]"]
    head += ["agreement [95% CI]", "Δ gold LL/char [95% CI]"] if extra else []
    head.append("wiki ppl")
    paired, labels = sweep.vs_dense(), sweep.labels()
    out = []
    for r in ([sweep.dense] if sweep.dense else []) + sweep.pruned:
        p = paired.get(r["key"])
        cells = [f"{r['sparsity']:g}", labels[r["method"]], str(r["n_keep"])]
        cells += [f"{100 * r['tasks'][t]['main']:.1f} ± {100 * r['tasks'][t]['stderr']:.1f}" for t in tasks]
        cells.append(f"{100 * r['avg']:.1f} ± {100 * r['avg_stderr']:.1f}")
        cells.append(_interval(p["average"][MAIN] if p else None))
        if extra:
            cells.append(_interval(p["average"]["agreement"], "agreement") if p else "—")
            cells.append(_interval(p["average"]["gold_ll_per_char"], "gold_ll_per_char") if p else "—")
        cells.append(perplexity(r["ppl"]) if r.get("ppl") else "—")
        out.append(cells)
    return head, out


def markdown_table(rows: list[dict[str, Any]] | Sweep) -> str:
    """The paper-style table (``paper_cells``) in markdown."""
    head, cells = paper_cells(rows)
    return _markdown(head, cells) if head else ""


def versus_cells(rows: list[dict[str, Any]] | Sweep, reference: str = "diet") -> tuple[list[str], list[list[str]]]:
    """(header, cells) of ``reference`` minus every other method at each sparsity, paired on the same
    examples (in points): the comparison a claim like "DIET beats X by N points" needs, with its 95%
    CI; and, where the rows keep per-example log-likelihoods, the same for the gold log-likelihood
    per character (nats)."""
    sweep = as_sweep(rows)
    pairs = sweep.versus(reference)
    if not pairs:
        return [], []
    tasks = list(pairs[0][0]["tasks"])
    extra = any(p["average"]["gold_ll_per_char"]["delta"] is not None for _, _, p in pairs)
    head = ["sparsity", "comparison", "kept"] + tasks + ["avg [95% CI]"] + (["Δ gold LL/char [95% CI]"] if extra else [])
    out, labels = [], sweep.labels()
    for ref, r, p in pairs:
        cells = [f"{r['sparsity']:g}", f"{labels[reference]} − {labels[r['method']]}", kept_pair(ref, r)]
        cells += [points(_num(p["tasks"][t][MAIN]["delta"]), signed=True) for t in tasks]
        cells.append(_interval(p["average"][MAIN]))
        if extra:
            cells.append(_interval(p["average"]["gold_ll_per_char"], "gold_ll_per_char"))
        out.append(cells)
    return head, out


def kept_pair(ref: dict[str, Any], other: dict[str, Any]) -> str:
    """The kept count of a "reference minus other" line: one number when both runs keep the same count,
    else both ("455 vs 461"): a sweep without exact counts keeps DIET's vote count, not the target's."""
    a, b = ref.get("n_keep"), other.get("n_keep")
    return str(a) if a == b else f"{a} vs {b}"


def same_kept(rows: list[dict[str, Any]] | Sweep, reference: str = "diet") -> bool:
    """Whether every "reference minus other" pair keeps one count (what "at the same kept count" claims)."""
    return all(ref.get("n_keep") == r.get("n_keep") for ref, r, _ in as_sweep(rows).versus(reference))


def versus_note(rows: list[dict[str, Any]] | Sweep, reference: str = "diet") -> str:
    """How the reference-minus-method table is paired, in words: "at the same kept count" only when
    every pair keeps one count (``same_kept``); the app's caption and ``compare``'s report say this."""
    if same_kept(rows, reference):
        return "Paired on the same examples at the same kept count"
    return (
        "Paired on the same examples; the kept counts differ where the kept column shows two "
        f"({reference}'s first), so a difference there is partly one of size"
    )


def versus_table(rows: list[dict[str, Any]] | Sweep, reference: str = "diet") -> str:
    """The DIET-minus-method table (``versus_cells``) in markdown."""
    head, cells = versus_cells(rows, reference)
    return _markdown(head, cells) if head else ""


def table_frame(head: list[str], cells: list[list[str]]):
    """A table's cells as a DataFrame of strings (what the Results page shows)."""
    import pandas as pd

    return pd.DataFrame(cells, columns=head)


def rotation_table(rows: list[dict[str, Any]]) -> str:
    """The rotated (SliceGPT) rows' parameter counts, shortcut matrices and untied head included,
    beside a coordinate mask's at the same kept count, and the kept count a rotation could afford
    at the mask's parameter count (where the comparison at equal size would be)."""
    rotated = [r for r in rows if r.get("rotation")]
    if not rotated:
        return ""
    head = [
        "sparsity",
        "method",
        "kept",
        "parameters",
        "of which shortcuts",
        "mask at the same kept",
        "kept at the mask's parameters",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rotated, key=lambda r: (r["sparsity"], r["method"])):
        rot = r["rotation"]
        cells = [f"{r['sparsity']:g}", r["method"], str(r["n_keep"])]
        cells += [f"{rot[k] / 1e6:.2f} M" for k in ("parameters", "shortcut_parameters", "parameters_mask_same_keep")]
        cells.append(str(rot["keep_at_mask_parameters"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------
#: curve name -> (title, y-axis title, scale of the stored value). "main" is the model's own average
#: main metric (unpaired: each task's Wilson interval, combined over tasks by MOVER,
#: ``metrics.average_proportion``); the others are paired differences vs dense.
CURVES: dict[str, tuple[str, str, float]] = {
    "main": ("Average main metric vs sparsity (95% CI)", "average main metric (%)", 100.0),
    "delta_main": ("Δ average main metric vs dense (paired 95% CI)", "Δ average main metric (points)", 100.0),
    "gold_ll_per_char": (
        "Δ gold log-likelihood per character vs dense (paired 95% CI)",
        "Δ gold log-likelihood per character (nats)",
        1.0,
    ),
    "agreement": ("Agreement with the dense model's choices (95% CI)", "agreement (%)", 100.0),
    "choice_kl": ("KL(dense ‖ pruned) of the choice distribution (95% CI)", "choice KL (nats)", 1.0),
    "ppl": ("Held-out wiki perplexity vs sparsity", "perplexity (log scale)", 1.0),
}
_DENSE_VALUE = {"agreement": 1.0}  # what the dense model scores against itself (0 for a difference)


def curve_frame(rows: list[dict[str, Any]] | Sweep, curve: str = "delta_main"):
    """One row per (method, sparsity) of a ``CURVES`` curve, the dense model at sparsity 0 starting
    every method's line: ``method`` (its label, ``Sweep.labels``: the legend names the run's mask),
    ``sparsity``, ``n_keep``, ``value``, ``ci_low``, ``ci_high`` (NaN where there is no interval: the
    dense point, perplexity, too few examples), in display units."""
    import pandas as pd

    if curve not in CURVES:
        raise DietError(f"unknown curve {curve!r}", f"choose one of {', '.join(CURVES)}")
    sweep = as_sweep(rows)
    scale = CURVES[curve][2]
    dense, paired, labels = sweep.dense, sweep.vs_dense(), sweep.labels()
    recs = []

    def point(r: dict[str, Any]) -> tuple[float, float, float] | None:
        if curve == "main":  # Wilson per task, MOVER over tasks: the interval rule of a proportion
            value, lo, hi = average_proportion([t["correct"] for t in r["tasks"].values()])
            return 100 * value, 100 * lo, 100 * hi
        if curve == "ppl":
            return (r["ppl"], math.nan, math.nan) if r.get("ppl") else None
        if r["method"] == "dense":
            return scale * _DENSE_VALUE.get(curve, 0.0), math.nan, math.nan
        e = paired[r["key"]]["average"][MAIN if curve == "delta_main" else curve]
        if e["delta"] is None:
            return None
        return scale * e["delta"], scale * _num(e["ci_low"]), scale * _num(e["ci_high"])

    for method in sweep.methods():
        own = sorted((r for r in sweep.rows if r["method"] == method), key=lambda r: r["sparsity"])
        if dense is None and curve not in ("main", "ppl"):
            continue  # a paired difference needs the dense row
        line = [(r, got) for r in own if (got := point(r)) is not None]
        if not line:
            continue  # e.g. no perplexity (per-task methods), or an older results file without log-likelihoods
        if dense is not None and (got := point(dense)) is not None:
            line.insert(0, (dense, got))
        for r, (value, lo, hi) in line:
            recs.append({"method": labels[method], "sparsity": r["sparsity"], "n_keep": r["n_keep"], "value": value})
            recs[-1] |= {"ci_low": lo, "ci_high": hi}
    return pd.DataFrame(recs, columns=["method", "sparsity", "n_keep", "value", "ci_low", "ci_high"])


def curve_figure(rows: list[dict[str, Any]] | Sweep, curve: str = "delta_main"):
    """The plotly figure of a ``CURVES`` curve (``plots.sweep_curves``)."""
    title, y_title, _ = CURVES[curve]
    # colours by the sweep-method order: leave-one-out has no perplexity, and slicegpt took its colour there
    sweep = as_sweep(rows)
    labels = sweep.labels()
    order = [labels.get(m, m) for m in METHODS]
    return plots.sweep_curves(curve_frame(sweep, curve), title, y_title, log_y=curve == "ppl", methods=order)


def sweep_figure(rows: list[dict[str, Any]] | Sweep):
    """The sweep's headline plot: average main metric vs sparsity, one line per method."""
    return curve_figure(rows, "main")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_reports(rows: list[dict[str, Any]], out: Path, config: CompareConfig | None = None) -> dict[str, Path]:
    sweep = as_sweep(rows)
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "html": out / "sweep.html"}
    atomic.write_text(paths["csv"], results_frame(sweep).to_csv(index=False))
    note = ""
    if config is not None:
        per_task = (
            f"at most {config.limit} held-out examples per task (all of a smaller split)"
            if config.clip_limit
            else f"{config.limit} held-out examples per task"
        )
        note = (
            f"\nModel `{config.model}`, cache `{config.cache}`, {per_task} "
            f"(seed {config.seed}), exact kept counts: {config.exact}. Cells: main metric in % ± stderr; "
            "Δ avg: paired difference vs dense with a 95% CI (Newcombe per task, combined over tasks by MOVER).\n"
        )
    versus = versus_table(sweep)
    if versus:
        versus = f"\nDIET minus each other method. {versus_note(sweep)} (points; positive = DIET better):\n\n" + versus
    rotation = rotation_table(sweep.rows)
    if rotation:
        rotation = (
            "\nSliceGPT parameters (shortcut matrices and the untied head included) beside a coordinate "
            "mask's at the same kept count:\n\n" + rotation
        )
    atomic.write_text(paths["markdown"], markdown_table(sweep) + note + versus + rotation)
    figures = [curve_figure(sweep, c) for c in ("main", "delta_main", "gold_ll_per_char", "ppl")]
    if not sweep.has_examples():
        figures = [f for f, c in zip(figures, ("main", "delta_main", "gold_ll_per_char", "ppl")) if c != "gold_ll_per_char"]
    body = "\n".join(f.to_html(include_plotlyjs=i == 0, full_html=False) for i, f in enumerate(figures))
    atomic.write_text(paths["html"], f"<html><head><meta charset='utf-8'></head><body>{body}</body></html>\n")
    try:  # a static image too when kaleido is installed
        import kaleido  # noqa: F401

        atomic.write_bytes(out / "sweep.png", figures[0].to_image(format="png"))
        paths["png"] = out / "sweep.png"
    except (ImportError, ValueError, RuntimeError, OSError):  # no kaleido, or no browser for it to render with
        pass
    return paths
