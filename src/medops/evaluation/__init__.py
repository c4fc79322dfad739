"""Test-set evaluation: per-case metrics, predictions, figures, classical baseline."""
