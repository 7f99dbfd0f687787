"""Loading models: a built-in name (``builtin.py``), a local folder or a Hugging Face hub id.

Any name that is not built in is a local folder or a hub id, loaded with plain ``from_pretrained``
and ``trust_remote_code=False``. Everything that can be checked without reading weights (family,
files, free memory) is checked before they load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diet_explore.core.atomic import check_path
from diet_explore.core.errors import DietError
from diet_explore.models.builtin import BUILTIN_MODELS, convert_builtin, store_path


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What a score cache or run records about the model it used."""

    name: str
    id: str
    path: str | None
    revision: str | None
    weights_sha256: str | None
    model_type: str
    hidden_size: int
    num_layers: int
    num_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# "owner/name" (or a legacy bare "name"): what the hub accepts. Neither part may start with "." so
# "./x", "../x" and "x/.." stay paths; "Qwen/Qwen2.5-0.5B" (a dot inside) is still a hub id.
_HUB_ID = re.compile(r"^(?:[\w-][\w.-]*/)?[\w-][\w.-]*$")
_SOURCE_HINT = "give a built-in name (`diet-explore models`), an existing model folder, or a hub id (owner/name)"


def resolve_source(name_or_path: str) -> tuple[str, str]:
    """(kind, location): kind is "builtin", "local" or "hub".

    An existing folder is local; otherwise a string shaped like a hub id is a hub id, unless its
    first part is a folder here ("artifacts/x": a local folder that is missing, not a hub repo).
    Anything else is a path that does not exist.
    """
    if not name_or_path.strip():
        raise DietError("the model name is empty", _SOURCE_HINT)  # Path("") would mean the current folder
    if name_or_path in BUILTIN_MODELS:
        return "builtin", name_or_path
    path = check_path(Path(name_or_path).expanduser(), "model")
    if path.is_dir():
        return "local", str(path)
    if path.exists():
        raise DietError(f"model path {name_or_path} is a file, not a model folder", _SOURCE_HINT)
    first = name_or_path.split("/", 1)[0]
    if _HUB_ID.match(name_or_path) and not ("/" in name_or_path and Path(first).is_dir()):
        return "hub", name_or_path
    raise DietError(f"model folder {name_or_path} does not exist", _SOURCE_HINT)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all; checked once, so an offline machine fails in
    milliseconds instead of sitting through huggingface_hub's retries with back-off."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_kwargs(kind: str) -> dict[str, Any]:
    """Hub ids read the local Hugging Face cache only when the hub cannot be reached."""
    return {"local_files_only": True} if kind == "hub" and not hub_reachable() else {}


def load_config(name_or_path: str):
    """The transformers config of a model, checked: any error reading or validating its config.json
    is one ``DietError`` naming the file, and so are sizes nothing could be built from."""
    from transformers import AutoConfig

    kind, loc = resolve_source(name_or_path)
    if kind == "builtin":
        loc = str(convert_builtin(loc))
    where = f"config.json of {name_or_path}" if kind == "hub" else str(Path(loc) / "config.json")
    if kind != "hub" and not (Path(loc) / "config.json").exists():  # transformers: "should have a model_type key"
        what = "is empty" if Path(loc).is_dir() and not any(Path(loc).iterdir()) else "has no config.json"
        raise DietError(f"model folder {loc} {what}, so it holds no model", _REBUILD_HINT)
    if kind != "hub":
        try:
            raw = json.loads((Path(loc) / "config.json").read_text())
        except (OSError, ValueError):
            raw = None  # missing or not JSON: AutoConfig says so below
        if isinstance(raw, dict):
            check_config_sizes(raw, where)
    try:
        config = AutoConfig.from_pretrained(loc, trust_remote_code=False, **_hub_kwargs(kind))
    except OSError as exc:
        if kind == "hub" and not hub_reachable():
            raise DietError(
                f"{name_or_path!r} is not a built-in model, not a folder here, and the Hugging Face hub cannot be reached "
                "to look it up (nor is it in the local hub cache)",
                "check the name or path; built-in models: " + ", ".join(BUILTIN_MODELS) + "; hub ids need network access",
            ) from None
        raise DietError(
            f"could not load a model config for {name_or_path!r} ({str(exc).splitlines()[0]})",
            "check the name; built-in models: " + ", ".join(BUILTIN_MODELS) + "; hub ids need network access",
        ) from None
    except Exception as exc:  # the config classes validate fields with many exception types (not only ValueError)
        if isinstance(exc, ValueError) and _UNKNOWN_ARCHITECTURE.search(str(exc)):
            raise DietError(
                f"{name_or_path!r}: {str(exc).splitlines()[0]}",
                "only architectures built into transformers are supported (trust_remote_code stays off)",
            ) from None
        raise DietError(f"{where} is not a valid config: {_short(exc)}", _CONFIG_HINT) from None
    check_config_sizes(config, where)
    return config


