"""``compare --save``: every pruned model of a sweep kept as a plain Hugging Face folder.

The masks are rebuilt by the sweep's own rule (``results.run_masks``, from its score cache and
settings), and each is pruned from the checkpoint tensor by tensor (``pruning.streaming``): saving
any number of folders holds no model in memory, whatever the sweep itself held. One folder per
``method@sparsity`` (``diet-0.1``), or per task for the per-task methods (``single-task-0.1-boolq``);
a rotate-and-slice (SliceGPT) model is no plain architecture and is not saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from diet_explore.experiments.results import PER_TASK_METHODS, builds_mask, run_masks


def save_sweep_models(config, save_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write the pruned folder of every masked run in ``config``'s grid (a ``CompareConfig``) under
    ``save_dir``; a folder that already holds the same mask is kept as it is (a re-run resumes)."""
    from diet_explore.evaluation.evaluate import eval_requests
    from diet_explore.experiments.sweep import combo_key, sweep_grid
    from diet_explore.masking.importance import as_precompute
    from diet_explore.masking.maskfile import mask_file_from_result
    from diet_explore.models.loading import load_config, model_source
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.saving import MASK_FILE, PRUNE_INFO_FILE, required_multiple_for_config
    from diet_explore.pruning.streaming import prune_to_folder

    save_dir = Path(save_dir)
    pre = as_precompute(load_cache(config.cache))
    tasks = list(eval_requests(config.eval_config()))
    multiple = config.kept_multiple(required_multiple_for_config(load_config(config.model)))  # what the sweep used
    source = model_source(config.model)
    written = []
    for method, sparsity in sweep_grid(config):
        name = combo_key(method, sparsity).replace("@", "-")
        if not builds_mask(method):
            log(f"{name}: not saved (rotate-and-slice is no plain Hugging Face architecture)")
            continue
        masks = run_masks(pre, method, sparsity, config, multiple, tasks)
        per_task = method in PER_TASK_METHODS
        for task, mask in masks.items() if per_task else [(None, next(iter(masks.values())))]:
            folder = save_dir / (f"{name}-{task}" if per_task else name)
            mask_file = mask_file_from_result(mask, pre)
            if _holds(folder / MASK_FILE, mask_file.kept_indices) and (folder / PRUNE_INFO_FILE).is_file():
                log(f"{folder}: already saved with this mask")
            else:
                prune_to_folder(source, mask_file, folder, dtype=config.dtype, device=config.device, overwrite=True)
                log(f"{folder}: saved ({mask_file.n_keep} of {mask_file.hidden_size} dims)")
            written.append(folder)
    return written


def _holds(mask_path: Path, kept: list[int]) -> bool:
    try:
        return json.loads(mask_path.read_text()).get("kept_indices") == kept
    except (OSError, ValueError):
        return False
