"""Do the documents say what the data say? For one scale's committed results:

    python -m replication.reporting.crosscheck config/cpu.yaml [--readme README.md]

1. ``CLAIMS.md`` and ``claims.json`` are made again by ``replication.reporting.claims`` from the
   committed ``results/<scale>/<experiment>/summary.csv`` files (the experiments of the global
   config, in its order, as the DAG's ``claims`` rule does) and must equal the committed files line
   for line.
2. Every estimate the README's claims table quotes as ``mean [low, high]`` in its "ours at
   `<scale>` scale" column must be the estimate of a claim of ``CLAIMS.md`` whose id starts with the
   row's id (the row C4 covers C4, C4e, C4j, C4b, ..., not C40), or a change the scale's study reports
   (``results/<scale>/study/*/sensitivity.csv`` and ``scaling.csv``), to the precision the README
   prints: a value quoted with one decimal may differ by at most 0.05 from the claim's.
3. Every run in the experiments' ``runs.csv`` was trained at one and the same commit, from a clean
   tree (``git_dirty`` false): the scale's numbers are those of one commit's code.
4. Every analysis-plan hash the README quotes (`` `experiment` `` and the first 12 hex digits) starts
   the hash CLAIMS.md gives for that experiment's plan.
5. Each experiment's ``table.md`` is made again from its committed CSVs
   (``replication.reporting.aggregate --from-csv``) and must equal the committed file: no text of a
   generated file outlives the config or the numbers it was made from.

Exits 1 naming every difference, so that the README and CLAIMS.md cannot drift from the data.

    python -m replication.reporting.crosscheck config/cpu.yaml --changes-from OLD/CLAIMS.md

prints instead the claims whose verdict differs between an earlier CLAIMS.md and the committed one
(a markdown table with both estimates), for a "changes since" section read from the files.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from replication.config.base import load_yaml
from replication.dag.plan import TABLES, Plan
from replication.dag.schema import resolve_global_config
from replication.reporting import aggregate, claims
from replication.runtime import cli
from replication.science.errors import DataError

NUMBER = r"[+\-−]?\d+(?:\.\d+)?"
ESTIMATE = re.compile(rf"({NUMBER})(?: %)? \[({NUMBER}), ({NUMBER})\]")
CLAIM_ID = re.compile(r"^(C\d+[a-z]*)")


@dataclass(frozen=True)
class Quote:
    """One ``mean [low, high]`` as printed: the numbers and how many decimals each shows."""

    text: str
    values: tuple[float, float, float]
    decimals: tuple[int, int, int]

    @classmethod
    def parse(cls, match: re.Match) -> Quote:
        numbers = [g.replace("−", "-") for g in match.groups()]
        decimals = tuple(len(n.split(".")[1]) if "." in n else 0 for n in numbers)
        return cls(match.group(0), tuple(float(n) for n in numbers), decimals)  # type: ignore[arg-type]

    def quotes(self, exact: Quote) -> bool:
        """Whether this is ``exact`` rounded to the decimals printed here."""
        return all(
            abs(q - e) <= 0.5 * 10**-d + 1e-9 for q, e, d in zip(self.values, exact.values, self.decimals)
        )


def _tables(text: str, header_marker: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table whose header line contains header_marker: (header cells, rows of cells)."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("|") and header_marker in line:
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))])
            found.append((header, rows))
    if not found:
        raise DataError(f"no table with {header_marker!r} in its header")
    return found


def _table(text: str, header_marker: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table whose header line contains header_marker."""
    return _tables(text, header_marker)[0]


def _claim_rows(claims_md: str) -> dict[tuple[str, str], dict[str, str]]:
    """(id, experiment) -> the row's cells by header name, of every table of a CLAIMS.md of any
    version."""
    return {
        (row[0], row[header.index("experiment")]): dict(zip(header, row))
        for header, rows in _tables(claims_md, "| id ")
        for row in rows
        if len(row) == len(header)
    }


