"""Masking: per-task importance, selection, the DIET vote, baselines, mask files, agreement and stability.

Everything here reads a score cache; no model is loaded."""
