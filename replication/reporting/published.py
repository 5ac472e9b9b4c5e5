"""The committed numbers for programs, with the standard library alone (no pandas, no torch):

    from replication.reporting.published import load_claims, load_summary
    c2 = next(c for c in load_claims("cpu") if c["id"] == "C2")  # estimate, low, high, verdict, ...
    rows = load_summary("fineweb_pretrain", "cpu")  # summary.csv: method, seed, metric, value, ...

``load_claims`` reads ``results/<scale>/claims.json``, the rows of CLAIMS.md with the numbers behind
them, which ``replication.reporting.claims`` writes beside CLAIMS.md (its ``record`` names every key
and its unit). ``load_summary`` reads ``results/<scale>/<experiment>/summary.csv``, one row per
method, seed and metric of what the runs wrote, the source of every table. ``root`` is the results
folder, by default this checkout's ``results/`` (where the package runs from a checkout), else
``results/`` of the working directory: an installed copy of the package holds no results.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "results"  # in a checkout; not in an installed copy
SCHEMA = 1  # the claims.json layout this module reads (replication.reporting.claims.SCHEMA)
CLAIMS_COMMAND = "`make replicate SCALE={scale}` makes it (the DAG's claims rule, beside CLAIMS.md)"
SUMMARY_COMMAND = "`make replicate SCALE={scale}` makes it (the DAG's aggregate rule)"


def _results(scale: str, root: Path | str | None) -> Path:
    if root is None:
        root = RESULTS if RESULTS.is_dir() else Path.cwd() / "results"
    return Path(root) / scale


def load_document(scale: str = "cpu", root: Path | str | None = None) -> dict[str, Any]:
    """The whole of ``results/<scale>/claims.json``: ``scale``, ``experiments``, ``plans`` (each
    experiment's plan file, content hash and deviations), ``run_commits`` and ``claims``."""
    path = _results(scale, root) / "claims.json"
    make = CLAIMS_COMMAND.format(scale=scale)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {make}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {make} again") from None
    found = document.get("schema") if isinstance(document, dict) else None
    if found != SCHEMA:
        raise ValueError(
            f"{path} has schema {found!r}, where this loader reads schema {SCHEMA}: in this checkout, "
            f"{make} again"
        )
    return document


def load_claims(scale: str = "cpu", root: Path | str | None = None) -> list[dict[str, Any]]:
    """The claims of a scale, one dict per row of its CLAIMS.md in the same order (primary claims,
    then manipulation checks, then descriptive conditions). A claim is named by ``experiment`` and
    ``id`` together: an id such as C7 recurs across experiments."""
    return load_document(scale, root)["claims"]


def load_summary(experiment: str, scale: str = "cpu", root: Path | str | None = None) -> list[dict[str, Any]]:
    """The rows of ``results/<scale>/<experiment>/summary.csv`` as dicts, ``seed`` an int and ``value``
    a float (NaN where a run recorded none); the other columns stay text."""
    folder = _results(scale, root)
    path = folder / experiment / "summary.csv"
    if not path.is_file():
        present = sorted(p.parent.name for p in folder.glob("*/summary.csv"))
        have = f" ({folder} has {', '.join(present)})" if present else ""
        raise FileNotFoundError(f"{path} is missing{have}: {SUMMARY_COMMAND.format(scale=scale)}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        row["value"] = float(row["value"]) if row["value"] != "" else float("nan")
    return rows
