"""tools/first_token.py: the statistics' mask it profiles with leaves out each row's first real token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "first_token.py"


def _tool():
    spec = importlib.util.spec_from_file_location("first_token_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_first_real_token_of_every_row_leaves_the_mask_whatever_the_padding_side():
    tool = _tool()
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert tool.without_first_token(right).tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert tool.without_first_token(left).tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    assert right.tolist()[0] == [1, 1, 1, 0]  # the model's own mask is untouched


def test_the_profile_wrapper_is_removed_after_the_run(monkeypatch, tmp_path):
    from diet_explore.profiling import hooks

    tool = _tool()
    before = hooks.ActivationStats.begin_batch
    seen = []

    def fake_profile(config, out):
        stats = hooks.ActivationStats(1, 2, ["residual"])
        stats.begin_batch(torch.tensor([[1, 1, 1]]))
        seen.append((config.sites, config.generic, stats._mask.tolist()))

    monkeypatch.setattr(tool, "profile", fake_profile)
    cache = type(
        "C", (), {"manifest": {"config": {"samples": 7, "seed": 3, "max_length": 64}}, "model_name": "m", "task_names": ["rte"]}
    )()
    tool.profile_without_first_token(cache, tmp_path)
    assert seen == [(["residual"], False, [[0.0, 1.0, 1.0]])]
    assert hooks.ActivationStats.begin_batch is before
