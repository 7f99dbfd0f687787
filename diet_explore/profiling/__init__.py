"""Profiling: run calibration samples through the model with hooks and write the score cache."""
