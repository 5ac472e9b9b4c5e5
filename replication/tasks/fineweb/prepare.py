"""Prepare a token data set once, before any run reads it.

    python -m replication.tasks.fineweb.prepare experiments/NAME/config.yaml \\
        --dataset DATASET --out data/DATASET

reads the options of ``datasets.DATASET`` in the experiment file and writes the data set into the
output folder (``replication.tasks.fineweb.data``: its sources, layout and manifest); running the
command again with the same options does nothing once it has finished, and continues an interrupted
preparation from its last finished shard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from replication.config.base import format_validation_error
from replication.config.run import load_experiment
from replication.runtime import cli
from replication.science.errors import ConfigError
from replication.tasks.fineweb.data import DatasetOptions, prepare


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.tasks.fineweb.prepare", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--dataset", required=True, help="a key of the experiment's datasets:")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data/DATASET")
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="relative source paths start here (default: .)"
    )
    parser.add_argument("--threads", type=cli.positive_int, default=1, help="tokenizer threads (default: 1)")
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    spec = load_experiment(args.experiment)
    if args.dataset not in spec.datasets:
        raise ConfigError(
            f"{args.experiment} has no data set {args.dataset!r}; it has {sorted(spec.datasets)}"
        )
    try:
        options = DatasetOptions.model_validate(spec.datasets[args.dataset])
    except ValidationError as error:
        raise ConfigError(
            format_validation_error(error, f"{args.experiment}: datasets.{args.dataset}")
        ) from None
    show = {"auto": None, "bar": True, "lines": False}[args.progress]
    manifest = prepare(args.dataset, options, args.out, root=args.root, threads=args.threads, progress=show)
    counts = ", ".join(f"{split} {info['tokens']:,} tokens" for split, info in manifest["splits"].items())
    print(
        f"{args.out}: {counts} ({manifest['tokenizer']['name']} from {manifest['source']['kind']})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
