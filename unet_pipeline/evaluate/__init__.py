"""Evaluation: per-case metrics and their summary, label volumes."""
