"""The committed numbers as programs read them: results/<scale>/claims.json and summary.csv through
replication.reporting.published (standard library only), and the suite's citation metadata."""

import csv
import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from replication.reporting import published

from .conftest import REPO

# what a reader citing a claim needs from its record (replication.reporting.claims.record names them all)
REQUIRED = {
    "experiment",
    "id",
    "kind",
    "statistic",
    "estimate",
    "low",
    "high",
    "n",
    "p",
    "p_holm",
    "verdict",
    "paper_value",
    "paper",
    "interval_holds_paper",
    "sesoi",
    "plan_sha256",
    "scale",
    "run_commits",
}


def _claims_md_rows(scale):
    """(experiment, id, verdict) of every claim row of the committed CLAIMS.md, in its order."""
    rows = []
    for line in (REPO / "results" / scale / "CLAIMS.md").read_text().splitlines():
        if line.startswith("| C"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((cells[1], cells[0], cells[7]))
    return rows


def test_the_committed_claims_load_with_every_field_and_match_claims_md():
    records = published.load_claims("cpu")
    assert [(r["experiment"], r["id"], r["verdict"]) for r in records] == _claims_md_rows("cpu")
    assert all(REQUIRED <= set(r) for r in records), [sorted(REQUIRED - set(r)) for r in records]
    document = published.load_document("cpu")
    assert document["experiments"] == _published()
    commits = {c for r in records for c in r["run_commits"]}
    assert commits == set(document["run_commits"]) and all(re.fullmatch(r"[0-9a-f]{40}", c) for c in commits)
    assert all(r["plan_sha256"] == document["plans"][r["experiment"]]["sha256"] for r in records)
    assert all(r["scale"] == "cpu" for r in records)
    relative = [r for r in records if r["kind"] == "primary" and r["statistic"] == "relative" and r["n"]]
    for r in relative:  # the fraction the table prints as a percentage, inside its interval
        assert r["low"] <= r["estimate"] <= r["high"]
        assert r["p_holm"] is None or r["p"] <= r["p_holm"]  # none where the precondition failed
        assert f"{100 * r['estimate']:+.1f} %" in r["ours"]
    assert relative


def _published() -> list[str]:
    """The experiments whose results the cpu scale holds, in the global config's order (a scale built
    one part at a time holds fewer than all)."""
    every = ["fineweb_pretrain", "arithmetic_ood", "forgetting_separation"]
    return [e for e in every if (REPO / "results" / "cpu" / e / "summary.csv").is_file()]


def test_the_committed_summary_loads_as_the_csv_holds_it():
    experiment = _published()[0]
    path = REPO / "results" / "cpu" / experiment / "summary.csv"
    with path.open(newline="") as handle:
        expected = list(csv.DictReader(handle))
    rows = published.load_summary(experiment, "cpu")
    assert len(rows) == len(expected) > 0
    assert rows[0]["seed"] == int(expected[0]["seed"]) and rows[0]["value"] == float(expected[0]["value"])
    assert {r["method"] for r in rows} >= {"ce", "gapt"} and all(isinstance(r["value"], float) for r in rows)


def test_a_missing_scale_or_experiment_names_the_path_and_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        published.load_claims("gpu1", root=tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'gpu1' / 'claims.json'} is missing: `make replicate SCALE=gpu1` makes it "
        "(the DAG's claims rule, beside CLAIMS.md)"
    )
    (tmp_path / "cpu" / "demo").mkdir(parents=True)
    (tmp_path / "cpu" / "demo" / "summary.csv").write_text("experiment,scale,method,seed,metric,value\n")
    with pytest.raises(
        FileNotFoundError, match=r"other[/\\]summary.csv is missing \(.* has demo\): `make replicate"
    ):
        published.load_summary("other", "cpu", root=tmp_path)
    assert published.load_summary("demo", "cpu", root=tmp_path) == []


def test_a_claims_file_of_another_layout_or_not_json_is_refused(tmp_path):
    path = tmp_path / "cpu" / "claims.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"schema": 2, "claims": []}))
    with pytest.raises(ValueError, match="has schema 2, where this loader reads schema 1"):
        published.load_claims("cpu", root=tmp_path)
    path.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        published.load_claims("cpu", root=tmp_path)


def test_the_loader_needs_neither_pandas_nor_numpy():
    code = (
        "import sys; sys.modules['pandas'] = sys.modules['numpy'] = None\n"
        "from replication.reporting.published import load_claims, load_summary\n"
        f"print(len(load_claims('cpu')), len(load_summary({_published()[0]!r}, 'cpu')))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    expected = [
        len(published.load_claims("cpu")),
        len(published.load_summary(_published()[0], "cpu")),
    ]
    assert shown.stdout.split() == [str(n) for n in expected]


def test_the_citation_names_the_version_the_package_has():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert str(citation["version"]) == project["version"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(citation["date-released"]))
    assert any("arXiv:2505.08727" in str(ref) for ref in citation["references"])