def claim_estimates(claims_md: str) -> dict[str, list[Quote]]:
    """Claim id -> the estimates of its rows in CLAIMS.md (an id may recur across experiments)."""
    found: dict[str, list[Quote]] = {}
    for (claim, _), cells in _claim_rows(claims_md).items():
        match = ESTIMATE.search(next(text for name, text in cells.items() if name.startswith("ours")))
        if match:
            found.setdefault(claim, []).append(Quote.parse(match))
    return found


def study_estimates(results: Path) -> list[Quote]:
    """The changes against ce the scale's studies report (``replication.reporting.study``), as quotes
    at full precision: a README row may cite them beside its claims."""
    found = []
    for path in sorted(results.glob("study/*/*.csv")):
        frame = pd.read_csv(path)
        for prefix in ("", "ce_", "mbe_"):
            columns = [f"{prefix}change_percent", f"{prefix}low_percent", f"{prefix}high_percent"]
            if all(c in frame for c in columns):
                for values in frame[columns].dropna().itertuples(index=False):
                    text = "{:+} % [{:+}, {:+}]".format(*values)
                    found.append(Quote(text, tuple(float(v) for v in values), (17, 17, 17)))
    return found


def readme_problems(
    readme: str, scale: str, estimates: dict[str, list[Quote]], studies: list[Quote] = ()
) -> list[str]:
    """Every quote of the README's claims table that no claim of its row's id has, nor a study."""
    header, rows = _table(readme, f"ours at `{scale}` scale")
    ours = next(i for i, name in enumerate(header) if name.startswith("ours at"))
    problems = []
    for row in rows:
        row_id = CLAIM_ID.match(row[0])
        if row_id is None or len(row) <= ours:
            continue
        of_row = re.compile(rf"{re.escape(row_id.group(1))}(?!\d)")  # C1 covers C1a, C1b, not C10
        candidates = [q for claim, quotes in estimates.items() if of_row.match(claim) for q in quotes]
        for match in ESTIMATE.finditer(row[ours]):
            quote = Quote.parse(match)
            if not any(quote.quotes(exact) for exact in [*candidates, *studies]):
                nearest = ", ".join(q.text for q in candidates) or "none"
                problems.append(
                    f"README row {row_id.group(1)} quotes {quote.text}, which no {row_id.group(1)}* "
                    f"claim of CLAIMS.md has (theirs: {nearest})"
                )
    return problems


PLAN_HASH = re.compile(r"`(\w+)`\s+([0-9a-f]{12})\b")


def plan_hash_problems(readme: str, claims_md: str) -> list[str]:
    """Every analysis plan hash the README quotes (`` `experiment` 0123456789ab ``) that is not the
    start of the hash CLAIMS.md gives for that experiment's plan."""
    hashes = {row[0].split("]")[0].lstrip("["): row[1].strip("`") for row in _table(claims_md, "| plan ")[1]}
    return [
        f"README quotes {experiment}'s plan hash {quoted}, where CLAIMS.md has "
        f"{hashes.get(experiment, 'none')}"
        for experiment, quoted in PLAN_HASH.findall(readme)
        if not hashes.get(experiment, "").startswith(quoted)
    ]


def remade_claims(plan: Plan) -> tuple[str, str]:
    """CLAIMS.md and claims.json as replication.reporting.claims makes them from the committed
    summaries."""
    with tempfile.TemporaryDirectory() as tmp:
        out, out_json = Path(tmp) / "CLAIMS.md", Path(tmp) / "claims.json"
        configs = [plan.experiment_config(e) for e in plan.published()]
        results = f"{plan.config['results_dir']}/{plan.scale}"
        argv = [
            *configs,
            "--scale",
            plan.scale,
            "--results",
            results,
            "--out",
            str(out),
            "--json",
            str(out_json),
        ]
        if claims.main(argv) != 0:
            raise DataError(f"CLAIMS.md could not be made from {results}; the message above says why")
        return out.read_text(), out_json.read_text(encoding="utf-8")


