"""Rewrite a sweep's reports (table.md, table.csv, sweep.html) from its results, with today's rules.

``compare`` writes the reports when it finishes; a sweep run by an older diet-explore (the normal-
approximation CIs, no agreement / gold log-likelihood columns) or copied under ``docs/results``
gets them again from its ``results.jsonl`` here, without evaluating anything:

    python tools/sweep_report.py SWEEP_FOLDER [--out DIR]          # table.md, table.csv, sweep.html in DIR
    python tools/sweep_report.py docs/results/NAME.results.jsonl    # docs/results/NAME.md and NAME.csv

A committed sweep's markdown keeps its own header note: only the tables change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from diet_explore.core import atomic
    from diet_explore.core.errors import DietError
    from diet_explore.experiments.reports import (
        RESULTS_SUFFIX,
        load_sweep,
        markdown_table,
        results_frame,
        versus_table,
        write_reports,
    )
    from diet_explore.experiments.sweep import CompareConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="a compare --out folder, or a docs/results/<name>.results.jsonl file")
    parser.add_argument("--out", default=None, help="where to write (default: beside the results)")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
    except DietError as exc:
        print(f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 2
    source = Path(sweep.source)
    if source.name.endswith(RESULTS_SUFFIX) and args.out is None:  # a committed sweep: <name>.md and <name>.csv
        stem = source.parent / sweep.name
        versus = versus_table(sweep)
        note = (
            "\nDIET minus each other method at the same kept count, paired on the same examples "
            "(points; positive = DIET better):\n\n" + versus
            if versus
            else ""
        )
        atomic.write_text(Path(f"{stem}.md"), markdown_table(sweep) + note)
        atomic.write_text(Path(f"{stem}.csv"), results_frame(sweep).to_csv(index=False))
        print(f"wrote {stem}.md and {stem}.csv")
        return 0
    out = Path(args.out) if args.out else source.parent
    out.mkdir(parents=True, exist_ok=True)
    config = CompareConfig.from_dict(sweep.config) if sweep.config else None
    paths = write_reports(sweep.rows, out, config)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
