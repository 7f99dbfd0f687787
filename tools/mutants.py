"""Mutation check over the rules that decide numbers: each mutant must make a test fail.

For every mutant below, the library is copied to a temporary folder, one rule is changed there (an
exact text substitution in the production module, the code that the CLI, the app and the sweeps
run), and the tests that guard that rule run against the copy. A mutant that no test kills means
the rule is unguarded: the script exits 1 and names it. A kill counts only if the test that made
it passes on the unmutated copy (checked once, over every killing test, at the end). Run by `make test` (`make mutants` alone).

    python tools/mutants.py [--list] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diet_explore", "diet_explore_app")
JOBS = 2  # mutants tested side by side


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must catch it


MUTANTS = [
    Mutant(
        "vote: an exact half no longer counts (>= becomes >)",
        "diet_explore/masking/vote.py",
        "return votes >= float(threshold) - _TOL",
        "return votes > float(threshold) + _TOL",
        ("tests/test_masks.py", "tests/test_app_vote.py::test_agreement_prunes_what_the_mask_builder_builds_with_weights"),
    ),
    Mutant(
        "vote: weights ignored (every task counts 1)",
        "diet_explore/masking/vote.py",
        "out += w[t] * keep[..., t, :]",
        "out += keep[..., t, :]",
        (
            "tests/test_masks.py",
            "tests/test_app_vote.py::test_agreement_prunes_what_the_mask_builder_builds_with_weights",
            "tests/test_app_vote.py::test_rankings_tables_show_the_weighted_share_and_the_masks_decision",
        ),
    ),
    Mutant(
        "vote view: the kept set re-derived from share >= τ (rounding and exact count ignored)",
        "diet_explore/masking/voteview.py",
        "np.array(result.keep, dtype=bool),",
        "passes_vote(np.array(share, dtype=np.float64), config.threshold),",
        ("tests/test_app_vote.py::test_agreement_counts_the_exact_and_the_rounded_mask", "tests/test_dims.py"),
    ),
    Mutant(
        "keep_count: pruned count rounded up instead of down",
        "diet_explore/masking/selection.py",
        "d - math.floor(s * d + 1e-9)",
        "d - math.ceil(s * d - 1e-9)",
        ("tests/test_scores.py",),
    ),
    Mutant(
        "keep_count: no float epsilon (0.57 * 100 prunes 56)",
        "diet_explore/masking/selection.py",
        "d - math.floor(s * d + 1e-9)",
        "d - math.floor(s * d)",
        ("tests/test_scores.py",),
    ),
    Mutant(
        "keep_count: multiple_of ties round down",
        "diet_explore/masking/selection.py",
        "((np.asarray(n_keep) + m // 2) // m) * m",
        "((np.asarray(n_keep) + (m - 1) // 2) // m) * m",
        ("tests/test_scores.py",),
    ),
    Mutant(
        "main metric: the registry's choice ignored (always acc)",
        "diet_explore/evaluation/metrics.py",
        "return TaskResult(spec.name, correct, norm, spec.main_metric)",
        'return TaskResult(spec.name, correct, norm, "acc")',
        ("tests/test_evaluate.py", "tests/test_tasks.py", "tests/test_compare.py"),
    ),
    Mutant(
        "main metric: OpenBookQA loses acc_norm in the registry",
        "diet_explore/tasks/builtin.json",
        '"lm_eval_task": "openbookqa",\n    "main_metric": "acc_norm"',
        '"lm_eval_task": "openbookqa"',
        ("tests/test_tasks.py", "tests/test_evaluate.py"),
    ),
    Mutant(
        "acc_norm: log-likelihood not divided by the choice's length",
        "diet_explore/evaluation/metrics.py",
        "return np.argmax(np.asarray(lls, dtype=np.float64) / np.asarray(chars, dtype=np.float64), axis=-1)",
        "return np.argmax(np.asarray(lls, dtype=np.float64), axis=-1)",
        ("tests/test_scoring.py", "tests/test_paired_metrics.py"),
    ),
    Mutant(
        "acc_norm: length in tokens instead of characters",
        "diet_explore/evaluation/scoring.py",
        "return [len(c) for c in self.choice_texts]",
        "return list(self.n_tokens)",
        ("tests/test_scoring.py",),
    ),
    Mutant(
        "average CI: task variances summed without dividing by T",
        "diet_explore/evaluation/metrics.py",
        "return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)",
        "return math.sqrt(sum(s * s for s in stderrs))",
        ("tests/test_evaluate.py", "tests/test_compare.py", "tests/test_results_page.py"),
    ),
    # ---- paired metrics and their intervals (evaluation/metrics.py)
    Mutant(
        "Newcombe: the correlation of the pair ignored",
        "diet_explore/evaluation/metrics.py",
        "phi = (cross - n / 2) / math.sqrt(margins)",
        "phi = 0.0",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "Newcombe: no n/2 correction of the correlation",
        "diet_explore/evaluation/metrics.py",
        "phi = (cross - n / 2) / math.sqrt(margins)",
        "phi = cross / math.sqrt(margins)",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "Wilson: centred on the raw share (a Wald-like interval)",
        "diet_explore/evaluation/metrics.py",
        "center = (p + z2 / (2 * n)) / (1 + z2 / n)",
        "center = p",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "bootstrap: the plain 5% level at small n (no expansion)",
        "diet_explore/evaluation/metrics.py",
        "a = expanded_alpha(n)",
        "a = ALPHA",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "bootstrap: zero spread reported as a [c, c] interval",
        "diet_explore/evaluation/metrics.py",
        "spread = np.ptp(values, axis=0) > SPREAD_TOL",
        "spread = np.ptp(values, axis=0) >= 0",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "average of tasks: MOVER low bound not divided by T",
        "diet_explore/evaluation/metrics.py",
        "lo = m - math.sqrt(sum((e - lo) ** 2 for e, lo, _ in intervals)) / t",
        "lo = m - math.sqrt(sum((e - lo) ** 2 for e, lo, _ in intervals))",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "gold log-likelihood: not per character",
        "diet_explore/evaluation/metrics.py",
        "per_char = (pl[rows, gold] - dl[rows, gold]) / chars[rows, gold]",
        "per_char = pl[rows, gold] - dl[rows, gold]",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "choice KL: reversed, KL(pruned || dense)",
        "diet_explore/evaluation/metrics.py",
        "terms = np.where(real, np.exp(lp) * (lp - lq), 0.0)",
        "terms = np.where(real, np.exp(lq) * (lq - lp), 0.0)",
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "agreement: acc's choice on acc_norm tasks",
        "diet_explore/evaluation/metrics.py",
        "main_d, main_p = preds[spec.main_metric]",
        'main_d, main_p = preds["acc"]',
        ("tests/test_paired_metrics.py",),
    ),
    Mutant(
        "pairing: by position instead of doc id",
        "diet_explore/evaluation/metrics.py",
        'pairs = [(i, where[int(d)]) for i, d in enumerate(dense["doc_id"]) if int(d) in where]',
        'pairs = [(i, i) for i, d in enumerate(dense["doc_id"]) if int(d) in where and i < len(pruned["doc_id"])]',
        ("tests/test_paired_metrics.py",),
    ),
    # ---- sweep reports (experiments/results.py, reports.py)
    Mutant(
        "older rows: main-metric delta dense minus pruned",
        "diet_explore/experiments/results.py",
        "entries[spec.main_metric] = entry(*paired_proportion_delta(a, b), len(b))",
        "entries[spec.main_metric] = entry(*paired_proportion_delta(b, a), len(b))",
        ("tests/test_results_page.py", "tests/test_compare.py"),
    ),
    Mutant(
        "DIET-minus-method table: the other method minus DIET",
        "diet_explore/experiments/reports.py",
        'row_paired(refs[r["sparsity"]], r)) for r in others]',
        'row_paired(r, refs[r["sparsity"]])) for r in others]',
        ("tests/test_results_page.py", "tests/test_compare.py"),
    ),
    # ---- the live proxy (masking/proxy.py) and its validation (experiments/proxy.py)
    Mutant(
        "proxy: the layer maximum instead of the layer mean",
        "diet_explore/masking/proxy.py",
        's = as_precompute(cache).task_scores(task, site, "mean")',
        's = as_precompute(cache).task_scores(task, site, "max")',
        ("tests/test_proxy.py",),
    ),
    Mutant(
        "proxy: kept energy not squared",
        "diet_explore/masking/proxy.py",
        "w = s**power",
        "w = s",
        ("tests/test_proxy.py",),
    ),
    Mutant(
        "proxy validation: within sparsity not centred",
        "diet_explore/experiments/proxy.py",
        'centred = runs[[*proxies, target]] - runs.groupby("sparsity")[[*proxies, target]].transform("mean")',
        "centred = runs[[*proxies, target]]",
        ("tests/test_proxy.py",),
    ),
    Mutant(
        "proxy validation: a negative correlation counts as predicting",
        "diet_explore/experiments/proxy.py",
        "return bool(rho > 0 and p < P_MAX and n >= MIN_RUNS)",
        "return bool(rho != 0 and p < P_MAX and n >= MIN_RUNS)",
        ("tests/test_proxy.py",),
    ),
    Mutant(
        "massive dims: the mean over tasks instead of the median",
        "diet_explore/masking/massive.py",
        "return np.median(s[ok] / med[ok, None], axis=0)",
        "return np.mean(s[ok] / med[ok, None], axis=0)",
        ("tests/test_dims.py",),
    ),
    Mutant(
        "massive dims: a ratio of exactly the factor no longer counts",
        "diet_explore/masking/massive.py",
        "out = np.asarray(ratio) >= MASSIVE_FACTOR",
        "out = np.asarray(ratio) > MASSIVE_FACTOR",
        ("tests/test_dims.py",),
    ),
    Mutant(
        "top-activating contexts: ties go to the higher row",
        "diet_explore/profiling/contexts.py",
        "order = np.lexsort((pos, row, -val.astype(np.float64)), axis=1)[:, :k]",
        "order = np.lexsort((pos, -row, -val.astype(np.float64)), axis=1)[:, :k]",
        ("tests/test_contexts.py",),
    ),
    Mutant(
        "SliceGPT norm: mean over the kept width, not the dense width",
        "diet_explore/pruning/rotate.py",
        "x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.width + self.eps)",
        "x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)",
        ("tests/test_rotate.py",),
    ),
    Mutant(
        "SliceGPT fold: a norm's scale not folded into the linears it feeds",
        "diet_explore/pruning/rotate.py",
        "scale = offset + _math(norm.weight)",
        "scale = torch.ones_like(_math(norm.weight))",
        ("tests/test_rotate.py",),
    ),
    Mutant(
        "SliceGPT: not the mask's kept count at that sparsity",
        "diet_explore/experiments/sweep.py",
        "n_keep = keep_count(d, sparsity, multiple)",
        "n_keep = keep_count(d, sparsity, multiple) - multiple",
        ("tests/test_rotate.py::test_slicegpt_resumes_into_a_sweep_and_keeps_the_mask_count",),
    ),
]


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(ROOT),
        "-c",
        str(ROOT / "pyproject.toml"),
        "-m",
        "not browser",
        "--timeout",
        "600",
        *(str(ROOT / t) for t in tests),
    ]
    start = time.perf_counter()
    # run from the copy: `python -m` puts the working folder first on sys.path, so the copy is what imports
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - start, proc.stdout + proc.stderr


def failed_tests(output: str) -> set[str]:
    """The node ids pytest's short summary lists as FAILED or ERROR, relative to the repository."""
    out = set()
    for line in output.splitlines():
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                node = line[len(tag) :].split(" - ")[0].strip()
                out.add(node[node.find("tests/") :] if "tests/" in node else node)  # pytest names it from the copy
    return out


