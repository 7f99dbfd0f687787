"""core.numbers: one formatter for printed numbers (points, perplexities, no -0.0)."""

import math

from diet_explore.core.numbers import MISSING, number, perplexity, points


def test_rounded_zero_has_no_sign():
    assert number(-0.04) == number(0.04) == number(-0.0) == "0.0"
    assert number(-0.04, signed=True) == number(0.04, signed=True) == "0.0"
    assert points(-0.0004, signed=True) == "0.0" and points(-0.0006, signed=True) == "-0.1"


def test_points_perplexity_and_missing():
    assert points(0.62) == "62.0" and points(0.025, signed=True) == "+2.5" and points(-0.25, signed=True) == "-25.0"
    assert points(-0.25, signed=True, minus="\u2212") == "\u221225.0"
    assert perplexity(274.02920619803115) == "274.0" and perplexity(29.44) == "29.4"
    assert number(None) == perplexity(math.nan) == points(None) == MISSING


def test_paired_estimates_and_report_cells_use_it():
    from diet_explore.evaluation.decision import format_estimate

    assert format_estimate(-0.0001, -0.0004, 0.05) == "0.0 [0.0, +5.0]"  # was "−0.0 [−0.0, +5.0]"
    assert format_estimate(-0.02, -0.05, 0.01, minus="-") == "-2.0 [-5.0, +1.0]"
