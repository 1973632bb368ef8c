"""Evaluation: generate for a split and score it (evaluate.py), the metrics, the EA judge, the report."""
