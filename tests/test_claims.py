"""The analysis plan and the claims it judges: kinds, families, preconditions, magnitude, equivalence,
and the check that runs are judged by the plan they were made under."""

import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from replication.config.plan import AnalysisPlan, ClaimPlan, content_hash, load_plan
from replication.config.report import load_report_spec
from replication.reporting import aggregate, claims, preregistration
from replication.reporting.stats import equivalence, holm, verdict
from replication.science.errors import ConfigError, DataError

from .conftest import REPO
from .test_report import COMMIT, EXPERIMENT, PLAN, SEEDS, results, write_plan  # noqa: F401


def _claims_md(config, out, tmp_path, scale="cpu"):
    path = tmp_path / "CLAIMS.md"
    code = claims.main([str(config), "--scale", scale, "--results", str(out.parent), "--out", str(path)])
    return code, path


def _rows(text):
    """id -> cells of every table row of a CLAIMS.md."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| C"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def claim(**fields):
    base = {"id": "X", "kind": "primary", "claim": "x", "metric": "m", "statistic": "relative"}
    return ClaimPlan.model_validate({**base, "paper_value": "q", "sesoi": 0.01, **fields})


def test_a_plan_holds_each_claim_to_what_its_statistic_and_kind_need():
    with pytest.raises(ValueError, match="needs a threshold"):
        claim(kind="descriptive", statistic="runs_at_least")
    with pytest.raises(ValueError, match="smallest effect of interest"):
        claim(sesoi=None)
    claim(kind="manipulation", sesoi=None)  # only a primary claim is tested for equivalence
    with pytest.raises(ValueError, match="does not declare"):
        AnalysisPlan.model_validate(
            {"experiment": "e", "claims": [{**PLAN["claims"][0], "precondition": "p"}]}
        )
    with pytest.raises(ValueError, match="repeat"):
        AnalysisPlan.model_validate({"experiment": "e", "claims": [PLAN["claims"][0]] * 2})


def test_a_plan_naming_what_its_experiment_lacks_is_a_config_error(results, tmp_path):  # noqa: F811
    config, _ = results
    spec = load_report_spec(config)
    bad = {**PLAN, "claims": [{**PLAN["claims"][0], "baseline": "ce_mbe", "figure": "nowhere.png"}]}
    write_plan(tmp_path, bad)
    with pytest.raises(ConfigError) as error:
        load_plan(tmp_path / "plan.yaml", spec)
    assert "method 'ce_mbe', which the experiment does not run" in str(error.value)
    assert "nowhere.png, which the experiment's figures: do not draw" in str(error.value)


def test_the_content_hash_reads_values_not_formatting_or_deviations():
    reordered = dict(reversed(list(PLAN.items())))
    assert content_hash(reordered) == content_hash(PLAN)
    assert content_hash({**PLAN, "deviations": [{"what": "x"}]}) == content_hash(PLAN)
    changed = {**PLAN, "claims": [{**PLAN["claims"][0], "sesoi": 0.02}, *PLAN["claims"][1:]]}
    assert content_hash(changed) != content_hash(PLAN)


def test_primary_claims_form_the_family_and_the_others_are_met_or_not(results, tmp_path):  # noqa: F811
    config, out = results
    code, path = _claims_md(config, out, tmp_path)
    assert code == 0
    rows = _rows(path.read_text())
    summary = aggregate.analysis_summary(
        load_report_spec(config), "cpu", load_plan(config.parent / "plan.yaml")[0], aggregate.read_tables(out)
    )
    plan = load_plan(config.parent / "plan.yaml")[0]
    judged = [claims.judge(c, summary) for c in plan.of_kind("primary")]
    adjusted = holm([j.p for j in judged])
    assert len(judged) == 3 and adjusted[0] != judged[0].p  # the family is the three primary claims
    for j, p_holm in zip(judged, adjusted):
        cells = rows[j.claim.id]
        assert cells[6] == f"{j.p:.2g} / {p_holm:.2g}"
        assert cells[7] == verdict(j.estimate, j.claim.direction, p=p_holm)
    assert rows["C2"][7] == "reproduced" and rows["C3"][7] == "opposite" and rows["C9"][7] == "inconclusive"
    # magnitude: C2's interval (about -2 %) does not hold the paper's -4.8 %; C9's wide one holds +1 %
    assert rows["C2"][9] == "no" and rows["C9"][9] == "yes" and rows["C3"][9] == "—"
    # equivalence only where the verdict is inconclusive
    assert rows["C2"][10].startswith("the whole interval lies beyond") and rows["C9"][10].startswith(
        "not shown equivalent within ±2 % (TOST p = "
    )
    assert rows["C9"][10].endswith("excludes changes below -8.0 % and above +7.9 %")
    # a descriptive condition is per run: gapt's 3, 4, 3, 4 phase changes all reach 2
    assert rows["C7"][5].startswith("4 of 4 runs at least 2 (3, 4, 3, 4)") and rows["C7"][7] == "met"


def test_a_significant_effect_within_the_smallest_effect_of_interest_says_so(results, tmp_path):  # noqa: F811
    config, out = results
    wide = {**PLAN["claims"][0], "sesoi": 0.05}  # C2's -2 % [-2.1, -1.9] lies within +-5 %
    write_plan(config.parent, {**PLAN, "claims": [wide, *PLAN["claims"][1:]]})
    _, path = _claims_md(config, out, tmp_path)
    row = _rows(path.read_text())["C2"]
    assert row[7] == "reproduced (smaller than the smallest effect of interest)" and row[8] == "reproduced"
    assert row[10].startswith("the whole effect lies within ±5 %, the smallest effect of interest (TOST p = ")
    (tmp_path / "narrow").mkdir()
    write_plan(config.parent)  # +-1 %: the whole interval lies beyond it
    _, path = _claims_md(config, out, tmp_path / "narrow")
    row = _rows(path.read_text())["C2"]
    assert (
        row[7] == "reproduced"
        and row[10] == "the whole interval lies beyond ±1 %, the smallest effect of interest"
    )


def test_a_manipulation_check_stays_out_of_the_family(results, tmp_path):  # noqa: F811
    config, out = results
    _, before = _claims_md(config, out, tmp_path)
    check = {**PLAN["claims"][1], "id": "C3m", "kind": "manipulation"}
    write_plan(config.parent, {**PLAN, "claims": [*PLAN["claims"], check]})
    (tmp_path / "again").mkdir()
    _, after = _claims_md(config, out, tmp_path / "again")
    old, new = _rows(before.read_text()), _rows(after.read_text())
    assert all(old[c][6] == new[c][6] for c in ("C2", "C3", "C9"))  # the same Holm p-values
    assert (
        new["C3m"][7] == "not met (the other way)"
        and new["C3m"][6] == f"{float(old['C3'][6].split()[0]):.2g}"
    )


def test_a_failed_precondition_makes_a_claim_not_testable_and_leaves_the_family(results, tmp_path):  # noqa: F811
    config, out = results
    needs = {"text": "ce learns", "metric": "final/val/ce", "method": "ce", "at_least": 3.1}  # seed 0 is 3.0
    on_c9 = [*PLAN["claims"][:2], {**PLAN["claims"][2], "precondition": "learns"}, PLAN["claims"][3]]
    plan = {**PLAN, "preconditions": {"learns": needs}, "claims": on_c9}
    write_plan(config.parent, plan)
    _, path = _claims_md(config, out, tmp_path)
    rows = _rows(path.read_text())
    assert (
        rows["C9"][7] == "not testable (learns: final/val/ce of ce is 3, 3.1, 3.2, 3.3, the plan needs 3.1)"
    )
    assert rows["C9"][6] == rows["C9"][8] == rows["C9"][9] == rows["C9"][10] == "—"
    # the family is C2 and C3 alone: C9's large p-value would raise their Holm p-values
    spec, (loaded, _) = load_report_spec(config), load_plan(config.parent / "plan.yaml")
    summary = aggregate.analysis_summary(spec, "cpu", loaded, aggregate.read_tables(out))
    p2, p3 = (claims.judge(c, summary).p for c in loaded.claims[:2])
    for row, p_holm in zip(("C2", "C3"), holm([p2, p3])):
        assert rows[row][6].split(" / ")[1] == f"{p_holm:.2g}"
    assert holm([p2, p3, 0.9])[:2] != holm([p2, p3])
    write_plan(config.parent, {**plan, "preconditions": {"learns": {**needs, "at_least": 3.0}}})
    _, path = _claims_md(config, out, tmp_path)
    assert _rows(path.read_text())["C9"][7] == "inconclusive"


def test_tost_is_two_one_sided_tests_of_the_library():
    x = np.array([0.004, -0.003, 0.006, 0.001, -0.002])
    expected = max(
        scipy_stats.ttest_1samp(x, -0.01, alternative="greater").pvalue,
        scipy_stats.ttest_1samp(x, 0.01, alternative="less").pvalue,
    )
    assert equivalence(x, 0.01, "difference") == pytest.approx(expected) and expected < 0.05
    logs = np.log([1.004, 0.997, 1.006, 1.001, 0.998])
    expected = max(
        scipy_stats.ttest_1samp(logs, math.log(0.99), alternative="greater").pvalue,
        scipy_stats.ttest_1samp(logs, math.log(1.01), alternative="less").pvalue,
    )
    assert equivalence(logs, 0.01, "relative") == pytest.approx(expected)
    d = np.array([0.01] * 9 + [-0.2])  # 9 of 10 inside +-0.05 on each side
    assert equivalence(d, 0.05, "robust_difference") == pytest.approx(
        scipy_stats.binomtest(9, 10, 0.5, alternative="greater").pvalue
    )
    assert equivalence([0.2, 0.3, 0.25], 0.01, "difference") > 0.5  # far outside: not equivalent


def test_c7_is_per_run_not_a_mean(results, tmp_path):  # noqa: F811
    config, out = results
    summary = pd.read_csv(out / "summary.csv")
    low = (summary.method == "gapt") & (summary.metric == "phase_changes") & (summary.seed == 0)
    summary.loc[low, "value"] = 1  # mean 3: above 2, but one run never alternates
    summary.to_csv(out / "summary.csv", index=False)
    _, path = _claims_md(config, out, tmp_path)
    row = _rows(path.read_text())["C7"]
    assert row[5].startswith("3 of 4 runs at least 2 (1, 4, 3, 4)") and row[7] == "not met"


def test_rq1_persistence_combines_the_runs_with_fisher_and_prints_the_runs_test_beside():
    rows = []
    for seed, (p_hi, p_lo, r_hi, r_lo) in enumerate(
        [(0.01, 0.99, 0.05, 0.95), (0.03, 0.97, 0.1, 0.9), (0.2, 0.8, 0.3, 0.7)]
    ):
        for key, value in (
            ("rq1/autocorr", 0.5),
            ("rq1/autocorr_shuffled", -0.02),
            ("rq1/autocorr_p_persistent", p_hi),
            ("rq1/autocorr_p_alternating", p_lo),
            ("rq1/sign_runs", 10.0),
            ("rq1/sign_runs_shuffled", 12.0),
            ("rq1/sign_runs_p_persistent", r_hi),
            ("rq1/sign_runs_p_alternating", r_lo),
        ):
            rows.append({"method": "ce", "seed": seed, "metric": key, "value": value})
    c1 = claim(metric="rq1/autocorr", statistic="persistence", method="ce", direction="increase", sesoi=None)
    j = claims.judge(c1, pd.DataFrame(rows))
    fisher = scipy_stats.combine_pvalues([0.01, 0.03, 0.2], method="fisher").pvalue
    assert j.p == pytest.approx(2 * fisher) and verdict(j.estimate, "increase") == "reproduced"
    runs = scipy_stats.combine_pvalues([0.05, 0.1, 0.3], method="fisher").pvalue
    assert f"10 sign changes per block against 12, p = {2 * runs:.2g} for persistence" in j.text
    assert "0.5 against -0.02 in random order" in j.text and "n=3" in j.text


def test_smoke_claims_are_not_evidence_and_skip_the_plan_check(results, tmp_path):  # noqa: F811
    config, out = results
    smoke = tmp_path / "results" / "smoke" / "demo"
    smoke.mkdir(parents=True)
    for name in ("summary", "runs", "phases", "alignment"):
        (smoke / f"{name}.csv").write_text((out / f"{name}.csv").read_text())
    write_plan(config.parent, commit="0000000")  # no deviation covers the runs' commit
    code, path = _claims_md(config, smoke, tmp_path, scale="smoke")
    text = path.read_text()
    assert code == 0 and "not evidence" in text and "| reproduced" not in text


def test_claims_refuse_runs_the_plan_does_not_cover(results, tmp_path, capsys):  # noqa: F811
    config, out = results
    changed = {**PLAN, "claims": [{**PLAN["claims"][0], "sesoi": 0.02}, *PLAN["claims"][1:]]}
    stale = {"runs_commit": COMMIT, "plan_sha256": content_hash(PLAN), "what": "written against the old plan"}
    (config.parent / "plan.yaml").write_text(yaml.safe_dump({**changed, "deviations": [stale]}))
    code, path = _claims_md(config, out, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and not path.exists()
    assert f"plan_sha256 {content_hash(changed)}" in err and "does not cover the plan as it is now" in err


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_runs_are_judged_by_the_plan_of_their_commit_or_a_deviation_says_why(tmp_path):
    repo = tmp_path / "repo"
    (repo / "experiments" / "demo").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    plan_file = repo / "experiments" / "demo" / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(PLAN))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "plan")
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    def problems(raw, commits=(commit,)):
        plan_file.write_text(yaml.safe_dump(raw))
        plan, plan_hash = load_plan(plan_file)
        return preregistration.problems(plan, plan_hash, plan_file, list(commits))

    assert problems(PLAN) == []  # the runs' own plan
    changed = {**PLAN, "claims": [{**PLAN["claims"][0], "sesoi": 0.02}, *PLAN["claims"][1:]]}
    [found] = problems(changed)
    assert f"at commit {commit[:12]}, where the runs were made, differs from the plan now" in found
    assert f"runs_commit {commit[:12]}, plan_sha256 {content_hash(changed)}" in found
    deviation = {"runs_commit": commit[:12], "plan_sha256": content_hash(changed), "what": "sesoi doubled"}
    assert problems({**changed, "deviations": [deviation]}) == []
    again = {**changed, "claims": [{**changed["claims"][0], "sesoi": 0.03}, *changed["claims"][1:]]}
    [found] = problems({**again, "deviations": [deviation]})
    assert "does not cover the plan as it is now" in found
    [found] = problems(PLAN, commits=["f" * 40])
    assert "is absent or git cannot show it" in found
    [found] = problems(PLAN, commits=[""])
    assert "outside a git clone" in found


def test_a_copy_of_a_plan_outside_any_checkout_is_read_from_the_suites_history(tmp_path):
    """The GPU check copies the experiment files to a scratch folder: their plan's history is the
    suite's own (experiments/<name>/plan.yaml at the runs' commit)."""
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", "HEAD:experiments/fineweb_pretrain/plan.yaml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    copy = tmp_path / "fineweb_pretrain" / "plan.yaml"
    copy.parent.mkdir()
    copy.write_text(shown)
    plan, plan_hash = load_plan(copy)
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    assert preregistration.plan_at_commit(copy, "fineweb_pretrain", head.strip()) == plan_hash
    assert preregistration.problems(plan, plan_hash, copy, [head.strip()]) == []


def test_a_plan_naming_a_metric_no_run_has_is_an_error_with_a_hint(results, tmp_path, capsys):  # noqa: F811
    config, out = results
    typo = {**PLAN["claims"][0], "metric": "final/val/cee"}
    write_plan(config.parent, {**PLAN, "claims": [typo, *PLAN["claims"][1:]]})
    code, _ = _claims_md(config, out, tmp_path)
    err = capsys.readouterr().err
    assert (
        code == 2 and "C2 names 'final/val/cee', which no gapt run has (did you mean 'final/val/ce'?)" in err
    )


def test_a_precondition_needs_every_seed_of_the_runs(results, tmp_path):  # noqa: F811
    config, out = results
    summary = pd.read_csv(out / "summary.csv")
    gone = (summary.method == "ce") & (summary.metric == "final/val/mbe") & (summary.seed == 2)
    summary[~gone].to_csv(out / "summary.csv", index=False)
    needs = {"text": "t", "metric": "final/val/mbe", "method": "ce", "at_least": 0.5}
    plan = {**PLAN, "preconditions": {"p": needs}, "claims": [{**PLAN["claims"][0], "precondition": "p"}]}
    write_plan(config.parent, plan)
    _, path = _claims_md(config, out, tmp_path)
    assert "none for seed 2" in _rows(path.read_text())["C2"][7]


def test_runs_without_a_commit_column_are_refused(tmp_path):
    (tmp_path / "runs.csv").write_text("method,seed\nce,0\n")
    with pytest.raises(DataError, match="has no column git_commit"):
        preregistration.run_commits(tmp_path / "runs.csv")
    (tmp_path / "runs.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        preregistration.run_commits(tmp_path / "runs.csv")


def test_derived_rows_of_an_older_summary_are_replaced_not_doubled(results):  # noqa: F811
    config, out = results
    frames = aggregate.read_tables(out)
    stale = pd.DataFrame(
        [{"method": "gapt", "seed": 0, "metric": "phases/compress_median_steps", "value": 99.0}]
    )
    frames["summary"] = pd.concat([frames["summary"], stale], ignore_index=True)
    rows = aggregate.analysis_summary(
        load_report_spec(config), "cpu", load_plan(config.parent / "plan.yaml")[0], frames
    )
    lengths = rows[(rows.metric == "phases/compress_median_steps") & (rows.seed == 0)]
    assert list(lengths.value) == [5.0]


def test_seeds_with_no_spread_are_judged_by_the_sign_tests():
    assert equivalence([0.001, 0.001, 0.001], 0.01, "difference") == pytest.approx(
        scipy_stats.binomtest(3, 3, 0.5, alternative="greater").pvalue
    )


def test_claims_of_a_method_the_scale_did_not_run_read_na_not_an_error(results, tmp_path):  # noqa: F811
    """The global config's ``methods`` can leave a method out (a smoke DAG of ce and gapt): its claims
    have no runs to judge."""
    config, out = results
    for name in ("summary", "runs", "phases", "alignment"):
        frame = pd.read_csv(out / f"{name}.csv")
        frame[frame.method != "gapt"].to_csv(out / f"{name}.csv", index=False)
    code, path = _claims_md(config, out, tmp_path)
    rows = _rows(path.read_text())
    assert code == 0 and rows["C2"][7] == "inconclusive" and rows["C2"][5].startswith("n/a")


def _table_rows(text):
    """(id, experiment, verdict, ours) of every claim row of a CLAIMS.md, in the tables' order."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| C"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((cells[0], cells[1], cells[7], cells[5]))
    return rows


