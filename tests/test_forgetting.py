"""Experiment 3: the separation metrics, the conflicting-memories task and its two protocols."""

import math

import numpy as np
import pytest
import torch

from replication.config.base import ConfigError, MLPModelConfig, deep_merge
from replication.config.plan import load_plan
from replication.config.report import load_report_spec
from replication.config.run import resolve_run_config, validate_run_config
from replication.models import build_model
from replication.reporting.aggregate import DERIVED
from replication.runtime.record import read_metrics
from replication.science.methods import METHODS
from replication.tasks.forgetting.separation import (
    alleviation_percent,
    interference,
    separation_ratio,
    specialized_fraction,
    unit_selectivity,
)
from replication.tasks.forgetting.task import Task, base_parameters, sample_inputs, teacher_shift
from replication.training.configure import matched_schedule
from replication.training.train import Trainer, train

from .conftest import REPO
from .test_train import strip_timing

EXPERIMENT = REPO / "experiments" / "forgetting_separation" / "config.yaml"
# every method of the experiment, each gated method before its matched-dose control
SMOKE_METHODS = [
    "ce",
    "ce_mbe",
    "gapt",
    "gapt_joint",
    "gapt_smoothed",
    "gapt_matched",
    "gapt_joint_matched",
    "gapt_smoothed_matched",
]
CPU = torch.device("cpu")


def smoke_config(method: str = "ce", seed: int = 0, **overrides):
    config = resolve_run_config(EXPERIMENT, "smoke", method, seed)
    return validate_run_config(deep_merge(config.to_dict(), overrides)) if overrides else config


# -- separation ratio ---------------------------------------------------------------------------------


def test_separation_ratio_by_hand():
    h_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0), within-variance 1
    h_b = torch.tensor([[0.0, 4.0], [2.0, 4.0]])  # mean (1, 4), within-variance 1
    assert separation_ratio(h_a, h_b) == pytest.approx(4.0)
    wide_b = torch.tensor([[-2.0, 4.0], [4.0, 4.0]])  # mean (1, 4), within-variance 9
    assert separation_ratio(h_a, wide_b) == pytest.approx(4.0 / math.sqrt(5.0))  # sqrt((1 + 9) / 2)


def test_separation_ratio_groups_may_differ_in_size():
    h_a = torch.tensor([[0.0], [2.0]])  # mean 1, variance 1
    h_b = torch.tensor([[5.0], [6.0], [7.0]])  # mean 6, variance 2/3
    assert separation_ratio(h_a, h_b) == pytest.approx(5.0 / math.sqrt((1 + 2 / 3) / 2))


def test_identical_groups_are_not_separated():
    h = torch.rand(40, 6)
    assert separation_ratio(h, h.clone()) == 0.0
    assert separation_ratio(torch.ones(3, 2), torch.ones(5, 2)) == 0.0  # 0 / 0: same constant group


def test_separation_ratio_is_invariant_to_scale_and_shift():
    gen = torch.Generator().manual_seed(0)
    h_a = torch.rand(30, 5, generator=gen, dtype=torch.float64)
    h_b = torch.rand(20, 5, generator=gen, dtype=torch.float64) + 0.3
    ratio = separation_ratio(h_a, h_b)
    assert ratio > 0
    assert separation_ratio(7.5 * h_a, 7.5 * h_b) == pytest.approx(ratio, rel=1e-12)
    offset = torch.randn(5, generator=gen, dtype=torch.float64)
    assert separation_ratio(h_a + offset, h_b + offset) == pytest.approx(ratio, rel=1e-12)
    assert separation_ratio(h_b, h_a) == pytest.approx(ratio, rel=1e-12)


def test_separation_ratio_rejects_mismatched_widths():
    with pytest.raises(ValueError):
        separation_ratio(torch.rand(4, 3), torch.rand(4, 2))


# -- specialized units and forgetting -----------------------------------------------------------------


