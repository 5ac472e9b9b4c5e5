"""Matched-dose controls: the schedule they take from their gated run, its config, and the runs."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from replication.config.base import ConfigError
from replication.config.run import resolve_run_config, validate_run_config
from replication.dag.plan import Plan
from replication.dag.schema import resolve_global_config
from replication.runtime.record import read_metrics
from replication.science.errors import RunFolderError
from replication.science.methods import METHODS
from replication.science.schedule import draw_shift, mask, ranges, shifted
from replication.training import configure
from replication.training.configure import matched_schedule
from replication.training.train import train

from .conftest import REPO

FORGETTING = REPO / "experiments" / "forgetting_separation" / "config.yaml"


def test_the_schedule_moves_each_segment_by_half_its_length():
    phases = [False] * 10
    phases[1:3] = [True, True]  # steps 1, 2
    phases[7] = True
    # one segment of 10 shifted by 5: step t takes the phase of step (t - 5) mod 10
    assert shifted(phases, [(0, 10)], [5]) == [(2, 3), (6, 8)]
    # two segments of 6 and 4 shifted by 3 and 2: (t - 3) mod 6, then 6 + (t - 6 - 2) mod 4
    assert shifted(phases, [(0, 6), (6, 10)], [3, 2]) == [(4, 6), (9, 10)]
    with pytest.raises(ValueError, match="do not cover"):
        shifted(phases, [(0, 6), (7, 10)], [3, 2])
    with pytest.raises(ValueError, match="one shift each"):
        shifted(phases, [(0, 10)], [3, 2])


def test_a_shift_is_drawn_per_seed_within_the_middle_half_in_whole_periods():
    shifts = [draw_shift(1000, 4, seed, 0) for seed in range(200)]
    assert all(248 <= s <= 750 and s % 4 == 0 for s in shifts)
    assert len(set(shifts)) > 50  # spread over seeds, not one offset
    assert draw_shift(1000, 4, 7, 0) == draw_shift(1000, 4, 7, 0) != draw_shift(1000, 4, 7, 1)
    assert draw_shift(6, 4, 0, 0) == 4  # at least one period


def test_the_schedule_keeps_the_dose_of_every_segment_and_the_phase_lengths():
    phases = [s % 17 in (3, 4, 5) or s % 29 == 11 for s in range(200)]
    segments = [(0, 120), (120, 200)]
    moved = mask(shifted(phases, segments, [60, 40]), 200)
    for a, b in segments:
        assert sum(moved[a:b]) == sum(phases[a:b])  # the same number of compress steps per segment
        assert moved[a:b] != phases[a:b]  # at other times
    # in one segment, a phase that does not straddle the wrap keeps its length: the same lengths
    one = [False] * 50 + [True] * 7 + [False] * 20 + [True] + [False] * 30 + [True] * 3 + [False] * 89
    assert Counter(b - a for a, b in ranges(one)) == Counter(
        b - a for a, b in shifted(one, [(0, 200)], [100])
    )
    assert ranges([True, True, False, True]) == [(0, 2), (3, 4)]
    assert mask([(1, 3)], 4) == [False, True, True, False]


def test_every_control_matches_a_gated_method_of_its_compression():
    controls = {m.name: m.matches for m in METHODS.values() if m.matches}
    assert controls == {
        "gapt_matched": "gapt",
        "gapt_joint_matched": "gapt_joint",
        "gapt_smoothed_matched": "gapt_smoothed",
    }
    for control, gated in controls.items():
        assert METHODS[gated].gated and not METHODS[control].gated
        assert METHODS[gated].compression == METHODS[control].compression


def test_a_schedule_belongs_to_a_control_and_a_smoothed_gate_to_smoothed_inputs():
    gapt = resolve_run_config(FORGETTING, "smoke", "gapt", 0).to_dict()
    with pytest.raises(ConfigError, match="not one"):
        validate_run_config({**gapt, "schedule": {"source": "x", "compress": [[0, 2]]}})
    control = resolve_run_config(FORGETTING, "smoke", "gapt_matched", 0).to_dict()
    with pytest.raises(ConfigError, match="sorted, disjoint"):
        validate_run_config({**control, "schedule": {"source": "x", "compress": [[4, 6], [5, 8]]}})
    with pytest.raises(ConfigError, match="ends after"):
        validate_run_config({**control, "schedule": {"source": "x", "compress": [[170, 181]]}})
    smoothed = resolve_run_config(FORGETTING, "smoke", "gapt_smoothed", 0).to_dict()
    assert smoothed["gapt"]["smoothing"] > 0
    with pytest.raises(ConfigError, match="smoothed gate"):
        validate_run_config({**smoothed, "gapt": {**smoothed["gapt"], "smoothing": 0.0}})


def test_an_experiment_names_the_method_a_control_matches():
    from replication.config.run import ExperimentSpec

    with pytest.raises(ValidationError, match="need the methods they match"):
        ExperimentSpec.model_validate(
            {"experiment": "x", "methods": {"ce": {}, "gapt_matched": {}}, "scales": {}}
        )


@pytest.fixture(scope="module")
def gated_and_control(tmp_path_factory):
    """The smoke forgetting gapt run and its control, configured through the command as the DAG does."""
    root = tmp_path_factory.mktemp("runs")
    gapt = root / "gapt"
    assert (
        configure.main(
            [str(FORGETTING), "--scale", "smoke", "--method", "gapt", "--seed", "1", "--out", f"{gapt}/"]
        )
        == 0
    )
    train(resolve_run_config(FORGETTING, "smoke", "gapt", 1), gapt, show_progress=False)
    control = root / "control"
    argv = [
        str(FORGETTING),
        "--scale",
        "smoke",
        "--method",
        "gapt_matched",
        "--seed",
        "1",
        "--out",
        f"{control}/",
    ]
    assert configure.main([*argv, "--schedule-from", str(gapt)]) == 0
    from replication.config.run import load_run_config

    train(load_run_config(control / "config.yaml"), control, show_progress=False)
    return gapt, control, argv


def _phases(run_dir) -> list[bool]:
    return [r["phase"] == "compress" for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_the_control_compresses_the_gated_runs_steps_moved_within_each_stage(gated_and_control):
    gapt, control, _ = gated_and_control
    gated, matched = _phases(gapt), _phases(control)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (gapt, control)]
    assert summaries[0]["compress_steps"] == summaries[1]["compress_steps"] == sum(gated) > 0
    shifts = [draw_shift(120, 1, 1, 0), draw_shift(60, 1, 1, 1)]  # the MLP's one block: period 1
    assert matched == mask(shifted(gated, [(0, 120), (120, 180)], shifts), 180)  # stage by stage
    assert matched != gated
    assert sum(matched[:120]) == sum(gated[:120])
    config = summaries[1]["config"]
    assert config["schedule"]["source"].startswith("forgetting_separation/smoke/gapt/seed1 (config ")
    assert config["schedule"]["shifts"] == shifts
    # its phase changes are logged as a controller's are, where its schedule changes
    changes = [i for i in range(179) if matched[i] != matched[i + 1]]
    assert summaries[1]["phase_change_steps"] == changes and summaries[1]["phase_changes"] == len(changes)


def test_a_control_without_its_gated_run_or_with_another_is_refused(gated_and_control, tmp_path, capsys):
    gapt, control, argv = gated_and_control
    assert configure.main([*argv[:-1], f"{tmp_path}/a/"]) != 0  # no --schedule-from
    assert (
        "pass --schedule-from with the folder of the finished gapt run of seed 1" in capsys.readouterr().err
    )
    config = resolve_run_config(FORGETTING, "smoke", "gapt_matched", 1)
    with pytest.raises(RunFolderError, match="train it first"):
        matched_schedule(config, tmp_path)
    with pytest.raises(ConfigError, match="copies forgetting_separation/smoke/gapt/seed2"):
        matched_schedule(resolve_run_config(FORGETTING, "smoke", "gapt_matched", 2), gapt)
    not_a_control = [str(FORGETTING), "--scale", "smoke", "--method", "gapt", "--seed", "1"]
    assert configure.main([*not_a_control, "--out", f"{tmp_path}/b/", "--schedule-from", str(gapt)]) != 0
    assert "--schedule-from is for a matched-dose control; gapt is not one" in capsys.readouterr().err


def test_a_control_is_chosen_only_with_its_gated_method():
    plan = Plan(resolve_global_config({"scale": "smoke", "methods": ["ce", "gapt_matched"]}))
    with pytest.raises(ConfigError, match=r"gapt_matched'\] are matched-dose controls: .*\(gapt\)"):
        plan.methods("forgetting_separation")


def test_the_dag_configures_a_control_after_its_gated_run():
    plan = Plan(resolve_global_config({"scale": "smoke", "runs_dir": "R"}))
    assert plan.gated_summary("forgetting_separation", "smoke", "gapt_joint_matched", "3") == [
        "R/forgetting_separation/smoke/gapt_joint/seed3/summary.json"
    ]
    assert plan.schedule_option("forgetting_separation", "smoke", "gapt_matched", "0") == (
        "--schedule-from R/forgetting_separation/smoke/gapt/seed0"
    )
    assert plan.gated_summary("forgetting_separation", "smoke", "gapt", "0") == []
    assert plan.schedule_option("forgetting_separation", "smoke", "ce", "0") == ""
