"""Quick evaluation vs lm-evaluation-harness (HF backend), side by side on the same examples.

Both score the same held-out examples (diet-explore's ``evaluation_ids``, written to Arrow files
that lm-eval reads through the offline task YAMLs in ``benchmarks/lm_eval_tasks/``), with the same
in-memory model, device, dtype and tokenizer. Prints the wall-time ratio (for the one-token-choice tasks, whose shared context lm-eval already
runs once, and for the rest apart) and per-example agreement
of the predictions (acc's argmax; acc_norm's where both report it) and the largest log-likelihood
difference. Needs ``pip install -r requirements-bench.txt`` (lm-eval==0.4.13); runs offline.

    python benchmarks/bench_eval.py --model smollm2-135m --limit 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_model
from diet_explore.evaluation.parallel import default_workers
from diet_explore.models.loading import load_model
from diet_explore.tasks import data
from diet_explore.tasks.registry import resolve_tasks

TEMPLATES = Path(__file__).resolve().parent / "lm_eval_tasks"


def write_subsets(requests, data_dir: Path) -> None:
    """One Arrow file per task holding exactly the held-out rows, in diet-explore's order."""
    for spec in resolve_tasks(list(requests)):
        ids = [r.doc_id for r in requests[spec.name]]
        with tempfile.TemporaryDirectory() as tmp:
            data.load_task_data(spec).select(ids).save_to_disk(tmp)
            arrows = sorted(Path(tmp).glob("*.arrow"))
            assert len(arrows) == 1, arrows
            shutil.copy(arrows[0], data_dir / f"{spec.name}.arrow")


def render_yamls(tasks, data_dir: Path, out_dir: Path) -> None:
    import lm_eval

    lm_tasks = Path(lm_eval.__file__).parent / "tasks"
    for t in tasks:
        text = string.Template((TEMPLATES / f"diet_{t}.yaml").read_text())
        (out_dir / f"diet_{t}.yaml").write_text(text.substitute(LM_EVAL_TASKS=lm_tasks, DATA_DIR=data_dir))


