"""``compare --save``: every pruned model of a sweep kept as a plain Hugging Face folder.

The masks are rebuilt by the sweep's own rule (``results.run_masks``, from its score cache and
settings), and each is pruned from the checkpoint tensor by tensor (``pruning.streaming``): saving
any number of folders holds no model in memory, whatever the sweep itself held. One folder per
``method@sparsity`` (``diet-0.1``), or per task for the per-task methods (``single-task-0.1-boolq``);
a rotate-and-slice (SliceGPT) model is no plain architecture and is not saved. A saved folder must
reload, so a kept count the model's config class refuses (``compare --multiple-of 1`` on a Llama with 9
heads) is refused before the sweep (``check_saveable_sweep``), never rounded: a rounded folder would
not be the model the sweep evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from diet_explore.core.errors import DietError
from diet_explore.experiments.results import PER_TASK_METHODS, builds_mask, run_masks


def _planned(config) -> list[tuple[str, object | None, object]]:
    """(folder name, mask or None, precompute) of every run in ``config``'s grid (a ``CompareConfig``),
    the masks rebuilt with the multiple the sweep used; None for a run with no mask (rotate-and-slice)."""
    from diet_explore.evaluation.evaluate import eval_requests
    from diet_explore.experiments.sweep import combo_key, sweep_grid
    from diet_explore.masking.importance import as_precompute
    from diet_explore.models.loading import load_config
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.saving import required_multiple_for_config

    pre = as_precompute(load_cache(config.cache))
    tasks = list(eval_requests(config.eval_config()))
    multiple = config.kept_multiple(required_multiple_for_config(load_config(config.model)))  # what the sweep used
    planned = []
    for method, sparsity in sweep_grid(config):
        name = combo_key(method, sparsity).replace("@", "-")
        if not builds_mask(method):
            planned.append((name, None, pre))
            continue
        masks = run_masks(pre, method, sparsity, config, multiple, tasks)
        if method in PER_TASK_METHODS:
            planned += [(f"{name}-{task}", mask, pre) for task, mask in masks.items()]
        else:
            planned.append((name, next(iter(masks.values())), pre))
    return planned


def check_saveable_sweep(config) -> None:
    """Refuse ``compare --save`` when a run keeps a count the model's config class would refuse on save
    (``round_to_model`` off, e.g. ``--multiple-of 1`` on a Llama with 9 heads): the sweep evaluates such a
    mask in memory as it is, but a saved folder must reload, and a folder rounded to another count would
    not be the evaluated model. Milliseconds (the masks only): called before the sweep runs."""
    from diet_explore.models.loading import load_config
    from diet_explore.pruning.saving import check_saveable, required_multiple_for_config

    model_config = load_config(config.model)
    for name, mask, _ in _planned(config):
        if mask is None:
            continue
        try:
            check_saveable(model_config, mask.n_keep)
        except DietError:
            m = required_multiple_for_config(model_config)
            raise DietError(
                f"--save: {name} keeps {mask.n_keep} of {mask.hidden_size} dims, not a multiple of {m} (the model's "
                "attention heads), so its folder could not be saved or reloaded",
                f"give --multiple-of {m} (or leave --multiple-of unset: compare then rounds every count to it), "
                "or run without --save",
            ) from None


def save_sweep_models(config, save_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write the pruned folder of every masked run in ``config``'s grid (a ``CompareConfig``) under
    ``save_dir``; a folder that already holds the same mask is kept as it is (a re-run resumes). A count
    the model could not save is refused before any folder is written (``check_saveable_sweep``)."""
    from diet_explore.masking.maskfile import mask_file_from_result
    from diet_explore.models.loading import model_source
    from diet_explore.pruning.saving import MASK_FILE, PRUNE_INFO_FILE
    from diet_explore.pruning.streaming import prune_to_folder

    check_saveable_sweep(config)
    save_dir = Path(save_dir)
    source = model_source(config.model)
    written = []
    for name, mask, pre in _planned(config):
        if mask is None:
            log(f"{name}: not saved (rotate-and-slice is no plain Hugging Face architecture)")
            continue
        folder = save_dir / name
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
