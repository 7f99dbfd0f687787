"""``diet-explore models``: list built-in models; ``--install NAME`` converts one into the store."""

from __future__ import annotations

from diet_explore.core.errors import DietError


def register(sub) -> None:
    p = sub.add_parser("models", help="list built-in models, or install one into the local model store")
    p.add_argument("--install", metavar="NAME", help="dequantize a built-in GGUF into the local model store")
    p.add_argument("--overwrite", action="store_true", help="re-convert even if already in the store")
    p.set_defaults(func=run)


def run(args) -> int:
    from diet_explore.models.adapters import SUPPORTED_MODEL_TYPES
    from diet_explore.models.builtin import BUILTIN_MODELS, convert_builtin, install_command, is_installed, store_path

    if args.overwrite and args.install is None:
        raise DietError("--overwrite re-converts the model --install names, and none is named", "add --install NAME")
    if args.install:
        if args.install not in BUILTIN_MODELS:
            raise DietError(f"unknown built-in model {args.install!r}", f"choose one of {', '.join(BUILTIN_MODELS)}")
        path = convert_builtin(args.install, overwrite=args.overwrite)
        print(f"{args.install}: ready at {path}")
        return 0
    print(f"{'name':<14} {'installed':<10} {'hub id':<38} store / install")
    for name, spec in BUILTIN_MODELS.items():
        ok = is_installed(name)
        where = str(store_path(name)) if (store_path(name) / "config.json").exists() else install_command(name)
        print(f"{name:<14} {'yes' if ok else 'no':<10} {spec.hf_id:<38} {where}")
        print(f"{'':<14} weights: {spec.provenance}")
    print(f"\nAlso accepted: a local Hugging Face folder or a hub id. Families: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return 0
