"""Core: what every stage uses and that knows nothing of models or tasks (errors, atomic writes and
locks, JSON configs, the clock, asset locations, the forward-pass packer)."""
