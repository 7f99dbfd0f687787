"""Models: the built-in offline models, loading any model, and one adapter per model family."""
