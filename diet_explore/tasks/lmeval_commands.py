"""The commands that hand a full evaluation to lm-evaluation-harness: the ``diet-explore lmeval-tasks``
command that writes task files over the quick evaluation's held-out documents
(``evaluation/lmeval_tasks.py``), and the ``lm_eval`` commands that score a model on them (one device,
one model over every GPU, vLLM with one replica per GPU). Text only: nothing here loads data or a model,
so the model card and every command print them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from diet_explore.core.errors import DietError

TASK_PREFIX = "diet_"  # lm-eval task names: diet_boolq, ... (lm-eval's own `boolq` reads the whole hub split)
TAG = "diet_explore"  # `--tasks diet_explore` runs every task of a folder


def task_name(task: str) -> str:
    return TASK_PREFIX + task


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
#: The ways to run them: one device; one model split over every visible GPU (hf's parallelize=True, for a
#: model larger than one GPU); vLLM with one replica per GPU (data parallel, for many GPUs).
VARIANTS = ("hf", "hf-parallelize", "vllm")


def lm_eval_command(
    model_folder: str,
    tasks_dir: str | Path,
    task_names: list[str],
    variant: str = "hf",
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 8,
    gpus: int = 8,
    limit: int | None = None,
) -> str:
    """The ``lm_eval`` command scoring ``model_folder`` on the held-out tasks in ``tasks_dir``."""
    if variant not in VARIANTS:
        raise DietError(f"unknown lm-eval variant {variant!r}", f"use one of {', '.join(VARIANTS)}")
    model_args = f"pretrained={model_folder},dtype={dtype}"
    backend, batch = "hf", str(batch_size)
    if variant == "hf-parallelize":
        model_args += ",parallelize=True"
    elif variant == "vllm":
        backend, batch = "vllm", "auto"
        model_args += f",tensor_parallel_size=1,data_parallel_size={gpus},gpu_memory_utilization=0.8"
    args = ["lm_eval", "--model", backend, "--model_args", model_args]
    args += ["--include_path", str(tasks_dir), "--tasks", ",".join(task_names), "--batch_size", batch]
    if device and variant == "hf":
        args += ["--device", device]
    if limit:
        args += ["--limit", str(limit)]
    return shlex.join(args)  # quoted: a folder with a space in its path pastes as one argument


def lmeval_tasks_command(
    out: str | Path,
    tasks: list[str] | str = "all",
    cache: str | None = None,
    masks: list[str] | None = None,
    seed: int | None = None,
) -> str:
    """The ``diet-explore lmeval-tasks`` command that writes the task files ``eval`` held out."""
    args = ["diet-explore", "lmeval-tasks", "--out", str(out)]
    if tasks != "all":
        args += ["--tasks", ",".join(tasks) if isinstance(tasks, list) else tasks]
    if cache:
        args += ["--cache", str(cache)]
    for m in masks or []:
        args += ["--mask", str(m)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return shlex.join(args)


def hand_off_commands(
    models: dict[str, str],
    tasks_dir: str | Path,
    task_names: list[str],
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    gpus: int = 8,
) -> list[tuple[str, str]]:
    """(label, command) for each model (label -> folder, e.g. dense and pruned) with lm-eval on the
    held-out tasks: the one-device command of each, then the many-GPU variants (vLLM's
    ``data_parallel_size`` is ``gpus``: set it to the GPU count)."""
    out = [
        (label, lm_eval_command(folder, tasks_dir, task_names, "hf", dtype, device, batch_size, limit=limit))
        for label, folder in models.items()
    ]
    for label, folder in models.items():
        for variant, what in (
            ("hf-parallelize", "one model over every GPU"),
            ("vllm", f"vLLM, one replica on each of {gpus} GPUs"),
        ):
            cmd = lm_eval_command(folder, tasks_dir, task_names, variant, dtype, batch_size=batch_size, gpus=gpus, limit=limit)
            out.append((f"{label}, {what}", cmd))
    return out


def hand_off(models: dict[str, str], tasks_dir: str | Path, task_names: list[str], *args, **kwargs) -> list[str]:
    """``hand_off_commands`` as printable lines, ``label: command``."""
    return [f"{label}: {cmd}" for label, cmd in hand_off_commands(models, tasks_dir, task_names, *args, **kwargs)]


TASKS_DIR = "lmeval-tasks"  # the --out a printed lmeval-tasks command writes


def card_section(folder_name: str, source: str, dense_folder: str, tasks: list[str], dtype: str, has_mask: bool) -> list[str]:
    """The model card's "Evaluate" section (markdown lines): the quick paired eval, then the full
    lm-eval run over the held-out documents with the mask's calibration examples left out."""
    names = [task_name(t) for t in tasks]
    write = lmeval_tasks_command(TASKS_DIR, tasks, masks=[folder_name] if has_mask else None)
    models = {"dense (the source)": dense_folder, "pruned (this folder)": folder_name}
    lines = [
        "## Evaluate",
        "",
        f"Quick, paired against the source on held-out examples: `diet-explore eval --model {folder_name} --compare-to {source}`.",
        "",
        "Full, with lm-evaluation-harness on every held-out document, offline. The first command writes the "
        "task files with the calibration examples left out: lm-eval's stock tasks would score "
        "whole splits that hold them (and ARC/OpenBookQA on test, where diet-explore uses validation).",
        "",
        "```bash",
        write,
    ]
    for label, cmd in hand_off_commands(models, TASKS_DIR, names, dtype):
        lines += [f"# {label}", cmd]
    return [*lines, "```"]
