"""Resolve one run of an experiment and write its config into the run folder.

    python -m replication.training.configure experiments/NAME/config.yaml --scale S --method M --seed N \\
        --out scratch/NAME-M-N/

The written file is the whole resolved config (every default filled in); ``python -m
replication.training.train`` reads nothing else. ``--threads`` sets ``train.threads``, torch's CPU
threads, which are part of the run because they change a CPU run's numbers (default 1, as every
committed CPU run). An ``--out`` that ends in ``/`` or names an existing folder is the run folder:
the config goes into ``config.yaml`` there.

An existing file with the same content is left untouched, so its timestamp only moves when the run's
config really changed; one with another config is refused, naming the keys that differ, unless
``--force`` (a damaged one is written again). The DAG's runs folder (``runs/`` of the checkout)
takes configs only from the DAG, which passes ``--dag``: a run configured there by hand would be
newer than the committed results, and the next ``make replicate`` would aggregate again, training
every run it lacks.

A matched-dose control (``gapt_matched``, ...: ``Method.matches``) needs ``--schedule-from RUN_DIR``,
the finished run of the gated method it matches (the same experiment, scale and seed): its config then
holds that run's compress steps moved within each segment by a shift drawn for the seed
(``replication.science.schedule``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from replication.config.base import ConfigError, deep_merge
from replication.config.run import (
    RunConfig,
    Schedule,
    config_differences,
    resolve_run_config,
    validate_run_config,
    without_moved_keys,
    write_run_config,
)
from replication.runtime import cli
from replication.runtime.record import (
    CONFIG_NAME,
    METRICS_NAME,
    SOURCE_ROOT,
    SUMMARY_NAME,
    RunId,
    read_json,
    read_metrics,
)
from replication.science.errors import RunFolderError
from replication.science.methods import METHODS, default_layers
from replication.science.schedule import draw_shift, shifted

DAG_RUNS = SOURCE_ROOT / "runs"  # the DAG's runs folder (dag.schema.GlobalConfig.runs_dir's default)


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
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="train.threads (default: 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing config that differs")
    parser.add_argument("--dag", action="store_true", help="write into the DAG's runs folder (the DAG does)")
    parser.add_argument(
        "--schedule-from",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="a matched-dose control's gated run (finished), whose phases it takes, moved",
    )
    return cli.run(_main, parser.parse_args(argv))


def matched_schedule(config: RunConfig, gated_dir: Path) -> Schedule:
    """The schedule of the matched-dose control ``config`` from its gated run's folder: that run must
    have finished, be of the method matched, and share the control's experiment, scale and seed."""
    matches = METHODS[config.method].matches
    path = gated_dir / SUMMARY_NAME
    if not path.is_file():
        raise RunFolderError(
            f"{gated_dir} holds no {SUMMARY_NAME}: the {matches} run a matched-dose control copies must have "
            "finished; train it first"
        )
    summary = read_json(path)
    want = RunId(config.experiment, config.scale, matches, config.seed)
    got = RunId(summary.get("experiment"), summary.get("scale"), summary.get("method"), summary.get("seed"))
    if got != want:
        raise ConfigError(
            f"{path} is the run {got.path}; {config.method} seed {config.seed} copies {want.path}"
        )
    phases = {
        r["step"]: r["phase"] == "compress"
        for r in read_metrics(gated_dir / METRICS_NAME)
        if r["kind"] == "train"
    }
    steps = config.train.steps
    if sorted(phases) != list(range(steps)):
        raise RunFolderError(
            f"{gated_dir / METRICS_NAME} does not record the phase of each of the {steps} steps"
        )
    segments = config.task.segments(config.train)
    # gapt's compress phase cycles through its blocks: a shift of whole cycles keeps each step's block
    alternate = config.objective.alternate_layers or default_layers(config.model.n_blocks, "alternate")
    period = len(alternate) if METHODS[matches].compression == "alternate" else 1
    shifts = [draw_shift(b - a, period, config.seed, i) for i, (a, b) in enumerate(segments)]
    compress = shifted([phases[t] for t in range(steps)], segments, shifts)
    return Schedule(
        source=f"{want.path} (config {summary.get('config_digest')})", shifts=shifts, compress=compress
    )


def _same_run(existing: object, config: RunConfig) -> bool:
    """Whether a config file already holds this run: the same dict, or one written before a field was
    added (absent there, at its default now), as ``config.run.config_mismatch`` compares them."""
    if existing == config.to_dict():
        return True
    if not isinstance(existing, dict):
        return False
    try:
        return validate_run_config(without_moved_keys(existing)[0]).digest() == config.digest()
    except ConfigError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _main(args: argparse.Namespace) -> int:
    config = resolve_run_config(args.experiment, args.scale, args.method, args.seed)
    if args.threads is not None:
        config = validate_run_config(deep_merge(config.to_dict(), {"train": {"threads": args.threads}}))
    matches = METHODS[config.method].matches
    if matches and args.schedule_from is None:
        raise ConfigError(
            f"{config.method} is the matched-dose control of {matches}: pass --schedule-from with the folder "
            f"of the finished {matches} run of seed {config.seed}"
        )
    if args.schedule_from is not None:
        if not matches:
            raise ConfigError(f"--schedule-from is for a matched-dose control; {config.method} is not one")
        schedule = matched_schedule(config, args.schedule_from)
        config = validate_run_config({**config.to_dict(), "schedule": schedule.model_dump(mode="json")})
    out = output_path(args.out)
    if not args.dag and any(_inside(out, runs) for runs in (DAG_RUNS, Path.cwd() / "runs")):
        raise ConfigError(
            f"{out} is in {DAG_RUNS}, the DAG's runs folder: a run configured there by hand makes the next "
            "`make replicate` aggregate again and train every run it lacks. Configure it elsewhere (e.g. "
            f"--out scratch/{args.method}-seed{args.seed}/), or pass --dag to write there on purpose"
        )
    if out.is_file():
        existing = _existing(out)
        if _same_run(existing, config):
            print(f"{out}: already this config (digest {config.digest()}); left untouched", file=sys.stderr)
            return 0
        if isinstance(existing, dict) and not args.force:  # a damaged file is written again
            what = config_differences(existing, config.to_dict())
            raise ConfigError(
                f"{out} holds another config ({what}); pass --force to replace it (the run folder's "
                "metrics and checkpoint then belong to the old config: train refuses them), or choose "
                "another --out"
            )
    write_run_config(config, out)
    print(
        f"{out}: wrote {config.experiment} {config.scale} {config.method} seed {config.seed} "
        f"(digest {config.digest()})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
