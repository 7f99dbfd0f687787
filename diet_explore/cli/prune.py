"""``diet-explore prune``: apply a mask file to a model and save the smaller model folder."""

from __future__ import annotations

from pathlib import Path

from diet_explore.models.builtin import DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune hidden dimensions with a mask and save a plain Hugging Face model folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local folder or hub id")
    p.add_argument("--mask", required=True, help="mask JSON (from `diet-explore mask`)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output folder, if it is a pruned folder diet-explore wrote (or empty)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where a checkpoint that cannot be streamed is loaded to slice it (default cpu); safetensors "
        "checkpoints are pruned tensor by tensor without loading the model",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="default: the checkpoint's own dtype (config dtype), else float32; the folder is saved in it",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from diet_explore.core.atomic import check_output_dir
    from diet_explore.core.errors import DietError
    from diet_explore.masking.maskfile import load_mask
    from diet_explore.models.adapters import check_supported
    from diet_explore.models.loading import load_config, model_source
    from diet_explore.pruning.saving import NOT_PRUNED, PRUNE_INFO_FILE, check_saveable, size_on_disk
    from diet_explore.pruning.streaming import prune_to_folder

    # Everything that can be refused from the arguments, the mask and the config is refused here,
    # before minutes of loading weights.
    # the raw text: Path("") would read as "."; only a folder a prune wrote may be replaced
    check_output_dir(args.out, overwrite=args.overwrite, marker=PRUNE_INFO_FILE, foreign=NOT_PRUNED)
    out = Path(args.out)
    if Path(args.model).is_dir() and Path(args.model).resolve() == out.resolve():  # a pruned folder pruned again
        raise DietError(
            f"--out {args.out} is the --model folder itself: the prune would replace its own input",
            "write the pruned model to another folder, e.g. --out " + f"{out.name}-pruned",
        )
    load_mask(args.mask)  # a bad mask file fails before a built-in model is converted
    config = load_config(args.model)
    check_supported(config.model_type)  # before anything reads attention fields a Mamba config lacks
    mask = load_mask(args.mask, expected_hidden_size=config.get_text_config().hidden_size)
    check_saveable(config, mask.n_keep)
    source = model_source(args.model)
    info = source.info
    if mask.model_name not in (info.name, info.id):
        print(
            f"warning: {args.mask} was built for {mask.model_name!r}, pruning {info.name!r} (same hidden size)", file=sys.stderr
        )
    result = prune_to_folder(source, mask, out, dtype=args.dtype, device=args.device, overwrite=args.overwrite)
    folder, summary = result.folder, result.info
    if not result.streamed:
        print(f"note: loaded the model to prune it ({result.why_loaded})", file=sys.stderr)
    d, d_new = summary["hidden_size_before"], summary["hidden_size_after"]
    print(f"{info.name}: hidden size {d} -> {d_new} ({mask.method} mask, sparsity {1 - d_new / d:.4f})")
    before, after = summary["parameters_before"], summary["parameters_after"]
    print(f"parameters {before / 1e6:.2f} M -> {after / 1e6:.2f} M ({after / before:.1%})")
    print(
        f"wrote {folder} ({size_on_disk(folder) / 2**20:.1f} MiB on disk); "
        f"load it with AutoModelForCausalLM.from_pretrained({str(folder)!r})"
    )
    return 0
