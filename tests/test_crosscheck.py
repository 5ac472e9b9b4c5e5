"""The cross-check of the documents against the data: CLAIMS.md must be what the committed summaries
give, the README may quote only those estimates, to the precision it prints, and a scale's runs must
come from one clean commit."""

import re
from pathlib import Path

import pandas as pd
import yaml

from replication.reporting import claims, crosscheck

from .test_report import results  # noqa: F401 (the fixture: a demo experiment aggregated at cpu scale)


def _quote(text):
    return crosscheck.Quote.parse(crosscheck.ESTIMATE.search(text))


def test_a_quote_matches_the_estimate_it_rounds_and_no_other():
    exact = _quote("-104.63 % [-110.2, -99.04]")
    assert _quote("−105 % [−110, −99]").quotes(exact)  # whole numbers, README's minus sign
    assert _quote("-104.6 % [-110.2, -99.0]").quotes(exact)
    assert not _quote("-104.7 % [-110.2, -99.0]").quotes(exact)  # one decimal: within 0.05 only
    assert not _quote("-104.6 % [-110.2, -99.1]").quotes(exact)
    assert _quote("0.387 [0.325, 0.45]").values == (0.387, 0.325, 0.45)


def test_a_row_covers_its_own_claims_only_and_only_its_ours_column_is_read():
    readme = (
        "| claim | paper | ours at `cpu` scale | note |\n|---|---|---|---|\n"
        "| C1 cycles | 1.0 [0.5, 1.5] | 2.0 [1.0, 3.0] | see 9.0 [8.0, 10.0] |\n"
    )
    estimates = {"C10": [_quote("2.0 [1.0, 3.0]")]}
    [problem] = crosscheck.readme_problems(readme, "cpu", estimates)  # C10 is not one of C1's claims
    assert problem.startswith("README row C1 quotes 2.0 [1.0, 3.0]")
    assert crosscheck.readme_problems(readme, "cpu", {"C1b": [_quote("2.0 [1.0, 3.0]")]}) == []


def _setup(tmp_path, config):
    results_dir = tmp_path / "results"
    assert (
        claims.main(
            [
                str(config),
                "--scale",
                "cpu",
                "--results",
                str(results_dir / "cpu"),
                "--out",
                str(results_dir / "cpu" / "CLAIMS.md"),
            ]
        )
        == 0
    )
    global_config = tmp_path / "cpu.yaml"
    global_config.write_text(
        yaml.safe_dump(
            {
                "scale": "cpu",
                "experiments": ["demo"],
                "results_dir": str(results_dir),
                "experiments_dir": str(tmp_path / "experiments"),
            }
        )
    )
    claims_md = (results_dir / "cpu" / "CLAIMS.md").read_text()
    c2 = re.search(r"\| C2 .*", claims_md).group(0)
    estimate = crosscheck.ESTIMATE.search(c2).group(0)
    return global_config, results_dir / "cpu" / "CLAIMS.md", estimate


def _readme(quote):
    return (
        "| claim | paper | ours at `cpu` scale (mean [95 % CI], n seeds) | verdict |\n|---|---|---|---|\n"
        f"| C2 GAPT lowers CE | −4.8 % | `gapt` {quote} (n=4) | reproduced |\n"
        "\nAfter the table: 1.0 [2.0, 3.0]\n"
    )


def test_documents_that_quote_the_data_pass_and_each_drift_is_named(results, tmp_path):  # noqa: F811
    config, _ = results
    global_config, claims_md, estimate = _setup(tmp_path, config)
    readme = tmp_path / "README.md"
    readme.write_text(_readme(estimate.replace("-", "−")))
    assert crosscheck.check(global_config, readme) == []
    assert crosscheck.main([str(global_config), "--readme", str(readme)]) == 0
    # a README number that is not the data's
    mean = crosscheck.Quote.parse(crosscheck.ESTIMATE.search(estimate)).values[0]
    wrong = estimate.replace(f"{mean:+.1f}", f"{mean + 0.3:+.1f}", 1)
    readme.write_text(_readme(wrong))
    [problem] = crosscheck.check(global_config, readme)
    assert problem.startswith(f"README row C2 quotes {wrong}, which no C2* claim of CLAIMS.md has")
    # the data's estimate, but of another claim than the row's
    readme.write_text(_readme(estimate).replace("| C2 GAPT lowers CE", "| C3 GAPT lowers MBE"))
    [problem] = crosscheck.check(global_config, readme)
    assert problem.startswith(f"README row C3 quotes {estimate}, which no C3* claim")
    # a CLAIMS.md edited by hand
    readme.write_text(_readme(estimate))
    claims_md.write_text(claims_md.read_text().replace(estimate, wrong))
    [problem] = crosscheck.check(global_config, readme)
    assert "CLAIMS.md:" in problem and wrong[:4] in problem.split("from the data")[0]
    assert estimate[:4] in problem.split("from the data")[1]
    assert crosscheck.main([str(global_config), "--readme", str(readme)]) == 1
    # a table.md whose text outlived its config (a scale description since rewritten)
    claims_md.write_text(claims_md.read_text().replace(wrong, estimate))
    table = claims_md.parent / "demo" / "table.md"
    table.write_text(table.read_text().replace("a small model", "a model that learns the task"))
    [problem] = crosscheck.check(global_config, readme)
    assert problem.startswith(f"{table}:3: committed ") and "a model that learns" in problem


