"""Catastrophic forgetting and representation separation (experiment 3): the metrics and the task."""
