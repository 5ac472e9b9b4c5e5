"""Resolve one run of an experiment and write its config into the run folder.

    python -m replication.training.configure experiments/NAME/config.yaml --scale S --method M --seed N \\
        --out runs/NAME/S/M/seedN/config.yaml

The written file is the whole resolved config (every default filled in); ``python -m
replication.training.train`` reads nothing else. An existing file with the same content is left untouched,
so its timestamp only moves when the run's config really changed. An ``--out`` that ends in ``/`` or
names an existing folder is the run folder: the config goes into ``config.yaml`` there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from replication.config.run import resolve_run_config, write_run_config
from replication.runtime import cli
from replication.runtime.record import CONFIG_NAME


def output_path(out: str) -> Path:
    """--out as given, or RUN_DIR/config.yaml when it names a folder (a trailing / or an existing one)."""
    path = Path(out)
    if out.endswith((os.sep, "/")) or path.is_dir():
        return path / CONFIG_NAME
    return path


def _existing(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None  # damaged: written again


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.training.configure", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, help="RUN_DIR/config.yaml, or the folder RUN_DIR/")
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    config = resolve_run_config(args.experiment, args.scale, args.method, args.seed)
    out = output_path(args.out)
    if out.is_file() and _existing(out) == config.to_dict():
        return 0
    write_run_config(config, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