def table_problems(plan: Plan) -> list[str]:
    """The committed table.md files that differ from those made again from their CSVs."""
    problems = []
    for experiment in plan.published():
        results = Path(plan.results_dir(experiment))
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("summary", "runs", "phases", "alignment"):
                source = results / TABLES[name]
                if source.is_file():
                    shutil.copyfile(source, Path(tmp) / source.name)
            argv = [plan.experiment_config(experiment), "--scale", plan.scale, "--out", tmp, "--from-csv"]
            if aggregate.main(argv) != 0:
                problems.append(
                    f"{results}/table.md could not be made from its CSVs; the message above says why"
                )
                continue
            problems += claims_problems(results / "table.md", (Path(tmp) / "table.md").read_text(), shown=2)
    return problems


def claims_problems(committed: Path, remade: str, shown: int = 5) -> list[str]:
    """The committed CLAIMS.md's (or table.md's) lines that differ from those made from the data (the
    first few, and how many in all)."""
    if not committed.is_file():
        return [f"{committed} is missing: make it with the DAG"]
    ours, theirs = committed.read_text().splitlines(), remade.splitlines()
    differ = [
        i
        for i in range(max(len(ours), len(theirs)))
        if i >= len(ours) or i >= len(theirs) or ours[i] != theirs[i]
    ]
    problems = []
    for i in differ[:shown]:
        a = ours[i] if i < len(ours) else ""
        b = theirs[i] if i < len(theirs) else ""
        at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        start = max(0, at - 30)  # where the two lines part, with some context
        problems.append(
            f"{committed}:{i + 1}: committed {a[start : at + 50]!r}, from the data {b[start : at + 50]!r}"
        )
    if len(differ) > shown:
        problems.append(
            f"{committed}: {len(differ) - shown} more differing lines (of {len(theirs)} made from the data)"
        )
    return problems


def provenance_problems(plan: Plan) -> list[str]:
    """Runs of the scale with no known commit or trained from a tree that differed from it (one line
    per runs.csv, naming the first such run and how many), and the commits, if more than one, that
    the scale's runs were trained at."""
    problems, commits = [], {}
    for experiment in plan.published():
        path = Path(plan.results_dir(experiment)) / "runs.csv"
        try:
            runs = pd.read_csv(path, dtype={"git_commit": str, "git_dirty": str}, keep_default_na=False)
        except FileNotFoundError:
            problems.append(f"{path} is missing: make it with the DAG's aggregate rule")
            continue
        except pd.errors.EmptyDataError:
            problems.append(f"{path} is empty: make it again with the DAG's aggregate rule")
            continue
        missing = [c for c in ("run_dir", "git_commit", "git_dirty") if c not in runs]
        if missing:
            problems.append(
                f"{path} has no column {', '.join(missing)}: make it again with the DAG's aggregate rule"
            )
            continue
        unknown = runs[runs.git_commit == ""]
        dirty = runs[(runs.git_commit != "") & (runs.git_dirty != "False")]
        for rows, what in (
            (unknown, "with no known commit (trained outside a git clone)"),
            (dirty, "from a tree that differed from its commit, or could not be compared with it"),
        ):
            if len(rows):
                problems.append(
                    f"{path}: {len(rows)} of {len(runs)} runs were trained {what}, first "
                    f"{rows.run_dir.iloc[0]}; train them again from a clean clone"
                )
        for commit in runs.git_commit[runs.git_commit != ""].unique():
            commits.setdefault(commit, set()).add(experiment)
    if len(commits) > 1:
        where = "; ".join(f"{commit[:12]} ({', '.join(sorted(e))})" for commit, e in sorted(commits.items()))
        problems.append(
            f"the runs of {plan.scale} were trained at {len(commits)} commits: {where}; "
            'rebuild the scale from one clean clone (docs/running.md, "Running a scale")'
        )
    return problems