def test_specialized_fraction_by_hand():
    h_a = torch.tensor([[1.0, 1.0, 0.0, 2.0, 4.0]])
    h_b = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])
    # selectivity (m_a - m_b) / (m_a + m_b): 1, 0, silent -> 0, 1/3, 0.6
    assert unit_selectivity(h_a, h_b).tolist() == pytest.approx([1.0, 0.0, 0.0, 1 / 3, 0.6])
    assert specialized_fraction(h_a, h_b) == pytest.approx(2 / 5)
    assert specialized_fraction(h_a, h_b, threshold=0.3) == pytest.approx(3 / 5)
    assert specialized_fraction(h_b, h_a) == pytest.approx(2 / 5)  # specialized for B counts too


def test_alleviation_percent_by_hand():
    # ce: B's L1 0.1 before fine-tuning, 0.5 after; a method that ends at 0.3 avoids half of it
    assert alleviation_percent(0.5, 0.3, 0.1) == pytest.approx(50.0)
    assert alleviation_percent(0.5, 0.1, 0.1) == pytest.approx(100.0)
    assert alleviation_percent(0.5, 0.5, 0.1) == pytest.approx(0.0)
    assert alleviation_percent(0.5, 0.7, 0.1) == pytest.approx(-50.0)
    assert math.isnan(alleviation_percent(0.2, 0.3, 0.2))  # ce forgot nothing
    paired = alleviation_percent(np.array([0.5, 0.4]), np.array([0.3, 0.4]), np.array([0.1, 0.2]))
    assert paired.tolist() == pytest.approx([50.0, 0.0])
    assert interference(0.1, 0.5) == pytest.approx(0.4)


# -- the data ------------------------------------------------------------------------------------------


def test_the_two_input_distributions_have_the_paper_means():
    gen = torch.Generator().manual_seed(0)
    x_a, x_b = sample_inputs("a", 20000, 10, 0.25, gen), sample_inputs("b", 20000, 10, 0.25, gen)
    first, second = [1.0] * 5, [0.0] * 5
    assert x_a.mean(0).tolist() == pytest.approx(first + second, abs=0.01)
    assert x_b.mean(0).tolist() == pytest.approx(second + first, abs=0.01)
    assert x_a.std(0).tolist() == pytest.approx([0.25] * 10, abs=0.01)
    assert x_b.std(0).tolist() == pytest.approx([0.25] * 10, abs=0.01)


def test_teacher_shift_has_rank_three_and_scaled_norms():
    theta0 = base_parameters(MLPModelConfig(), seed=3)
    shift = teacher_shift(theta0, torch.Generator().manual_seed(1))
    assert torch.linalg.matrix_rank(shift["blocks.0.fc.weight"]).item() == 3  # (50, 10)
    assert torch.linalg.matrix_rank(shift["out.weight"]).item() == 1  # (1, 50): min(3, 1)
    for name, delta in shift.items():
        assert delta.shape == theta0[name].shape
        assert 0.5 <= (delta.norm() / theta0[name].norm()).item() <= 5.0
    factors = {name: (delta.norm() / theta0[name].norm()).item() for name, delta in shift.items()}
    assert len(set(round(f, 6) for f in factors.values())) == len(factors)  # one U(0.5, 5) draw per tensor
    doubled = teacher_shift(theta0, torch.Generator().manual_seed(1), magnitude=2.0)
    for name in shift:
        torch.testing.assert_close(doubled[name], 2.0 * shift[name])
    wider = teacher_shift(theta0, torch.Generator().manual_seed(1), rank=5)
    assert torch.linalg.matrix_rank(wider["blocks.0.fc.weight"]).item() == 5


def test_a_seed_draws_theta0_the_shift_and_the_data():
    one, same, other = (Task(smoke_config(seed=seed), CPU) for seed in (0, 0, 1))
    for name in one.theta0:
        assert torch.equal(one.theta0[name], same.theta0[name])
        assert torch.equal(one.shift[name], same.shift[name])
        assert not torch.equal(one.theta0[name], other.theta0[name])
    assert torch.equal(one.train_data["a"][0], same.train_data["a"][0])
    assert not torch.equal(one.train_data["a"][0], other.train_data["a"][0])
    assert [len(one.train_data[g][0]) for g in "ab"] == [500, 500]
    assert [len(one.val_data[g][0]) for g in "ab"] == [100, 100]