def test_claims_json_holds_the_rows_of_claims_md_with_the_numbers_behind_them(results, tmp_path):  # noqa: F811
    config, out = results
    code, path = _claims_md(config, out, tmp_path)
    assert code == 0
    document = json.loads((tmp_path / "claims.json").read_text(encoding="utf-8"))
    records = document["claims"]
    # one record per table row, in CLAIMS.md's order, with the row's verdict and estimate as printed
    assert [(r["id"], r["experiment"], r["verdict"], r["ours"]) for r in records] == _table_rows(
        path.read_text()
    )
    assert [r["kind"] for r in records] == ["primary"] * 3 + ["descriptive"]
    plan_hash = content_hash(PLAN)
    assert document["plans"]["demo"] == {
        "file": "experiments/demo/plan.yaml",
        "sha256": plan_hash,
        "deviations": [{"runs_commit": COMMIT, "plan_sha256": plan_hash, "what": "test runs"}],
    }
    assert document["scale"] == "cpu" and document["experiments"] == ["demo"] and document["schema"] == 1
    assert document["run_commits"] == [COMMIT]
    assert all(r["plan_sha256"] == plan_hash and r["run_commits"] == [COMMIT] for r in records)
    assert all(r["scale"] == "cpu" for r in records)
    # the numbers are the judgement's, Holm's adjustment over the family of the three primary claims
    summary = aggregate.analysis_summary(
        load_report_spec(config), "cpu", load_plan(config.parent / "plan.yaml")[0], aggregate.read_tables(out)
    )
    plan = load_plan(config.parent / "plan.yaml")[0]
    judged = [claims.judge(c, summary) for c in plan.of_kind("primary")]
    adjusted = holm([j.p for j in judged])
    by_id = {r["id"]: r for r in records}
    for j, p_holm in zip(judged, adjusted):
        r = by_id[j.claim.id]
        assert (r["estimate"], r["low"], r["high"], r["n"]) == pytest.approx(
            (j.estimate.mean, j.estimate.low, j.estimate.high, j.estimate.n), rel=1e-11
        )
        assert r["p"] == pytest.approx(j.p, rel=1e-11) and r["p_holm"] == pytest.approx(p_holm, rel=1e-11)
        assert r["sesoi"] == j.claim.sesoi and r["paper_value"] == j.claim.paper_value
    # the magnitude and equivalence columns: C2's -2 % misses the paper's -4.8 %, C9's interval holds +1 %
    assert by_id["C2"]["interval_holds_paper"] is False and by_id["C9"]["interval_holds_paper"] is True
    assert by_id["C3"]["interval_holds_paper"] is None and by_id["C2"]["paper"] == -0.048
    assert by_id["C9"]["against_sesoi"].startswith("not shown equivalent within ±2 %")
    assert 0 < by_id["C9"]["tost_p"] < 1 and by_id["C2"]["raw_verdict"] == "reproduced"
    # a per-run condition: how many runs reach the threshold, of how many; no Holm p outside the family
    c7 = by_id["C7"]
    assert (c7["estimate"], c7["n"], c7["threshold"], c7["p_holm"], c7["verdict"]) == (4, 4, 2, None, "met")
    assert c7["figure"] is None and by_id["C2"]["figure"] == "demo/curves.png"