def load_plan(config_path: Path) -> Plan:
    return Plan(resolve_global_config(load_yaml(config_path))).check()


def check(config_path: Path, readme: Path, notes: list[str] | None = None) -> list[str]:
    """The differences between the documents and the data; ``notes`` receives what was not checked
    and why (a README that quotes no numbers of this scale; the provenance of a smoke scale)."""
    notes = [] if notes is None else notes
    plan = load_plan(config_path)
    committed = Path(plan.claims_output())
    if not committed.is_file():
        raise DataError(
            f"{committed} does not exist: the {plan.scale} scale has no results to check here. Make them "
            f"first (make replicate SCALE={plan.scale}), or check a scale whose results are committed"
        )
    pending = [e for e in plan.specs if e not in plan.published()]
    if pending:
        notes.append(
            f"{', '.join(pending)}: no results at the {plan.scale} scale yet (a scale built one part at a "
            "time, make replicate PART=...): not checked"
        )
    remade, remade_json = remade_claims(plan)
    problems = claims_problems(committed, remade) + claims_problems(
        committed.with_name("claims.json"), remade_json
    )
    problems += table_problems(plan)
    text = readme.read_text()
    if f"ours at `{plan.scale}` scale" in text:
        studies = study_estimates(Path(plan.config["results_dir"]) / plan.scale)
        problems += readme_problems(text, plan.scale, claim_estimates(remade), studies)
        problems += plan_hash_problems(text, remade)
    else:
        notes.append(f"{readme} quotes no numbers of the {plan.scale} scale: its claims table is not checked")
    if plan.scale == "smoke":
        notes.append("smoke runs are no evidence: whether they come from one clean commit is not checked")
        return problems
    return problems + provenance_problems(plan)


def _headline(cells: dict[str, str]) -> str:
    """A row's headline verdict: the Holm verdict where a table of an earlier version shows it beside
    the raw one, else its verdict column."""
    return cells.get("verdict (Holm)", cells["verdict"])


def _reading(cells: dict[str, str]) -> str:
    ours = next(text for name, text in cells.items() if name.startswith("ours"))
    raw = cells["verdict"] if "verdict (Holm)" in cells else cells.get("raw verdict")
    return f"{ours}: {_headline(cells)}" + (f" (raw: {raw})" if raw and raw != "—" else "")


def verdict_changes(old_md: str, new_md: str) -> str:
    """A markdown table of the claims whose headline verdict differs between two CLAIMS.md, with both
    estimates, and of the rows one has and the other not: the rows of a "changes since" section, read
    from the files rather than copied by hand."""
    old, new = _claim_rows(old_md), _claim_rows(new_md)
    lines = ["| claim | experiment | before | after |", "|---|---|---|---|"]
    for key in [k for k in new if k in old] + [k for k in new if k not in old]:
        after, before = new[key], old.get(key)
        if before is None:
            lines.append(f"| {key[0]} | {key[1]} | (no such row) | {_reading(after)} |")
        elif _headline(before) != _headline(after):
            lines.append(f"| {key[0]} | {key[1]} | {_reading(before)} | {_reading(after)} |")
    lines += [f"| {k[0]} | {k[1]} | {_reading(old[k])} | (no such row) |" for k in old if k not in new]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.crosscheck", __doc__)
    parser.add_argument("config", type=Path, help="the global config of the scale, e.g. config/cpu.yaml")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--changes-from",
        type=Path,
        metavar="OLD_CLAIMS_MD",
        help="print the claims whose verdict differs from this earlier CLAIMS.md, and check nothing",
    )
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    if args.changes_from is not None:
        plan = load_plan(args.config)
        print(verdict_changes(args.changes_from.read_text(), Path(plan.claims_output()).read_text()), end="")
        return 0
    notes: list[str] = []
    problems = check(args.config, args.readme, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"crosscheck: {len(problems)} difference(s) between the documents and the data")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
