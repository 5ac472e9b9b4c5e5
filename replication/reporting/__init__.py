"""Reporting: finished runs -> tables, statistics, claims, figures, and the DAG's plan of what to run."""
