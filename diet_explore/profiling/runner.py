"""Profiling: run calibration samples through the base model and write a score cache.

Per task: a seeded draw of N examples; each is run as the text the model sees when scoring its
correct answer (context + delimiter + gold continuation, tokenized as the model's tokenizer does by
default, which adds BOS for Gemma). Only the decoder stack runs (no vocabulary projection), under
``torch.inference_mode``, in length-sorted batches under a token budget so padding stays small.
The same forward passes record each dim's top-activating token positions and their decoded
neighbourhood (``profiling.contexts``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diet_explore import __version__
from diet_explore.core import atomic
from diet_explore.core.batching import device_token_budget, pack_by_length
from diet_explore.core.clock import utc_timestamp
from diet_explore.core.config import JsonConfig, check_seed
from diet_explore.core.errors import DietError
from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.base import ModelAdapter
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.models.tokens import bos_prefix
from diet_explore.profiling.cache import SITES, CacheWriter, ScoreCache, TaskScores, check_resume, load_cache
from diet_explore.profiling.contexts import CONTEXT_RADIUS, TOP_K, build_contexts
from diet_explore.profiling.hooks import record_activations
from diet_explore.tasks.data import DEFAULT_SEED, calibration_ids, check_task_data, requests_for
from diet_explore.tasks.registry import PROMPT_FORMAT_VERSION, load_registry, resolve_tasks
from diet_explore.tasks.wiki import WIKI_TASK, wiki_calibration_ids, wiki_token_windows

Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class ProfileConfig(JsonConfig):
    model: str = DEFAULT_MODEL
    tasks: str | list[str] = "all"
    samples: int = 100
    seed: int = DEFAULT_SEED
    sites: list[str] = field(default_factory=lambda: list(SITES))
    max_length: int = 1024  # longer samples keep their last tokens (the answer end)
    max_batch_tokens: int = 4096  # padded tokens per forward; bounds memory
    generic: bool = True  # also profile held-in wiki text windows (the task-agnostic baseline)
    generic_window: int = 128
    device: str = "auto"
    dtype: str | None = None
    task_files: list[str] = field(default_factory=list)  # extra task registry JSON files (--task-file)
    add_contexts: bool = False  # re-run finished tasks that lack contexts (a schema-1 cache), keep their scores
    skip_first_token: bool = False  # leave each sequence's first token out of the scores (the model still sees it)

    def __post_init__(self) -> None:
        # a slice s[-0:] keeps the whole sequence and s[--5:] drops its first tokens: refuse both here
        _check_positive(self.max_length, "--max-length", "e.g. --max-length 1024 (longer samples keep their last tokens)")
        if self.max_length < MIN_MAX_LENGTH:  # --max-length 1 profiled each sample's last token, silently
            raise DietError(
                f"--max-length {self.max_length} keeps only the last {self.max_length} token(s) of each sample (the end "
                "of its answer), too few to stand for the task",
                f"use at least {MIN_MAX_LENGTH}, e.g. --max-length 1024",
            )
        _check_positive(self.max_batch_tokens, "--max-batch-tokens", "e.g. --max-batch-tokens 4096")
        _check_positive(self.generic_window, "generic_window", "e.g. generic_window=128")
        check_seed(self.seed, "--seed")
        self.sites = list(dict.fromkeys(self.sites))  # "residual,residual" is one site, recorded once

    def science(self) -> dict[str, Any]:
        """The fields that change the numbers: a resume must match these exactly."""
        science = {
            "samples": self.samples,
            "seed": self.seed,
            "max_length": self.max_length,
            "generic_window": self.generic_window,
        }
        # only when set: a cache profiled before the option existed counts the first token, and resumes as it is
        return science | ({"skip_first_token": True} if self.skip_first_token else {})


MIN_MAX_LENGTH = 16  # tokens a profiled sample keeps at least: a prompt's end, not only its last word


def _check_positive(value: Any, name: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DietError(f"{name} must be a whole number of tokens, at least 1; got {value!r}", hint)


# ------------------------------------------------------------------------------------------------
def profile_batches(lengths: list[int], max_batch_tokens: int, min_fill: float = 0.92) -> list[list[int]]:
    """The profile's forward passes (``core.batching``): at most ``max_batch_tokens`` padded tokens,
    and a batch closes before its real tokens would fall under ``min_fill`` of the padded ones."""
    return pack_by_length(lengths, max_batch_tokens, lambda padded, real: real < min_fill * padded)


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad: (B, T) ids and mask. With causal attention, real tokens never see the padding."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


@torch.inference_mode()
def profile_sequences(
    adapter: ModelAdapter,
    seqs: list[list[int]],
    sites: list[str],
    max_batch_tokens: int,
    pad_id: int,
    on_batch: Callable[[int], None] | None = None,
    min_fill: float = 0.92,
    top_k: int = 0,
    decode: Callable[[int], str] | None = None,
    skip_first: bool = False,
) -> tuple[TaskScores, dict[str, int]]:
    """Scores of token sequences: per-site (L, D) layer means and (N, D) per-sample block means.

    With ``top_k > 0`` and ``decode`` (token id -> text) the scores also carry each dim's
    ``top_k`` top-activating positions and their decoded neighbourhood (``TaskScores.contexts``).
    ``skip_first``: each sequence's first token is left out of the scores (``ActivationStats``).
    """
    device = next(adapter.model.parameters()).device
    base = adapter.base_model()
    max_batch_tokens = device_token_budget(adapter.model, max_batch_tokens, max(map(len, seqs), default=1))  # CPU: as given
    per_sample = {s: np.zeros((len(seqs), adapter.hidden_size), dtype=np.float32) for s in sites}
    padded = 0
    with record_activations(adapter, sites, top_k, skip_first) as stats:
        for batch in profile_batches([len(s) for s in seqs], max_batch_tokens, min_fill):
            ids, mask = pad_batch([seqs[i] for i in batch], pad_id)
            padded += ids.numel()
            stats.begin_batch(mask.to(device), rows=batch)
            base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for site, values in stats.end_batch().items():
                per_sample[site][batch] = values.cpu().numpy()
            if on_batch:
                on_batch(len(batch))
        layer = {s: v.cpu().numpy().astype(np.float32) for s, v in stats.layer_means().items()}
        top = stats.top_tokens()
    real = sum(len(s) for s in seqs)
    contexts = build_contexts(top, seqs, decode, CONTEXT_RADIUS) if top and decode is not None else None
    scores = TaskScores(layer, per_sample, [], [len(s) for s in seqs], contexts=contexts)
    return scores, {"real_tokens": real, "padded_tokens": padded}


def weight_magnitude(adapter: ModelAdapter) -> np.ndarray:
    """Task-agnostic baseline: L2 norm of every block weight attached to each hidden dim (D,).

    Input columns of q/k/v/gate/up and output rows of o/down; embeddings are left out because the
    vocabulary-sized matrix would swamp the blocks.
    """
    sq = torch.zeros(adapter.hidden_size, dtype=torch.float32)
    for la in adapter.layer_adapters():
        for lin in la.attention_inputs() + la.mlp_inputs():
            sq += _weight(lin).pow(2).sum(0)  # (D,) input columns
        for lin in (la.attention_output(), la.mlp_output()):
            sq += _weight(lin).pow(2).sum(1)  # (D,) output rows
    return sq.sqrt().numpy()


def _weight(lin: torch.nn.Module) -> torch.Tensor:
    """A linear's weight as fp32 on the CPU; offloaded weights (device_map="auto" beyond GPU memory)
    sit on the meta device until accelerate brings them in."""
    if lin.weight.device.type == "meta":
        from accelerate.utils import align_module_device

        with align_module_device(lin, torch.device("cpu")):
            return lin.weight.detach().float().cpu()
    return lin.weight.detach().float().cpu()


# ------------------------------------------------------------------------------------------------
def task_sequences(spec, ids: list[int], tokenizer, max_length: int) -> list[list[int]]:
    """The token sequences a task's calibration samples ``ids`` run as: each example's context,
    delimiter and gold continuation, tokenized as the tokenizer does by default, keeping the last
    ``max_length`` tokens (the answer end). Rotate-and-slice calibrates on exactly these."""
    texts = [r.gold_text() for r in requests_for(spec, ids)]
    return [s[-max_length:] for s in tokenizer(texts)["input_ids"]]


def wiki_sequences(tokenizer, ids: list[int], window: int) -> list[list[int]]:
    """The generic-text calibration windows ``ids`` (of ``window`` tokens), after a BOS token for
    tokenizers that prepend one (Gemma)."""
    windows = wiki_token_windows(tokenizer, window)
    bos = [] if bos_prefix(tokenizer) is None else [tokenizer.bos_token_id]
    return [bos + windows[i].tolist() for i in ids]


# ------------------------------------------------------------------------------------------------
def profile(config: ProfileConfig, out: str | Path, progress: Progress | None = None, loaded=None) -> ScoreCache:
    """Profile ``config.tasks`` into the cache folder ``out``; finished tasks there are reused.

    ``loaded`` = (model, tokenizer, ModelInfo) skips loading (tests, the app's cached model).
    """
    _check_out(out)
    # one run per cache folder: two runs each rewrote the manifest with only their own tasks, and one
    # run's finished tasks were lost (their files orphaned). The second run is refused, not queued.
    with atomic.locked(out, timeout=0, in_use=f"--out {out} is being written by another profile run"):
        return _profile(config, Path(out), progress, loaded)


def _check_out(out: str | Path) -> None:
    """An unusable --out fails before any work (not after the first task), and so does a model folder."""
    atomic.check_writable(out, "--out", folder=True)
    if (Path(out) / "config.json").exists():  # a model folder (a pruned one too): a prune --overwrite would delete the cache
        raise DietError(
            f"--out {out} holds a model (config.json), not a score cache",
            "profile into a folder of its own, e.g. --out cache/<model name>",
        )


def _profile(config: ProfileConfig, out: Path, progress: Progress | None, loaded) -> ScoreCache:
    from diet_explore.models.loading import dtype_name, load_model

    specs = resolve_tasks(config.tasks, load_registry(config.task_files))
    bad_sites = [s for s in config.sites if s not in SITES]
    if not config.sites:  # "--sites ," said "unknown site(s) []"
        raise DietError("no site given", f"use some of {', '.join(SITES)}, e.g. --sites residual")
    if bad_sites:
        raise DietError(f"unknown site(s) {', '.join(bad_sites)}", f"use some of {', '.join(SITES)}")
    for spec in specs:  # fail before the model load if a split is too small or a template does not fit
        # every calibration request is built once here (about 50 ms for all tasks), so a task-file
        # entry that does not fit its data fails now, not after the model load and earlier tasks
        check_task_data(spec, calibration_ids(spec, config.samples, config.seed))
    # a resume into a cache made with other settings is refused before minutes of model loading;
    # CacheWriter checks again below with everything the loaded model tells (its full ModelInfo)
    check_resume(out, _planned_header(config, loaded), PRELOAD_RESUME_KEYS)
    model, tokenizer, info = loaded or load_model(config.model, config.device, config.dtype)
    adapter = get_adapter(model)
    device = next(model.parameters()).device
    header = {
        "model": {
            **{k: v for k, v in info.to_dict().items() if k != "path"},  # no machine paths in a shared cache
            "params_per_hidden_dim": adapter.params_per_hidden_dim(),
        },
        "sites": list(config.sites),
        "prompt_format_version": PROMPT_FORMAT_VERSION,
        "config": config.science(),
        "environment": {
            "device": str(device),
            "dtype": dtype_name(next(model.parameters()).dtype),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
            "threads": torch.get_num_threads(),
        },
    }
    writer = CacheWriter(out, header)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decode = lambda token_id: tokenizer.decode([token_id])  # one token's text, for the contexts
    jobs: list[tuple[str, str, list[int], list[list[int]]]] = []
    # with add_contexts, a finished task without contexts runs again; its stored scores are kept
    redo = set(writer.missing_contexts()) if config.add_contexts else set()
    done = set(writer.finished_tasks()) - redo
    for spec in specs:
        if spec.name in done:
            continue
        ids = calibration_ids(spec, config.samples, config.seed)
        jobs.append((spec.name, "task", ids, task_sequences(spec, ids, tokenizer, config.max_length)))
    if config.generic and WIKI_TASK not in done:
        windows = wiki_token_windows(tokenizer, config.generic_window)
        ids = wiki_calibration_ids(len(windows), config.samples, config.seed)
        jobs.append((WIKI_TASK, "generic", ids, wiki_sequences(tokenizer, ids, config.generic_window)))
    for name, kind, ids, seqs in jobs:
        start = time.perf_counter()
        counter = _Counter(name, len(seqs), progress)
        scores, tokens = profile_sequences(
            adapter,
            seqs,
            list(config.sites),
            config.max_batch_tokens,
            pad_id,
            counter,
            top_k=TOP_K,
            decode=decode,
            skip_first=config.skip_first_token,
        )
        counter.close()
        scores = TaskScores(scores.layer, scores.sample, ids, scores.token_counts, kind, scores.contexts)
        wall = {"wall_time_s": round(time.perf_counter() - start, 3)}
        if name in redo:
            writer.add_contexts(name, scores, wall)
        else:
            writer.write_task(name, scores, {**wall, **tokens})
    if not jobs and writer.manifest.get("baselines") is not None:
        return load_cache(out)  # nothing to do: the manifest (and its dates) stays as it is
    if writer.manifest.get("baselines") is None:
        writer.write_baselines({"weight_magnitude": weight_magnitude(adapter)})
    writer.manifest["last_run"] = {"date": utc_timestamp(), "package_version": __version__}
    writer.flush()
    return load_cache(out)


def pending_work(config: ProfileConfig, out: str | Path) -> list[str]:
    """What a profile run into ``out`` would compute, without loading the model: the asked tasks
    (and the generic text) not yet in the cache, with ``add_contexts`` those lacking contexts, and
    "baselines" when they are missing; [] when the cache is complete, so a run has nothing to do
    and writes nothing. A cache made with other settings is refused, as the run refuses it."""
    _check_out(out)
    manifest = check_resume(out, _planned_header(config), PRELOAD_RESUME_KEYS)
    specs = resolve_tasks(config.tasks, load_registry(config.task_files))
    wanted = [s.name for s in specs] + ([WIKI_TASK] if config.generic else [])
    if manifest is None:
        return [*wanted, "baselines"]
    tasks = manifest.get("tasks", {})
    redo = {t for t, m in tasks.items() if not m.get("contexts")} if config.add_contexts else set()
    todo = [t for t in wanted if t not in tasks or t in redo]
    return todo + (["baselines"] if manifest.get("baselines") is None else [])


#: The resume keys known before the model loads (of the model, only its name).
PRELOAD_RESUME_KEYS = ("model_name", "sites", "prompt_format_version", "config", "dtype", "device")


def _planned_header(config: ProfileConfig, loaded=None) -> dict[str, Any]:
    """The manifest fields in ``PRELOAD_RESUME_KEYS`` that this run will write, without loading the
    model: ``load_model`` picks the device and dtype and names the model by the same rules."""
    from diet_explore.models.loading import dtype_name, pick_device, pick_dtype, resolve_source

    if loaded is not None:
        param = next(loaded[0].parameters())
        name, device, dtype = loaded[2].name, str(param.device), dtype_name(param.dtype)
    else:
        device = pick_device(config.device)
        dtype = dtype_name(pick_dtype(config.dtype, device))
        kind, loc = resolve_source(config.model)
        name = config.model if kind != "local" else Path(loc).name
    return {
        "model": {"name": name},
        "sites": list(config.sites),
        "prompt_format_version": PROMPT_FORMAT_VERSION,
        "config": config.science(),
        "environment": {"device": device, "dtype": dtype},
    }


class _Counter:
    """tqdm bar per task (CLI) and/or a callback (app)."""

    def __init__(self, task: str, total: int, progress: Progress | None):
        from tqdm.auto import tqdm

        self.task, self.total, self.done, self.progress = task, total, 0, progress
        self.bar = tqdm(total=total, desc=f"profile {task}", unit="sample", leave=True) if progress is None else None

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.progress is not None:
            self.progress(self.task, self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