class WorkCounter:
    """Counts the tokens that go through the decoder stack and the rows that go through the
    vocabulary projection, by forward hooks on the model itself, whoever calls it."""

    def __init__(self, model):
        from torch import nn

        from diet_explore.models.adapters import get_adapter

        adapter = get_adapter(model)
        self.body_tokens = self.head_rows = 0
        self._lock = threading.Lock()  # our scorer calls the model from two worker threads
        # multiply-accumulates per token: every linear of the blocks (attention scores ignored), and the lm_head
        self.body_macs = sum(m.weight.numel() for layer in adapter.layers() for m in layer.modules() if isinstance(m, nn.Linear))
        self.head_macs = adapter.lm_head().weight.numel()
        self._hooks = [
            adapter.base_model().register_forward_hook(self._body),
            adapter.lm_head().register_forward_hook(self._head),
        ]

    def _body(self, module, args, output) -> None:
        with self._lock:
            self.body_tokens += output.last_hidden_state.shape[:-1].numel()

    def _head(self, module, args, output) -> None:
        with self._lock:
            self.head_rows += output.shape[:-1].numel()

    def macs(self) -> float:
        return float(self.body_tokens) * self.body_macs + float(self.head_rows) * self.head_macs

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def run_lm_eval(model, tokenizer, tasks, include_dir: Path, batch_size: int):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    tm = TaskManager(include_path=str(include_dir), include_defaults=False)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[f"diet_{t}" for t in tasks], task_manager=tm, log_samples=True, num_fewshot=0, bootstrap_iters=0
    )
    wall = time.perf_counter() - start
    samples = {}
    for t in tasks:
        for s in out["samples"][f"diet_{t}"]:
            lls = [float(r[0]) for r in s["filtered_resps"]]
            samples[(t, int(s["doc_id"]))] = lls
    return wall, samples, out["results"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8, help="lm-eval's --batch_size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--workers", type=int, default=None, help="our scorer's workers (default: 2 on a multi-core CPU)")
    ap.add_argument("--cache", default="cache/smollm2-135m", help="score cache whose calibration ids are excluded")
    args = ap.parse_args(argv)

    import torch

    model, tokenizer, info = load_model(args.model, device=args.device, dtype=args.dtype)
    cache = args.cache if args.cache and Path(args.cache, "manifest.json").exists() else None
    config = EvalConfig(
        tasks=args.tasks, limit=args.limit, perplexity=False, exclude_cache=cache, device=args.device, workers=args.workers
    )
    requests = eval_requests(config)
    tasks = list(requests)
    print(
        f"model {info.name} ({next(model.parameters()).dtype}, {args.device}, {torch.get_num_threads()} threads); "
        f"{len(tasks)} tasks x {args.limit} held-out examples; lm-eval batch size {args.batch_size}; "
        f"our scorer: {args.workers or default_workers(args.device)} worker(s)"
    )
    with torch.inference_mode():  # warm both paths' kernels the same way
        model(input_ids=torch.tensor([[1, 2, 3, 4]], device=model.device))

    # Two groups, timed apart: tasks whose choices are one token (lm-eval already runs their shared
    # context once) and the rest (several multi-token continuations per context).
    single = [t for t in tasks if t in ("boolq", "rte")]
    groups = [g for g in (single, [t for t in tasks if t not in single]) if g]
    lm_samples, lm_results, walls = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, yaml_dir = Path(tmp, "data"), Path(tmp, "tasks")
        data_dir.mkdir(), yaml_dir.mkdir()
        write_subsets(requests, data_dir)
        render_yamls(tasks, data_dir, yaml_dir)
        for group in groups:
            theirs_work = WorkCounter(model)
            lm_wall, samples, results = run_lm_eval(model, tokenizer, group, yaml_dir, args.batch_size)
            theirs_work.close()
            lm_samples.update(samples)
            lm_results.update(results)
            sub = EvalConfig.from_dict({**config.to_dict(), "tasks": group})
            ours_work = WorkCounter(model)
            start = time.perf_counter()
            part = evaluate_model(model, tokenizer, sub, requests=eval_requests(sub))
            walls.append((group, time.perf_counter() - start, lm_wall, part, ours_work, theirs_work))
            ours_work.close()
    ours = walls[0][3]
    for _, _, _, part, _, _ in walls[1:]:
        ours.tasks.update(part.tasks)
        ours.scores += part.scores
    our_wall, lm_wall = sum(w[1] for w in walls), sum(w[2] for w in walls)

    print(
        f"\n{'task':14s} {'n':>4s} {'acc ours':>9s} {'acc lm-eval':>11s} {'agree acc':>10s} {'agree norm':>11s} {'max |dll|':>10s}"
    )
    total = agree = agree_n = total_n = 0
    worst = 0.0
    for t in tasks:
        recs = [p for p in ours.predictions if p["task"] == t]
        a = an = nn = 0
        worst_t = 0.0
        for i, p in enumerate(recs):
            theirs = lm_samples[(t, i)]
            a += int(np.argmax(theirs) == p["pred"])
            choice_texts = requests[t][i].choice_texts
            if ours.tasks[t].correct_norm is not None:
                lengths = np.array([float(len(c)) for c in choice_texts])
                an += int(np.argmax(np.asarray(theirs) / lengths) == p["pred_norm"])
                nn += 1
            worst_t = max(worst_t, float(np.max(np.abs(np.asarray(theirs) - np.asarray(p["lls"])))))
        worst = max(worst, worst_t)
        lm_acc = lm_results[f"diet_{t}"].get("acc,none", float("nan"))
        total, agree, total_n, agree_n = total + len(recs), agree + a, total_n + nn, agree_n + an
        print(
            f"{t:14s} {len(recs):4d} {ours.tasks[t].correct.mean():9.3f} {lm_acc:11.3f} {a:5d}/{len(recs):<4d} "
            f"{(f'{an:5d}/{nn:<5d}' if nn else '        -  '):>11s} {worst_t:10.2e}"
        )
    print(
        f"\nprediction agreement: acc {agree}/{total} ({agree / total:.1%}), acc_norm {agree_n}/{total_n} "
        f"({agree_n / max(total_n, 1):.1%}); max |log-likelihood difference| {worst:.2e}"
    )
    print(
        "\nwork = matmul multiply-accumulates of the linears (decoder tokens incl. padding, lm_head rows), "
        "counted by hooks during the timed runs; the work ratio is what doing less work gives an exact "
        "method; a speedup beyond it comes from doing the same work faster per token"
    )
    for group, ours_s, theirs_s, _, ow, tw in walls:
        print(
            f"{','.join(group)}: decoder tokens lm-eval {tw.body_tokens} / ours {ow.body_tokens}, lm_head rows "
            f"{tw.head_rows} / {ow.head_rows}; work ratio {tw.macs() / ow.macs():.2f}x"
        )
        print(f"  wall time: diet-explore {ours_s:.1f} s, lm-eval {theirs_s:.1f} s -> speedup {theirs_s / ours_s:.2f}x")
    ours_macs, theirs_macs = sum(w[4].macs() for w in walls), sum(w[5].macs() for w in walls)
    print(
        f"all {len(tasks)} tasks: work ratio {theirs_macs / ours_macs:.2f}x; wall time diet-explore {our_wall:.1f} s, "
        f"lm-eval {lm_wall:.1f} s -> speedup {lm_wall / our_wall:.2f}x (target >= 3x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
