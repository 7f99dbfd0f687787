"""Pruning: slice the kept hidden dimensions out of a model, and save it as a plain Hugging Face folder."""