def test_a_scale_the_readme_does_not_quote_is_checked_without_its_table_and_a_scale_without_results_is_named(
    results,  # noqa: F811
    tmp_path,
    capsys,
):
    """make crosscheck works at every scale: the README quotes one scale's numbers, so at another the
    claims, tables and provenance are checked and the README's table is not, saying so; a scale with
    no results is one line naming the missing file and the way out."""
    config, _ = results
    global_config, claims_md, estimate = _setup(tmp_path, config)
    readme = tmp_path / "README.md"
    readme.write_text("# no claims table here\n")
    notes = []
    assert crosscheck.check(global_config, readme, notes) == []
    assert notes == [f"{readme} quotes no numbers of the cpu scale: its claims table is not checked"]
    assert crosscheck.main([str(global_config), "--readme", str(readme)]) == 0
    assert "note: " in capsys.readouterr().err
    claims_md.unlink()
    assert crosscheck.main([str(global_config), "--readme", str(readme)]) == 2
    assert f"error: {claims_md} does not exist" in capsys.readouterr().err


def test_the_changed_verdicts_are_read_from_the_two_claims_files(results, tmp_path):  # noqa: F811
    config, _ = results
    _, claims_md, _ = _setup(tmp_path, config)
    new = crosscheck._claim_rows(claims_md.read_text())
    c2, c3 = new[("C2", "demo")], new[("C3", "demo")]
    old = (  # an earlier version: one table, no raw verdict column, a row that is gone since
        "| id | claim | experiment | measure | paper | ours (mean [95 % CI] (n seeds), scale) "
        "| verdict | figure |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| C2 | x | demo | m | p | -9.9 % [-12.0, -8.0] (n=4), cpu | opposite | — |\n"
        f"| C3 | x | demo | m | p | {c3['ours (cpu)']} | {c3['verdict']} | — |\n"
        "| C1c | x | demo | m | p | 0.05, cpu | inconclusive | — |\n"
    )
    table = crosscheck.verdict_changes(old, claims_md.read_text()).splitlines()
    assert table[2] == (
        f"| C2 | demo | -9.9 % [-12.0, -8.0] (n=4), cpu: opposite | {c2['ours (cpu)']}: {c2['verdict']} "
        f"(raw: {c2['raw verdict']}) |"
    )
    assert not any(row.startswith("| C3 |") for row in table)  # unchanged
    assert table[-1] == "| C1c | demo | 0.05, cpu: inconclusive | (no such row) |"
    assert {row.split(" | ")[0] for row in table[3:-1]} == {
        f"| {k[0]}" for k in new if k[0] not in ("C2", "C3")
    }
    assert all("| (no such row) |" in row for row in table[3:-1])


def test_runs_of_a_scale_must_come_from_one_clean_commit(results, tmp_path):  # noqa: F811
    config, out = results
    global_config, _, _ = _setup(tmp_path, config)
    plan = crosscheck.load_plan(global_config)
    assert crosscheck.provenance_problems(plan) == []
    runs_csv = tmp_path / "results" / "cpu" / "demo" / "runs.csv"
    runs = pd.read_csv(runs_csv, dtype={"git_commit": object, "git_dirty": object})
    runs.loc[1, "git_dirty"] = True
    runs.loc[3, "git_dirty"] = None  # git could not compare the tree with the commit
    runs.loc[2, "git_commit"] = "def456"
    runs.loc[4, "git_commit"] = None  # trained outside a git clone
    runs.to_csv(runs_csv, index=False)
    unknown, dirty, commits = crosscheck.provenance_problems(plan)
    assert unknown.startswith(f"{runs_csv}: 1 of {len(runs)} runs were trained with no known commit")
    assert unknown.endswith(f"first {runs.run_dir[4]}; train them again from a clean clone")
    assert dirty.startswith(f"{runs_csv}: 2 of {len(runs)} runs were trained from a tree that differed")
    assert f"first {runs.run_dir[1]};" in dirty
    assert commits.startswith("the runs of cpu were trained at 2 commits: abc1234 (demo); def456 (demo)")
    runs.drop(columns="git_dirty").to_csv(runs_csv, index=False)
    assert crosscheck.provenance_problems(plan) == [
        f"{runs_csv} has no column git_dirty: make it again with the DAG's aggregate rule"
    ]
    runs_csv.write_text("")
    assert crosscheck.provenance_problems(plan) == [
        f"{runs_csv} is empty: make it again with the DAG's aggregate rule"
    ]
    runs_csv.unlink()
    assert crosscheck.provenance_problems(plan) == [
        f"{runs_csv} is missing: make it with the DAG's aggregate rule"
    ]


def test_the_committed_results_say_what_the_readme_quotes(monkeypatch):
    """The real documents against the real data: every committed scale's CLAIMS.md is what its
    summaries give, README.md quotes only those estimates, and its runs are of one clean commit."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the global configs name results/ relative to the repository
    readme = (root / "README.md").read_text()
    scales = re.findall(r"ours at `(\w+)` scale", readme)  # the scales whose claims the README quotes
    assert scales, "README.md has no claims table"
    for scale in scales:
        assert (root / "results" / scale / "CLAIMS.md").is_file(), (
            f"README quotes {scale}, which has no results"
        )
        assert crosscheck.check(root / "config" / f"{scale}.yaml", root / "README.md") == []


def test_the_readme_quotes_each_plans_hash_as_claims_md_gives_it():
    claims_md = (
        "| plan | content hash (SHA-256) | deviations |\n|---|---|---|\n"
        f"| [demo](../../experiments/demo/plan.yaml) | `{'ab' * 32}` | none |\n"
    )
    assert crosscheck.plan_hash_problems("plans: `demo` abababababab.", claims_md) == []
    [problem] = crosscheck.plan_hash_problems("plans: `demo` abababababac.", claims_md)
    assert problem == f"README quotes demo's plan hash abababababac, where CLAIMS.md has {'ab' * 32}"
    [problem] = crosscheck.plan_hash_problems("plans: `other` abababababab.", claims_md)
    assert "where CLAIMS.md has none" in problem
