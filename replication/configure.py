"""Resolve one run of an experiment and write its config into the run folder.

    python -m replication.configure experiments/NAME/config.yaml --scale S --method M --seed N \\
        --out runs/NAME/S/M/seedN/config.yaml

The written file is the whole resolved config (every default filled in); ``python -m
replication.train`` reads nothing else. An existing file with the same content is left untouched,
so its timestamp only moves when the run's config really changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from replication.config import ConfigError, resolve_run_config, write_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.configure", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="RUN_DIR/config.yaml")
    args = parser.parse_args(argv)
    try:
        config = resolve_run_config(args.experiment, args.scale, args.method, args.seed)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out.exists() and yaml.safe_load(args.out.read_text()) == config.to_dict():
        return 0
    write_run_config(config, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
