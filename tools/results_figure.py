"""Draw the README's results figure: DIET minus each other method, paired on the same examples, with 95% CIs.

    python tools/results_figure.py                      # docs/diet-vs-baselines.svg from the sweep of record
    python tools/results_figure.py SWEEP [--out F.svg]  # any committed sweep or `compare --out` folder
    python tools/results_figure.py --check              # exit 1 when the committed figure differs

The numbers are the ones the sweep's DIET-minus-method table prints (``reports.Sweep.versus``: the
paired rules in ``evaluation/metrics.py``, recomputed from the per-example results), so the figure and
the tables cannot disagree. The figure is an SVG written by this script alone, with no plotting library:
the same results give the same bytes, which tests/test_docs.py checks.
"""

from __future__ import annotations

import argparse
import math
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SWEEP = ROOT / "docs" / "results" / "compare-smollm2-135m-400.results.jsonl"
FIGURE = ROOT / "docs" / "diet-vs-baselines.svg"
REGENERATE = "python tools/results_figure.py"

# (key in the paired results, panel title, scale to the shown unit, tick format)
PANELS = (
    ("main", "Δ average main metric (points)", 100.0, "{:+g}"),
    ("gold_ll_per_char", "Δ gold log-likelihood per character (nats)", 1.0, "{:+g}"),
)
# baselines first, then DIET's own variants (leave a task out, the other site); other methods after
ORDER = ("random", "magnitude", "wiki", "slicegpt", "slicegpt-wiki", "single-task", "leave-one-out", "diet-normed")
COLOURS = ("#1f77b4", "#d95f02", "#7570b3", "#1b9e77")  # one per sparsity
W, LABEL_W, PANEL_W, GAP, ROW_H, TOP, BOTTOM = 980, 150, 380, 35, 34, 78, 64


def comparisons(source) -> tuple[list[dict], str]:
    """One entry per (other method, sparsity): the paired DIET-minus-method estimates, in the panels'
    units; and a caption naming the model and the number of paired examples. ``source``: a sweep's
    path, or a ``reports.Sweep`` already loaded."""
    from diet_explore.experiments.reports import load_sweep

    sweep = source if hasattr(source, "versus") else load_sweep(source)
    out = []
    for _ref, row, paired in sweep.versus("diet"):
        entry = {"method": row["method"], "sparsity": row["sparsity"], "kept": row["n_keep"]}
        for key, _title, scale, _fmt in PANELS:
            est = paired["average"][key]
            if est.get("delta") is None or est.get("ci_low") is None:
                continue
            entry[key] = tuple(scale * est[k] for k in ("delta", "ci_low", "ci_high"))
            entry["n"] = est["n"]
        out.append(entry)
    model = (sweep.config or {}).get("model", sweep.name)
    n = max((e.get("n", 0) for e in out), default=0)
    return out, f"{model}, {n:,} held-out examples per model, paired; positive = DIET better"


def _ticks(lo: float, hi: float) -> list[float]:
    """About five round ticks over [lo, hi]."""
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 5))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= 6)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def render_svg(entries: list[dict], caption: str) -> str:
    present = list(dict.fromkeys(e["method"] for e in entries))
    methods = [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]
    sparsities = sorted({e["sparsity"] for e in entries})
    height = TOP + ROW_H * len(methods) + BOTTOM
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="13">',
        f'<rect width="{W}" height="{height}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="16" font-weight="bold">'
        "DIET minus each method at the same kept dims, 95% CIs</text>",
        f'<text x="{W / 2}" y="42" text-anchor="middle" fill="#444">{escape(caption)}</text>',
    ]
    for i, m in enumerate(methods):
        y = TOP + ROW_H * (i + 0.5)
        svg.append(f'<text x="{LABEL_W - 10}" y="{y + 4:.1f}" text-anchor="end">vs {escape(m)}</text>')
        if i % 2 == 0:
            svg.append(f'<rect x="{LABEL_W}" y="{TOP + ROW_H * i}" width="{W - LABEL_W - 10}" height="{ROW_H}" fill="#f4f4f4"/>')
    for p, (key, title, _scale, fmt) in enumerate(PANELS):
        x0 = LABEL_W + p * (PANEL_W + GAP) + 10
        values = [v for e in entries if key in e for v in e[key][1:]] + [0.0]
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        sx = lambda v, x0=x0, lo=lo, hi=hi: x0 + (v - lo) / (hi - lo) * PANEL_W
        y_end = TOP + ROW_H * len(methods)
        svg.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 14}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
        for t in _ticks(lo, hi):
            svg.append(f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{y_end}" stroke="#ddd"/>')
            svg.append(
                f'<text x="{sx(t):.1f}" y="{y_end + 16}" text-anchor="middle" fill="#444">{fmt.format(t) if t else "0"}</text>'
            )
        svg.append(f'<line x1="{sx(0):.1f}" y1="{TOP}" x2="{sx(0):.1f}" y2="{y_end}" stroke="#222" stroke-dasharray="4 3"/>')
        for e in entries:
            if key not in e:
                continue
            s = sparsities.index(e["sparsity"])
            y = TOP + ROW_H * (methods.index(e["method"]) + 0.5) + (s - (len(sparsities) - 1) / 2) * 9
            colour = COLOURS[s % len(COLOURS)]
            d, a, b = e[key]
            svg.append(f'<line x1="{sx(a):.1f}" y1="{y:.1f}" x2="{sx(b):.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>')
            svg.append(f'<circle cx="{sx(d):.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
    legend_y = height - 18
    for s, sp in enumerate(sparsities):
        x = LABEL_W + 10 + s * 150
        svg.append(f'<circle cx="{x}" cy="{legend_y - 4}" r="4" fill="{COLOURS[s % len(COLOURS)]}"/>')
        svg.append(f'<text x="{x + 10}" y="{legend_y}">sparsity {sp:g}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "sweep",
        nargs="?",
        default=str(SWEEP),
        help=f"a committed sweep or a compare --out folder (default {SWEEP.relative_to(ROOT)})",
    )
    ap.add_argument("--out", default=str(FIGURE), help=f"the SVG to write (default {FIGURE.relative_to(ROOT)})")
    ap.add_argument("--check", action="store_true", help="exit 1 when --out differs from what the sweep gives (write nothing)")
    args = ap.parse_args(argv)
    text = render_svg(*comparisons(Path(args.sweep)))
    out = Path(args.out)
    current = out.read_text(encoding="utf-8") if out.is_file() else ""
    if args.check:
        if current != text:
            print(f"{out} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