def test_targets_come_from_the_two_shifted_teachers_and_the_student_starts_at_theta0():
    config = smoke_config()
    task = Task(config, CPU)
    student = build_model(config.model)
    task.init_model(student)
    for name, param in student.named_parameters():
        assert torch.equal(param, task.theta0[name])
    at_start = task.evaluate(student, step=0, window=None)
    assert at_start["val/a/l1"] > 0.01 and at_start["val/b/l1"] > 0.01
    for sign, fitted, conflicting in ((1.0, "a", "b"), (-1.0, "b", "a")):
        with torch.no_grad():
            for name, param in student.named_parameters():
                param.copy_(task.theta0[name] + sign * task.shift[name])
        metrics = task.evaluate(student, step=0, window=None)
        assert metrics[f"val/{fitted}/l1"] < 1e-5  # this group's own teacher fits it exactly
        assert metrics[f"val/{conflicting}/l1"] > 0.01  # ... and not the other group


# -- the protocols -------------------------------------------------------------------------------------


def test_mix_batches_hold_half_of_each_group_in_grouped_order_and_are_pure_functions():
    task = Task(smoke_config(), CPU)
    batch = task.train_batch(5, 1)
    assert batch.extras["group"].tolist() == [0] * 8 + [1] * 8  # an MBE patch of 8 never mixes groups
    for group_id, group in enumerate("ab"):
        rows = batch.extras["group"] == group_id
        x, y = task.train_data[group]
        index = batch.extras["index"][rows]
        assert len(set(index.tolist())) == 8  # without replacement within a micro-batch
        assert torch.equal(batch.inputs[rows], x[index]) and torch.equal(batch.targets[rows], y[index])
    again = task.train_batch(5, 1)
    assert torch.equal(batch.inputs, again.inputs) and torch.equal(batch.targets, again.targets)
    assert not torch.equal(batch.inputs, task.train_batch(5, 0).inputs)


def test_shuffled_order_mixes_the_groups_within_a_micro_batch():
    task = Task(smoke_config(task={"order": "shuffled"}), CPU)
    groups = task.train_batch(0, 0).extras["group"]
    assert sorted(groups.tolist()) == [0] * 8 + [1] * 8 and groups.tolist() != [0] * 8 + [1] * 8


def test_protocol_b_trains_only_on_group_a_in_its_second_stage(tmp_path):
    config = smoke_config("gapt")
    mix_steps = config.task.stages[0].steps
    trainer = Trainer(config, tmp_path, show_progress=False)
    seen: dict[int, list[int]] = {}
    original = trainer.task.train_batch

    def spy(step, micro):
        batch = original(step, micro)
        seen.setdefault(step, []).extend(batch.extras["group"].tolist())
        return batch

    trainer.task.train_batch = spy
    trainer.run()
    assert sorted(seen) == list(range(config.train.steps))
    for step, groups in seen.items():
        if step < mix_steps:
            # 2 micro-batches x 8 of each group, twice: the run's mix stage and the ce pre-train's
            assert groups.count(0) == groups.count(1) == 32, step
        else:
            assert groups == [0] * 32, step  # group A alone
    a_inputs = trainer.task.train_data["a"][0]
    last = original(config.train.steps - 1, 1)
    assert torch.equal(last.inputs, a_inputs[last.extras["index"]])


def test_stage_and_evaluation_mismatches_are_config_errors():
    with pytest.raises(ConfigError, match="add up to"):
        Task(smoke_config(train={"steps": 200}), CPU)
    with pytest.raises(ConfigError, match="eval_every"):
        Task(smoke_config(train={"eval_every": 50}), CPU)  # the mix stage ends at step 120
    with pytest.raises(ConfigError, match="distinct"):
        smoke_config(
            task={
                "stages": [
                    {"name": "mix", "steps": 90, "groups": ["a", "b"]},
                    {"name": "mix", "steps": 90, "groups": ["a"]},
                ]
            }
        )


def test_one_stage_is_protocol_a_alone(tmp_path):
    one_stage = [{"name": "mix", "steps": 60, "groups": ["a", "b"]}]
    config = smoke_config(task={"stages": one_stage}, train={"steps": 60})
    metrics = train(config, tmp_path, show_progress=False)["metrics"]
    assert "mix/separation_ratio" in metrics and "mix/mbe" in metrics
    assert not any(key.startswith(("forgetting/", "finetune/")) for key in metrics)


# -- the experiment through its real config ---------------------------------------------------------