def test_claims_json_is_the_same_bytes_on_every_build_and_says_where_it_goes(results, tmp_path):  # noqa: F811
    config, out = results
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _claims_md(config, out, first)
    elsewhere = second / "deep" / "named.json"
    argv = [str(config), "--scale", "cpu", "--results", str(out.parent), "--out", str(second / "CLAIMS.md")]
    assert claims.main([*argv, "--json", str(elsewhere)]) == 0
    text = (first / "claims.json").read_bytes()
    assert text == elsewhere.read_bytes() and not (second / "claims.json").exists()
    assert (first / "CLAIMS.md").read_bytes() == (second / "CLAIMS.md").read_bytes()
    document = json.loads(text)  # keys sorted, so that a rebuild cannot reorder them
    assert text.decode() == json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_claims_json_keeps_the_tables_order_across_experiments(results, tmp_path):  # noqa: F811
    """Two experiments: every primary claim first, then the descriptive conditions, as CLAIMS.md's
    tables list them, not one experiment's claims after the other's."""
    config, out = results
    other = {**EXPERIMENT, "experiment": "other"}
    (config.parent.parent / "other").mkdir()
    (config.parent.parent / "other" / "config.yaml").write_text(yaml.safe_dump(other))
    write_plan(config.parent.parent / "other", {**PLAN, "experiment": "other"})
    shutil.copytree(out, out.parent / "other")
    path = tmp_path / "CLAIMS.md"
    argv = [str(config), str(config.parent.parent / "other" / "config.yaml"), "--scale", "cpu"]
    assert claims.main([*argv, "--results", str(out.parent), "--out", str(path)]) == 0
    records = json.loads((tmp_path / "claims.json").read_text())["claims"]
    assert [(r["id"], r["experiment"], r["verdict"], r["ours"]) for r in records] == _table_rows(
        path.read_text()
    )
    assert [(r["experiment"], r["kind"]) for r in records] == [
        *[("demo", "primary")] * 3,
        *[("other", "primary")] * 3,
        ("demo", "descriptive"),
        ("other", "descriptive"),
    ]


def test_a_not_testable_claim_has_no_p_values_and_a_condition_counts_its_runs(results, tmp_path):  # noqa: F811
    config, out = results
    need = {"learns": {"text": "ce learns", "method": "ce", "metric": "final/val/ce", "at_least": 99.0}}
    first = {**PLAN["claims"][0], "precondition": "learns"}
    four = {**PLAN["claims"][3], "threshold": 4}  # gapt changes phase 3, 4, 3, 4 times
    write_plan(config.parent, {**PLAN, "preconditions": need, "claims": [first, *PLAN["claims"][1:3], four]})
    code, _ = _claims_md(config, out, tmp_path)
    by_id = {r["id"]: r for r in json.loads((tmp_path / "claims.json").read_text())["claims"]}
    c2, c7 = by_id["C2"], by_id["C7"]
    assert code == 0 and c2["verdict"].startswith("not testable (learns")
    assert (c2["p"], c2["p_holm"], c2["raw_verdict"], c2["tost_p"], c2["interval_holds_paper"]) == (None,) * 5
    assert c2["estimate"] is not None  # the estimate is still shown, as in the table
    assert (c7["estimate"], c7["n"], c7["verdict"]) == (2, 4, "not met")
