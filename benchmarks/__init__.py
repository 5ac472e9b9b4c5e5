"""Benchmarks of the suite: what GAPT costs and how close the suite runs to the machine's limit.

Every number is a ratio measured side by side in one process (or one DAG run), never a timed test.
"""
