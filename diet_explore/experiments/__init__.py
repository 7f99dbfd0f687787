"""Experiments: sweeps of methods × sparsities, their reports, the run store and the tuning loop."""
