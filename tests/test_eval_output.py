"""eval's printed tables: accuracies in points, each task's main metric marked, rounded perplexity, no -0.0."""

from __future__ import annotations

import re

from diet_explore.cli import main
from diet_explore.models.adapters.tiny import save_tiny_folder


def _eval(tmp_path, capsys, *extra):
    model = save_tiny_folder(tmp_path / "tiny")
    argv = ["eval", "--model", str(model), "--tasks", "rte,hellaswag,winogrande", "--limit", "4", "--ppl-windows", "2"]
    assert main([*argv, "--no-eval-cache", *[str(model) if e == "MODEL" else e for e in extra]]) == 0
    return capsys.readouterr().out.split("\nfull evaluation")[0]


def test_one_model_in_points_with_the_main_metric_marked(tmp_path, capsys):
    out = _eval(tmp_path, capsys)
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["rte"], ["hellaswag"], ["winogrande"])}
    assert re.search(r"rte\s+4\s+\d+\.\d ± \d+\.\d \*\s+\d+\.\d ± \d+\.\d\s*$", rows["rte"])  # acc is rte's main metric
    assert re.search(r"hellaswag\s+4\s+\d+\.\d ± \d+\.\d\s+\d+\.\d ± \d+\.\d \*$", rows["hellaswag"])  # acc_norm
    assert "* the task's main metric" in out
    assert not re.search(r"\b0\.\d{4}\b", out)  # no 0-1 value with four decimals left
    (ppl,) = [line for line in out.splitlines() if line.startswith("wiki perplexity")]
    assert re.fullmatch(r"wiki perplexity \(held-out\): \d+\.\d", ppl)


def test_a_pair_marks_main_rows_and_prints_no_signed_zero(tmp_path, capsys):
    out = _eval(tmp_path, capsys, "--compare-to", "MODEL")  # the same model: every difference is exactly 0
    assert re.search(r"^rte\s+acc \*\s", out, re.M) and re.search(r"^rte\s+acc_norm\s", out, re.M)
    assert re.search(r"^hellaswag\s+acc_norm \*\s", out, re.M)
    assert "Δ points [95% CI]" in out
    assert not re.search(r"[-+−]0\.0+\b", out), out  # "-0.0" / "+0.0" read as a loss / a gain
    assert re.search(r"^average\s+main\s+\d+\.\d\s+\d+\.\d\s+0\.0 \[", out, re.M)


def test_compare_logs_points_and_a_rounded_perplexity(tmp_path):
    from test_scoring import WordTokenizer

    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    cache = synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte",), n_samples=8, seed=1)
    config = CompareConfig(
        model="tiny-llama", cache=str(save_cache(cache, tmp_path / "c")), sparsities=[0.25], methods=["random"],
        tasks="rte", limit=3, ppl_windows=2,
    )  # fmt: skip
    logs: list[str] = []
    run_compare(config, tmp_path / "out", tiny_model("llama"), WordTokenizer(), RunStore(tmp_path / "runs"), log=logs.append)
    dense = next(line for line in logs if line.startswith("dense: avg "))
    run = next(line for line in logs if line.startswith("random@0.25: kept "))
    assert re.fullmatch(r"dense: avg \d+\.\d points, ppl \d+\.\d", dense), dense
    assert re.search(r"avg \d+\.\d points \(Δ (0\.0|[-+]\d+\.\d) \[[-+]?\d+\.\d, [-+]?\d+\.\d\]\), ppl \d+\.\d, ", run), run
    assert not re.search(r"[-+]0\.0\b", run)


def test_every_paired_cell_is_the_one_formatter(tmp_path, capsys):
    """eval's pair tables print each paired entry as ``decision.format_entry`` does (accuracy in points,
    agreement in %, nats for log-likelihoods; a missing interval said the one way), ASCII minus."""
    import json

    from diet_explore.evaluation.decision import format_entry

    other = save_tiny_folder(tmp_path / "other", model_type="gemma2")  # another random model: nonzero deltas
    out = _eval(tmp_path, capsys, "--compare-to", str(other), "--json", str(tmp_path / "e.json"))
    deltas = json.loads((tmp_path / "e.json").read_text())["deltas"]
    rows = [line for line in out.splitlines() if line.split()[:1] in (["rte"], ["hellaswag"], ["average"])]
    for task in ("rte", "hellaswag", "average"):
        last = [line for line in rows if line.split()[0] == task][-1]  # its row of the agreement / LL table
        cells = [format_entry(deltas[task][m], m, minus="-") for m in ("agreement", "gold_ll_per_char", "choice_kl")]
        assert all(cell in last for cell in cells), (last, cells)
    (avg,) = [line for line in rows if line.split()[:2] == ["average", "main"]]
    assert avg.endswith(format_entry(deltas["average"]["main"], minus="-")), avg