def try_mutant(tmp: Path, m: Mutant) -> tuple[str, bool, set[str]]:
    """Apply ``m`` to a fresh copy in ``tmp`` and run its tests: (the line to print, whether it
    survived, the tests that failed)."""
    copy = fresh_copy(tmp)
    path = copy / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        return (
            f"STALE   {m.name}: the rule's text occurs {text.count(m.old)} times in {m.file}; update tools/mutants.py",
            True,
            set(),
        )
    path.write_text(text.replace(m.old, m.new))
    rc, secs, out = run_tests(copy, m.tests)
    failed = failed_tests(out)
    if rc == 1 and failed:  # tests ran and failed: killed (2+ would be a collection or usage error)
        return f"killed  {m.name} ({secs:.0f} s, by {', '.join(sorted(failed))})", False, failed
    return f"SURVIVED {m.name} (pytest exit {rc}, {secs:.0f} s)\n{out[-2000:]}", True, set()


def fresh_copy(tmp: Path) -> Path:
    copy = tmp / "src"
    shutil.rmtree(copy, ignore_errors=True)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        print("\n".join(m.name for m in chosen))
        return 0
    survivors, killers = [], set()
    with tempfile.TemporaryDirectory(prefix="diet-mutants-") as tmp:
        copy = fresh_copy(Path(tmp))
        probe = subprocess.run(
            [sys.executable, "-c", "import diet_explore; print(diet_explore.__file__)"], cwd=copy, capture_output=True, text=True
        ).stdout.strip()
        if not probe.startswith(str(copy)):
            print(f"the tests would import {probe}, not the mutated copy in {copy}")
            return 2
        # two mutants at a time (each in its own copy): the test runs are mostly imports, one core each
        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            outcomes = pool.map(lambda im: try_mutant(Path(tmp) / f"m{im[0]}", im[1]), enumerate(chosen))
            for m, (line, survived, failed) in zip(chosen, outcomes):
                print(line, flush=True)
                killers |= failed
                if survived:
                    survivors.append(m.name)
        # A kill counts only if the test that made it passes on the unmutated copy: otherwise it
        # failed for another reason (a broken copy, a flaky test) and proves nothing about the rule.
        if killers:
            rc, secs, out = run_tests(copy, tuple(sorted(killers)))
            if rc != 0:
                print(f"the unmutated copy fails tests that killed mutants (exit {rc}); fix that first:\n{out[-2000:]}")
                return 2
            print(f"unmutated: the {len(killers)} killing tests pass ({secs:.0f} s)")
    if survivors:
        print(f"{len(survivors)} of {len(chosen)} mutants survived: {'; '.join(survivors)}")
        return 1
    print(f"all {len(chosen)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
