"""What the Snakemake DAG runs: its global config (``schema``) and its plan (``plan``)."""