# AutoConfig's ValueErrors for a model type transformers does not know (anything else is a bad value)
# and its error when a config's auto_map asks for the checkpoint's own code
_UNKNOWN_ARCHITECTURE = re.compile(r"does not recognize this architecture|Unrecognized model in|contains custom code")
_CONFIG_HINT = "fix that value in config.json, or re-create the model folder"
#: Config fields that must be positive whole numbers when present (None: not set, e.g. head_dim)
_SIZE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)


def _short(exc: BaseException, limit: int = 200) -> str:
    """The gist of a library error: its first line, or the first line naming the cause (strict
    dataclass errors put "Validation error for field 'x':" first and the reason on the next)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} {lines[1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_config_sizes(config, where: str) -> None:
    """Refuse sizes that are not positive integers, or heads that do not divide, before anything
    divides by them (a 0 head count was a ZeroDivisionError traceback). ``config`` is a transformers
    config, or the raw dict of a config.json (checked first, so the message names the field rather
    than the config class's own error; fields it leaves out get defaults and are not checked)."""
    raw = isinstance(config, dict)
    values = {f: config.get(f) if raw else getattr(config, f, None) for f in _SIZE_FIELDS}
    for field, value in values.items():
        if value is None and (raw or field not in ("hidden_size", "num_hidden_layers", "num_attention_heads")):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DietError(f"{where}: {field} is {value!r}, not a positive whole number", _CONFIG_HINT)
    hidden, heads, kv_heads = values["hidden_size"], values["num_attention_heads"], values["num_key_value_heads"]
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise DietError(
            f"{where}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})", _CONFIG_HINT
        )
    if hidden is not None and heads is not None and values["head_dim"] is None and not raw and hidden % heads:
        raise DietError(f"{where}: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})", _CONFIG_HINT)


def estimate_parameters(config) -> int:
    """Exact parameter count from a config, without allocating weights (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check_fits_in_memory(
    n_params: int, dtype_bytes: int, device: str, name: str, copies: float = 1.0, what: str = "for its weights"
) -> None:
    """Refuse before loading when ``copies`` × the weights would not fit: in free RAM for a CPU load,
    in the free memory of the GPUs ``placement`` may use plus free RAM for a CUDA one (a load too big
    for its GPUs spills to RAM). ``copies`` is the work's measured peak in weight-sizes (loading: 1;
    ``pruning/streaming.py`` says what pruning needs); "mps" is not checked (unified memory)."""
    import psutil

    if device == "mps":
        return
    need = int(n_params * dtype_bytes * copies)
    ram = psutil.virtual_memory().available
    if device == "cpu":
        free, where = ram, "of RAM"
    else:
        gpus = _usable_gpus(device)
        free = sum(_gpu_free_bytes(f"cuda:{i}") for i in gpus) + ram
        where = f"on {_gpu_names(gpus)} and in RAM"
    if need > 0.85 * free:
        raise DietError(
            f"{name} needs about {need / 2**30:.1f} GiB {what}, but only {free / 2**30:.1f} GiB is free {where}",
            "use a smaller model, --dtype bfloat16, or a machine with more memory"
            + ("" if device != "cpu" else " (or a GPU: --device cuda)"),
        )


def _usable_gpus(device: str) -> list[int]:
    """The GPU indices a load on ``device`` may use: ``cuda:N`` only N, plain ``cuda`` every GPU."""
    import torch

    if ":" in device:
        return [cuda_index(device)]
    return list(range(torch.cuda.device_count()))


def _gpu_names(gpus: list[int]) -> str:
    return ", ".join(f"cuda:{i}" for i in gpus) if len(gpus) <= 2 else f"{len(gpus)} GPUs"


def cuda_index(device: str) -> int:
    """N of "cuda:N" (0 for "cuda"), refused when torch sees no such GPU."""
    import torch

    head, _, tail = device.partition(":")
    if head != "cuda" or (tail and not tail.isdigit()):
        raise DietError(f"unknown device {device!r}", "use auto, cpu, cuda, cuda:N or mps")
    index = int(tail or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DietError(
            f"--device {device} asked for, but torch sees {count} CUDA device(s) (cuda:0 to cuda:{count - 1})",
            "use --device cuda (every GPU) or an index below the device count",
        )
    return index


#: The share of a GPU's free memory weights may take on it; the rest is for activations and the
#: CUDA context (batch sizes are derived from what is left: ``core.batching``).
GPU_WEIGHT_SHARE = 0.9


def placement(device: str, weight_bytes: int) -> dict[str, Any]:
    """from_pretrained's placement arguments for ``device`` (already through ``pick_device``).

    Weights that fit in ``GPU_WEIGHT_SHARE`` of the free memory go whole to the device (``{}``: the
    caller moves the model). Larger ones get ``device_map="auto"`` with ``max_memory`` naming only
    the GPUs the device allows: ``cuda`` spreads over every GPU, ``cuda:N`` stays on GPU N and
    spills the rest to RAM (accelerate moves those layers in per forward pass: slow, but it keeps
    off the GPUs someone else may be using; use ``cuda`` to spread instead)."""
    import psutil

    if not device.startswith("cuda"):
        return {}
    gpus = _usable_gpus(device)
    budget = {i: int(GPU_WEIGHT_SHARE * _gpu_free_bytes(f"cuda:{i}")) for i in gpus}
    first = gpus[0] if ":" in device else _current_gpu()
    if weight_bytes <= budget.get(first, 0):
        return {}
    max_memory: dict[Any, int] = dict(budget)
    max_memory["cpu"] = int(0.85 * psutil.virtual_memory().available)
    return {"device_map": "auto", "max_memory": max_memory}


def _current_gpu() -> int:
    import torch

    return int(torch.cuda.current_device())


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DietError(f"--device {device} asked for, but torch sees no CUDA device", "use --device cpu or auto")
    if device.startswith("cuda"):
        cuda_index(device)  # "cuda:7" on a 2-GPU machine, or "cuda:x", is refused here
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DietError("--device mps asked for, but torch sees no MPS (Apple GPU) device", "use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise DietError(f"unknown device {device!r}", "use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(dtype: str | None, device: str):
    """Default: fp32 on CPU (fp16/bf16 matmuls are slow there), bf16 on GPUs that compute in it
    natively, else fp32 (fp16 overflows in Gemma's activations)."""
    import torch

    if dtype is None or dtype == "auto":
        if device == "cpu":
            return torch.float32
        if device.startswith("cuda") and not _native_bf16(device):
            return torch.float32
        return torch.bfloat16
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise DietError(f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
    return table[dtype]


def _native_bf16(device: str) -> bool:
    """Whether the GPU computes in bf16 natively (compute capability 8.0 and up: A100, H100, L4...)."""
    import torch

    if not torch.cuda.is_available():
        return True  # a config read on a machine without the GPU names the GPU default
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` (or the text "bfloat16") -> "bfloat16": the names --dtype and lm_eval take."""
    return str(dtype).removeprefix("torch.")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_REBUILD_HINT = "pick the right folder, or re-create it (e.g. `diet-explore prune ... --overwrite`)"
_HUB_FILES_HINT = "check the hub id; without network access its files must already be in the Hugging Face cache"


def _files_hint(kind: str) -> str:
    return _HUB_FILES_HINT if kind == "hub" else _REBUILD_HINT


def check_model_folder(folder: Path) -> None:
    """Refuse a local model folder that lacks weights or tokenizer files, before anything loads
    (from_pretrained would raise an OSError traceback, or quietly build a 1-token tokenizer)."""
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        if pickles:  # a pickle runs code when read; torch's weights_only refusal was a traceback advising to turn it off
            raise DietError(
                f"model folder {folder} holds pickle weights ({', '.join(pickles[:3])}), which diet-explore does not "
                "read: only *.safetensors weights are loaded",
                "use the model's safetensors files (most hub models have them), or convert the checkpoint where you trust it",
            )
        raise DietError(f"model folder {folder} has no weights (no *.safetensors file)", _REBUILD_HINT)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise DietError(f"model folder {folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)} is missing)", _REBUILD_HINT)


def _load_tokenizer(loc: str, kind: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(loc, trust_remote_code=False, **_hub_kwargs(kind))
    except (OSError, ValueError) as exc:  # missing or unreadable tokenizer files
        raise DietError(f"could not load the tokenizer of {loc} ({_first_line(exc)})", _files_hint(kind)) from None
    # Some classes (Qwen2Tokenizer) build a vocabulary of just their special tokens instead of failing
    # when the vocabulary files are missing; a base vocabulary under 2 tokens cannot encode text.
    base = int(getattr(tokenizer, "vocab_size", None) or len(tokenizer))
    if base < 2:
        raise DietError(
            f"the tokenizer of {loc} has a vocabulary of {base} token(s); its vocabulary files are missing", _files_hint(kind)
        )
    return tokenizer


def _load_weights(loc: str, kind: str, kwargs: dict[str, Any]):
    """from_pretrained, refusing a checkpoint that lacks weights the architecture needs (they would
    be randomly initialised) or whose tensor shapes do not match config.json."""
    import warnings

    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    report_filter = _DropLoadReport()  # our own one-line errors and warning say what it would
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addFilter(report_filter)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(loc, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except (OSError, SafetensorError, RuntimeError) as exc:  # missing, truncated, corrupt or unloadable weight files
        if isinstance(exc, torch.OutOfMemoryError):
            raise  # not a bad folder: the hint below would mislead
        raise DietError(f"could not load the weights of {loc} ({_first_line(exc)})", _files_hint(kind)) from None
    finally:
        report_logger.removeFilter(report_filter)
    if info.get("mismatched_keys"):
        mismatched = sorted(info["mismatched_keys"], key=lambda m: m[0])
        name, ckpt_shape, model_shape = mismatched[0]
        raise DietError(
            f"the weights of {loc} do not match its config.json: {len(mismatched)} tensor(s) have other shapes, e.g. "
            f"{name} is {list(ckpt_shape)} in the checkpoint but {list(model_shape)} by the config",
            "use the config.json the weights were saved with, or re-create the model folder",
        )
    params = dict(model.named_parameters())  # tied weights once; buffers (rotary inv_freq) not at all
    missing = sorted(k for k in info.get("missing_keys", ()) if k in params)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DietError(
            f"the weights of {loc} lack {len(missing)} tensor(s) the model needs ({shown}); they would be random, not trained",
            "re-create the model folder, or copy its complete *.safetensors files",
        )
    unexpected = sorted(info.get("unexpected_keys", ()))
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (", ..." if len(unexpected) > 3 else "")
        warnings.warn(f"ignoring {len(unexpected)} tensor(s) in {loc} that the model does not use ({shown})", stacklevel=3)
    return model


class _DropLoadReport(logging.Filter):
    """Drops transformers' multi-line LOAD REPORT table (missing / unexpected / mismatched keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class ModelSource:
    """A model name resolved and checked without reading weights: where it is and what it is."""

    name: str
    kind: str  # "builtin", "local" or "hub"
    loc: str  # the folder (built-in: the converted store folder), or the hub id
    config: Any
    info: ModelInfo

    def weight_bytes(self, dtype) -> int:
        import torch

        return self.info.num_parameters * torch.finfo(dtype).bits // 8


def model_source(name_or_path: str) -> ModelSource:
    """Resolve ``name_or_path``; the model family and (for folders) the weight and tokenizer files
    are checked here, before anything loads (a built-in model is converted once if needed)."""
    from diet_explore.models.adapters import check_supported

    kind, loc = resolve_source(name_or_path)
    config = load_config(name_or_path)
    check_supported(config.model_type)
    if kind == "builtin":
        loc = str(store_path(loc))
    if kind != "hub":
        check_model_folder(Path(loc))
    n_params = estimate_parameters(config)
    info = ModelInfo(
        name=name_or_path if kind != "local" else Path(loc).name,
        id=BUILTIN_MODELS[name_or_path].hf_id if kind == "builtin" else str(getattr(config, "_name_or_path", "") or loc),
        path=loc if kind != "hub" else None,
        revision=getattr(config, "_commit_hash", None),
        weights_sha256=_source_digest(Path(loc)) if kind != "hub" else None,
        model_type=config.model_type,
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        num_parameters=int(n_params),
    )
    return ModelSource(name_or_path, kind, loc, config, info)


def load_tokenizer(source: ModelSource):
    """The tokenizer of a resolved model (checked: a vocabulary that can encode text)."""
    return _load_tokenizer(source.loc, source.kind)


def load_model(name_or_path: str, device: str = "auto", dtype: str | None = None, copies: float = 1.0):
    """Load (model, tokenizer, ModelInfo) for a built-in name, a local folder or a hub id.

    The model family and (for folders) the weight and tokenizer files are checked before any
    weights are read; the tokenizer loads first because it is the cheap half. ``copies``: the
    peak of the work that follows, in weight-sizes, for the memory pre-check (pruning a copy: 2).
    A model larger than its GPU is spread (``placement``): ``cuda:N`` is honoured there too.
    """
    import torch

    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    source = model_source(name_or_path)
    n_params = source.info.num_parameters
    check_fits_in_memory(n_params, torch.finfo(torch_dtype).bits // 8, device, name_or_path, copies=copies)
    tokenizer = load_tokenizer(source)
    # safetensors only (a hub repo's pickle .bin is refused too, as a folder's is in check_model_folder)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": False, "use_safetensors": True}
    kwargs.update(placement(device, source.weight_bytes(torch_dtype)))
    kwargs.update(_hub_kwargs(source.kind))
    model = _load_weights(source.loc, source.kind, kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return model, tokenizer, source.info


def _gpu_free_bytes(device: str = "cuda") -> int:
    from diet_explore.core.batching import gpu_free_bytes

    return gpu_free_bytes(device)


def _source_digest(folder: Path) -> str | None:
    """The GGUF digest for converted built-ins; else a digest of the safetensors index/headers."""
    meta = folder / "diet_explore_source.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("gguf_sha256")
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for f in files:  # name + size + first MiB: cheap, and changes whenever the weights do in practice
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()