def test_every_scale_resolves_and_the_paper_scale_is_the_paper_size():
    spec = load_report_spec(EXPERIMENT)
    assert list(spec.methods) == SMOKE_METHODS
    assert {"smoke", "cpu", "gpu1", "paper"} <= set(spec.scales)
    assert len(spec.scales["paper"].seeds) >= 20
    for scale in spec.scales:
        for method in spec.methods:
            config = resolve_run_config(spec, scale, method, spec.scales[scale].seeds[0])
            assert sum(s.steps for s in config.task.stages) == config.train.steps
            assert config.train.grad_accum * config.task.micro_batch_size == 32
    paper = resolve_run_config(spec, "paper", "gapt_joint", 0)
    assert [(s.steps, s.groups, s.start) for s in paper.task.stages] == [
        (1000, ["a", "b"], "previous"),
        (1000, ["a"], "ce_pretrain"),  # the paper's protocol: fine-tuned from the seed's ce pre-train
    ]
    assert paper.optim.lr == 0.01 and paper.objective.lambda_mbe == 10.0
    assert (paper.gapt.patience_memorize, paper.gapt.patience_compress) == (125, 75)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    torch.set_num_threads(1)
    runs = {}
    for method in SMOKE_METHODS:  # a gated method before its matched-dose control
        run_dir = tmp_path_factory.mktemp(method)
        config = smoke_config(method)
        if METHODS[method].matches:
            schedule = matched_schedule(config, runs[METHODS[method].matches][0])
            config = validate_run_config({**config.to_dict(), "schedule": schedule.model_dump(mode="json")})
        runs[method] = (run_dir, train(config, run_dir, show_progress=False))
    return runs


@pytest.mark.parametrize("method", SMOKE_METHODS)
def test_a_smoke_run_reports_every_metric_the_claims_and_table_name(smoke_runs, method):
    run_dir, summary = smoke_runs[method]
    spec = load_report_spec(EXPERIMENT)
    plan, _ = load_plan(EXPERIMENT.parent / "plan.yaml")
    wanted = {c.metric for c in plan.claims} | {row.key for row in spec.paper.table}
    wanted = {k for k in wanted if not k.startswith(DERIVED)}  # the analysis derives these from the CSVs
    paired = {"forgetting/alleviation_percent"}  # pairs runs of a seed: computed by aggregation
    assert paired <= wanted
    for key in wanted - paired:
        value = summary["metrics"].get(key, summary.get(key))
        assert isinstance(value, (int, float)) and math.isfinite(value), key
    records = read_metrics(run_dir / "metrics.jsonl")
    evals = {r["step"]: r for r in records if r["kind"] == "eval"}
    assert sorted(evals) == list(range(0, 181, 30))
    assert evals[120]["stage"] == "mix" and evals[150]["stage"] == "finetune"
    metrics = summary["metrics"]
    assert metrics["mix/separation_ratio"] == evals[120]["val/separation_ratio"]  # protocol A: end of mix
    assert metrics["mix/mbe"] == pytest.approx((evals[120]["val/a/mbe"] + evals[120]["val/b/mbe"]) / 2)
    # protocol B: B where fine-tuning started (the seed's ce pre-train: the ce run's state at the end
    # of the mix, bit for bit) and after
    ce_evals = {
        r["step"]: r for r in read_metrics(smoke_runs["ce"][0] / "metrics.jsonl") if r["kind"] == "eval"
    }
    (start,) = [r for r in records if r["kind"] == "stage_start"]
    assert start["step"] == 120 and start["stage"] == "finetune"
    assert {k: v for k, v in start.items() if k.startswith("val/")} == {
        k: v for k, v in ce_evals[120].items() if k.startswith("val/")
    }
    assert metrics["forgetting/l1_before"] == metrics["pretrain/b/l1"] == ce_evals[120]["val/b/l1"]
    assert metrics["forgetting/l1_after"] == evals[180]["val/b/l1"]
    rise = metrics["forgetting/l1_after"] - metrics["forgetting/l1_before"]
    assert metrics["forgetting/interference"] == pytest.approx(rise)
    assert metrics["mix/phase_changes"] + metrics["finetune/phase_changes"] == summary["phase_changes"]


