"""Evaluation: lm-eval-compatible log-likelihood scoring, the metrics and CIs, and the evaluation cache."""
