"""Does the Mask builder's cache-only proxy predict the measured paired Δ? Prints the rank correlations.

For every run of every committed sweep (``docs/results``) and of each sweep folder given, the run's
mask is rebuilt from its score cache, the proxies (``diet_explore/masking/proxy.py``: the share of
each task's activation mass, and of its squared activations, that the mask keeps) computed, and
Spearman's ρ taken against the run's paired Δ vs dense (main metric; gold log-likelihood per
character where the results keep it), over runs (average over tasks), within each sparsity, and
per task (``diet_explore/experiments/proxy.py``).

    python tools/proxy_validation.py [SWEEP_FOLDER ...] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from diet_explore.experiments.proxy import MIN_RUNS, P_MAX, sweep_sources, validate_proxies

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", help="sweep folders (compare --out DIR) besides docs/results")
    parser.add_argument("--csv", default=None, help="also write every correlation (per task too) to this CSV")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sources = sweep_sources(args.folders)
    val = validate_proxies(sources)
    n_runs = len(val.records.groupby(["sweep", "key"])) if not val.records.empty else 0
    print(f"{len(sources)} sweeps, {n_runs} runs rebuilt in all ({time.perf_counter() - start:.1f} s)")
    for note in val.notes:
        print(f"  {note}")
    summary = val.summary()
    if summary.empty:
        print("no run could be rebuilt: nothing to correlate")
        return 1
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_rows", 500):
        for (sweep, target), g in summary.groupby(["sweep", "target"], sort=False):
            print(f"\n{sweep}: Spearman ρ of each proxy with {target}")
            table = g.pivot_table(index="proxy", columns="level", values="rho", sort=False)
            p = g[g["level"] == "average"].set_index("proxy")[["p", "n"]]
            print(table.join(p).round(3).to_string())
    print(f"\nVerdict (predicts: ρ > 0, p < {P_MAX} over runs, at least {MIN_RUNS} runs):")
    for proxy in ("kept_mass@residual", "kept_energy@residual"):
        print(f"{proxy}:\n  " + val.verdict(proxy).replace("\n", "\n  "))
    if args.csv:
        val.correlations.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