def test_the_always_on_mbe_objective_compresses_the_hidden_layer(smoke_runs):
    ce, ce_mbe = smoke_runs["ce"][1]["metrics"], smoke_runs["ce_mbe"][1]["metrics"]
    assert ce_mbe["mix/mbe"] < 0.2 * ce["mix/mbe"]


def test_alleviation_is_paired_with_the_ce_run_of_the_same_seed():
    import pandas as pd

    from replication.config.report import load_report_spec
    from replication.reporting.aggregate import _paired_rows

    (paired,) = load_report_spec(REPO / "experiments/forgetting_separation/config.yaml").reporting.paired

    rows = []
    for seed, (ce_before, ce_after, gapt_after) in enumerate([(1.0, 3.0, 2.0), (1.0, 2.0, 2.5)]):
        rows += [
            {"method": "ce", "seed": seed, "metric": "forgetting/l1_before", "value": ce_before},
            {"method": "ce", "seed": seed, "metric": "forgetting/l1_after", "value": ce_after},
            {"method": "gapt", "seed": seed, "metric": "forgetting/l1_before", "value": 0.5},
            {"method": "gapt", "seed": seed, "metric": "forgetting/l1_after", "value": gapt_after},
        ]
    out = _paired_rows(paired, pd.DataFrame(rows)).set_index(["method", "seed"]).value
    assert set(out.index.get_level_values("method")) == {"ce", "gapt"}
    assert out[("gapt", 0)] == 50.0  # avoided half of ce's rise from 1.0 to 3.0
    assert out[("gapt", 1)] == -50.0  # forgot more than ce did
    assert out[("ce", 0)] == 0.0


def test_the_paper_protocol_fine_tunes_with_a_fresh_optimizer_and_the_alternative_carries_it(tmp_path):
    """start: ce_pretrain restarts Adam at the stage (its step count at the end is the stage's
    steps); start: previous, the own_pretrain protocol, carries it through both stages."""
    counts = {}
    for start in ("ce_pretrain", "previous"):
        stages = [
            {"name": "mix", "steps": 120, "groups": ["a", "b"]},
            {"name": "finetune", "steps": 60, "groups": ["a"], "start": start},
        ]
        trainer = Trainer(
            smoke_config("gapt", task={"stages": stages}), tmp_path / start, show_progress=False
        )
        trainer.run()
        (adam,) = trainer.optimizers.optimizers
        counts[start] = {int(state["step"]) for state in adam.state.values()}
    assert counts == {"ce_pretrain": {60}, "previous": {180}}


def test_a_stage_starts_from_the_ce_pretrain_only_after_another():
    stages = [{"name": "mix", "steps": 180, "groups": ["a", "b"], "start": "ce_pretrain"}]
    with pytest.raises(ConfigError, match="nothing before it"):
        smoke_config(task={"stages": stages})
    stages = [
        {"name": "mix", "steps": 60, "groups": ["a", "b"]},
        {"name": "again", "steps": 60, "groups": ["a", "b"], "start": "ce_pretrain"},
        {"name": "finetune", "steps": 60, "groups": ["a"], "start": "ce_pretrain"},
    ]
    with pytest.raises(ConfigError, match="at most one stage"):
        smoke_config(task={"stages": stages})


@pytest.mark.parametrize("kill_at", [125, 135], ids=["checkpoint-before-the-start", "checkpoint-after-it"])
def test_a_run_killed_around_the_fresh_start_resumes_into_the_uninterrupted_one(
    tmp_path, monkeypatch, kill_at
):
    """Killed after a checkpoint taken before the stage that starts from the ce pre-train (step 120),
    or after one taken within it (step 130): resumed, the same records as one uninterrupted run."""
    import replication.training.train as loop

    config = smoke_config("gapt", train={"checkpoint_every": 10})
    train(config, tmp_path / "whole", show_progress=False)
    real = loop.accumulate_gradients

    def dies(*args, **kwargs):
        if kwargs["step"] == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", dies)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", show_progress=False)
    monkeypatch.setattr(loop, "accumulate_gradients", real)
    assert train(config, tmp_path / "killed", show_progress=False)["resumes"] == 1
    whole, resumed = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("whole", "killed"))
    assert strip_timing(resumed) == strip_timing(whole)
    assert sum(r["kind"] == "stage_start" for r in resumed) == 1
