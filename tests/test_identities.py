"""The objective's identities, pinned exactly: what one optimizer step's gradient is, what the
controller is fed, how processes combine, which value counts as best, and what RQ1's cosine is.

Each reference below is computed separately from the code it checks (its own forward passes and
``torch.autograd.grad`` calls), so a change to a weight, a scaling, a layer or a reduction fails here.
"""

import math
import os
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from replication.runtime.record import read_metrics
from replication.science.mbe import layer_mbe
from replication.tasks.base import Task as BaseTask
from replication.training.alignment import InStepAlignment, gradient_alignment
from replication.training.objectives import accumulate_gradients
from replication.training.train import Trainer

from .conftest import tiny_config
from .test_distributed import free_port

GRAD_ACCUM = 4  # micro-batches per step: two main-loss and two MBE micro-batches for gapt
OPTIONS = {"patch_size": 4, "alpha": 3.0, "eps": 1e-3}  # not the defaults: every call must pass them on


def trainer_for(method: str, tmp_path, warm: bool = False, **overrides) -> Trainer:
    """A tiny run's trainer; ``warm`` trains its 4 steps first, so that no gradient is the degenerate
    one of the zero-initialized projections."""
    config = tiny_config(
        method,
        train={
            "steps": 4,
            "grad_accum": GRAD_ACCUM,
            "eval_every": 0,
            "eval_at_start": False,
            "checkpoint_every": 0,
        },
        **overrides,
    )
    trainer = Trainer(config, tmp_path, show_progress=False)
    if warm:
        trainer.run()
    return trainer


def params_of(trainer: Trainer) -> list[torch.Tensor]:
    return [p for p in trainer.model.parameters() if p.requires_grad]


def step_gradient(trainer: Trainer, step: int, phase) -> list[torch.Tensor]:
    """The gradient one call of accumulate_gradients leaves in .grad (zeros where a parameter got none)."""
    trainer.optimizers.zero_grad()
    accumulate_gradients(
        trainer.model,
        trainer.task,
        trainer.method,
        trainer.config.objective,
        trainer.plan,
        step=step,
        phase=phase,
        micro_batches=range(GRAD_ACCUM),
        window=trainer.model.attention_window(0.0),
        autocast=nullcontext,
    )
    grads = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params_of(trainer)
    ]
    trainer.optimizers.zero_grad()
    return grads


def grad_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def micro_batch_terms(
    trainer: Trainer, step: int, micro: int
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Separately: grad of the main loss, and grad of each block's patch MBE, on one micro-batch."""
    params, task = params_of(trainer), trainer.task
    batch = task.train_batch(step, micro)
    out = task.forward(trainer.model, batch, window=trainer.model.attention_window(0.0))
    main = grad_of(task.main_loss(out.output, batch), params)
    kwargs = trainer.config.objective.mbe_options()
    per_block = [
        grad_of(layer_mbe(out.hidden, [i], **kwargs)[0], params) for i in range(trainer.model.n_blocks)
    ]
    return main, per_block


def combine(*terms: tuple[float, list[torch.Tensor]]) -> list[torch.Tensor]:
    out = [torch.zeros_like(g) for g in terms[0][1]]
    for weight, grads in terms:
        for o, g in zip(out, grads):
            o.add_(g, alpha=weight)
    return out


def assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol=1e-4, atol=1e-7) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)
    assert sum(int(e.count_nonzero()) for e in expected) > 0.5 * sum(
        e.numel() for e in expected
    )  # not degenerate


def assert_differs(actual: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    assert any(not torch.allclose(a, o, rtol=1e-3, atol=1e-6) for a, o in zip(actual, other))


@pytest.mark.parametrize("lam", [0.5, 20.0])
def test_joint_step_gradient_is_main_plus_lambda_times_mean_joint_mbe(tmp_path, lam):
    # identity: g = (1/N) sum_i [grad main_i + lam * (1/|J|) sum_{l in J} grad MBE_l,i]
    trainer = trainer_for("ce_mbe", tmp_path, warm=True, objective={"lambda_mbe": lam, **OPTIONS})
    joint = trainer.plan.joint
    assert joint == [1, 2, 3, 4]  # blocks 1 .. L-2 of 6
    terms = []
    for micro in range(GRAD_ACCUM):
        main, per_block = micro_batch_terms(trainer, 0, micro)
        terms += [(1 / GRAD_ACCUM, main)] + [(lam / (len(joint) * GRAD_ACCUM), per_block[i]) for i in joint]
    expected = combine(*terms)
    actual = step_gradient(trainer, 0, trainer.phase_at(0))
    assert_same(actual, expected)
    main_only = combine(*[t for t in terms if t[0] == 1 / GRAD_ACCUM])
    assert_differs(actual, main_only)  # lambda does something at this size


def test_alternate_step_alternates_main_and_one_rotating_mbe_layer_with_weight_one(tmp_path):
    # identity: g = (1/N) [sum_{i even} grad main_i + sum_{i odd} grad MBE_{l(step),i}],
    # l(step) = alternate[step mod |alternate|]; an MBE micro-batch carries no main loss
    from replication.science.gapt import Phase

    trainer = trainer_for("gapt", tmp_path, warm=True, objective=OPTIONS)
    alternate = trainer.plan.alternate
    assert alternate == [2, 3]  # blocks 2 .. L-3 of 6
    for step in (0, 1, 2):
        layer = alternate[step % len(alternate)]
        terms, wrong_layer = [], []
        for micro in range(GRAD_ACCUM):
            main, per_block = micro_batch_terms(trainer, step, micro)
            if micro % 2 == 0:
                terms.append((1 / GRAD_ACCUM, main))
                wrong_layer.append((1 / GRAD_ACCUM, main))
            else:
                terms.append((1 / GRAD_ACCUM, per_block[layer]))
                wrong_layer.append((1 / GRAD_ACCUM, per_block[alternate[(step + 1) % len(alternate)]]))
        actual = step_gradient(trainer, step, Phase.COMPRESS)
        assert_same(actual, combine(*terms))
        assert_differs(actual, combine(*wrong_layer))
        # memorize: the same micro-batches, every one the main loss
        memorize = [(1 / GRAD_ACCUM, micro_batch_terms(trainer, step, m)[0]) for m in range(GRAD_ACCUM)]
        assert_same(step_gradient(trainer, step, Phase.MEMORIZE), combine(*memorize))


@pytest.mark.parametrize("method", ["ce", "gapt_joint"])
def test_a_step_of_n_micro_batches_is_the_mean_of_their_gradients(tmp_path, method):
    # identity: accumulation over N micro-batches = (1/N) sum_i g_i, each g_i from its own call
    from replication.science.gapt import Phase

    trainer = trainer_for(method, tmp_path, warm=True)
    phase = Phase.MEMORIZE if method == "ce" else Phase.COMPRESS
    window = trainer.model.attention_window(0.0)
    singles = []
    for micro in range(GRAD_ACCUM):
        trainer.optimizers.zero_grad()
        accumulate_gradients(
            trainer.model,
            trainer.task,
            trainer.method,
            trainer.config.objective,
            trainer.plan,
            step=1,
            phase=phase,
            micro_batches=[micro],
            window=window,
            autocast=nullcontext,
        )
        singles.append([p.grad.detach().clone() for p in params_of(trainer)])
    expected = combine(*[(1 / GRAD_ACCUM, g) for g in singles])
    assert_same(step_gradient(trainer, 1, phase), expected)


@pytest.mark.parametrize("method, monitored", [("gapt", [2, 3]), ("gapt_joint", [1, 2, 3, 4])])
def test_the_controller_is_fed_the_steps_main_loss_and_the_monitored_blocks_mbe_in_order(
    tmp_path, method, monitored
):
    # identity: update(L, [MBE_l for l in monitored]) with the very numbers the train record logs
    trainer = trainer_for(
        method, tmp_path, gapt={"delta_ce": 100.0, "patience_memorize": 1, "patience_compress": 1}
    )
    assert trainer.plan.monitored == monitored
    fed = []
    real_update = trainer.controller.update
    trainer.controller.update = lambda loss, mbe: fed.append((loss, list(mbe))) or real_update(loss, mbe)
    trainer.run()
    from replication.runtime.record import read_metrics

    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(fed) == len(records) == 4
    for (loss, mbe), record in zip(fed, records):
        assert record["window"] == trainer.model.attention_window(
            record["step"] / 4
        )  # progress = step / steps
        assert loss == record["train/ce"]
        assert mbe == [record["train/mbe_by_layer"][i] for i in monitored]
        # the logged layer means: over every block, and over the monitored ones
        assert record["train/mbe"] == pytest.approx(sum(record["train/mbe_by_layer"]) / 6)
        assert record["train/mbe_monitored"] == pytest.approx(sum(mbe) / len(mbe))
    changes = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "phase_change"]
    assert changes == [
        {"kind": "event", "event": "phase_change", **t.as_dict()} for t in trainer.controller.transitions
    ]


@pytest.mark.parametrize("method", ["ce", "ce_mbe", "gapt", "gapt_joint"])
def test_every_blocks_mbe_only_every_block_mbe_every_steps_and_the_same_run_otherwise(
    tmp_path, method, monkeypatch
):
    # identity: a run with train.block_mbe_every = 3 is the run with 1, record for record, except
    # that the steps between (1, 2, 4, 5 of 0..7; the last is always whole) compute and log only the
    # monitored blocks' MBE (none for ce, which has no controller; the regularized ones come with the
    # objective anyway)
    import itertools

    import replication.training.monitor as monitor

    gapt = {"delta_ce": 100.0, "patience_memorize": 1, "patience_compress": 1}
    every = tiny_config(method, train={"steps": 8, "eval_every": 0, "checkpoint_every": 0}, gapt=gapt)
    thinned = every.model_copy(update={"train": every.train.model_copy(update={"block_mbe_every": 3})})
    Trainer(every, tmp_path / "every", show_progress=False).run()
    asked = []
    real = monitor.block_mbe
    monkeypatch.setattr(monitor, "block_mbe", lambda *a: asked.append(a[-1]) or real(*a))
    trainer = Trainer(thinned, tmp_path / "thinned", show_progress=False)
    trainer.run()
    full = [r for r in read_metrics(tmp_path / "every" / "metrics.jsonl") if r["kind"] == "train"]
    thin = [r for r in read_metrics(tmp_path / "thinned" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in thin] == list(range(8))
    for a, b in zip(full, thin):
        assert b["train/ce"] == a["train/ce"] and b["phase"] == a["phase"]
        whole = b["step"] in (0, 3, 6, 7)
        if whole or method != "ce":  # ce has no controller: its monitored blocks only on whole steps
            assert b["train/mbe_monitored"] == a["train/mbe_monitored"]
        else:
            assert b["train/mbe_monitored"] is None
        if whole:
            assert b["train/mbe_by_layer"] == a["train/mbe_by_layer"]
            assert b["train/mbe"] == pytest.approx(a["train/mbe"], rel=1e-6)
        else:
            assert b["train/mbe_by_layer"] is None and b["train/mbe"] is None
    # the blocks asked for, step after step (several micro-batches of a step ask alike)
    thin = trainer.plan.monitored if trainer.controller is not None else []  # ce_mbe's come with its loss
    assert [key for key, _ in itertools.groupby(asked)] == [None, thin, None, thin, None]


def test_the_detached_mbe_of_some_blocks_is_theirs_and_nan_elsewhere():
    from replication.training.monitor import block_mbe
    from replication.training.objectives import MicroBatchLoss

    torch.manual_seed(0)
    hidden = [torch.randn(2, 16, 8) for _ in range(5)]
    kw = {"patch_size": 8, "alpha": 2.0, "eps": 1e-7, "clamp": False}
    everything = layer_mbe(hidden, list(range(5)), **kw)
    main = torch.tensor(1.0)
    known = torch.tensor([10.0, 20.0])  # the regularized blocks' values, passed in, not recomputed
    some = block_mbe(hidden, MicroBatchLoss(main, main, [1, 4], known), kw, [0, 1])
    assert some[0] == pytest.approx(everything[0].item(), rel=1e-6)
    assert some[[1, 4]].tolist() == [10.0, 20.0]
    assert torch.isnan(some[[2, 3]]).all()
    every = block_mbe(hidden, MicroBatchLoss(main, main, [], None), kw)
    assert every.tolist() == pytest.approx(everything.tolist(), rel=1e-6)
    assert block_mbe(hidden[:2], MicroBatchLoss(main, None, [1], known[:1]), kw) is None  # an MBE micro-batch


def test_the_best_validation_loss_is_the_minimum_and_its_step_the_argmin():
    # identity: best = min over evaluations (not the last, not the max), step = argmin
    from replication.tasks.fineweb.task import Task as FinewebTask

    evals = [
        {"kind": "eval", "step": s, "val/ce": v, "val/mbe_by_layer": [1.0] * 6}
        for s, v in ((0, 5.0), (10, 3.0), (20, 2.5), (30, 2.75))
    ]
    records = [{"kind": "train", "step": 0, "tokens": 10, "step_time": 1.0}, *evals]
    base = BaseTask.summarize(SimpleNamespace(main_loss_name="ce"), records)
    assert base["best/val/ce"] == 2.5 and base["final/val/ce"] == 2.75
    fake = FinewebTask.__new__(FinewebTask)  # summarize reads only the run config's objective
    fake.config = SimpleNamespace(objective=SimpleNamespace(alternate_layers=None, joint_layers=None))
    summary = fake.summarize(records)
    assert summary["best/val/ce"] == 2.5 and summary["best/val/ce_step"] == 20


def test_rq1_cosines_are_the_cosines_of_the_two_gradients(tmp_path):
    # identity: cos = <g_CE, g_MBE_l> / (|g_CE| |g_MBE_l|) over all parameters, on micro-batch 0;
    # noise = the same between the CE gradients of micro-batches 0 and 1
    trainer = trainer_for("ce", tmp_path, warm=True)
    params, task, window = params_of(trainer), trainer.task, trainer.model.attention_window(0.0)
    layers = [2, 3]
    record = gradient_alignment(trainer.model, task, step=2, layers=layers, window=window)

    def flat(grads):
        return torch.cat([g.reshape(-1).double() for g in grads])

    main0, per_block0 = micro_batch_terms(trainer, 2, 0)
    main1, _ = micro_batch_terms(trainer, 2, 1)

    def cosine(a, b):
        return float(flat(a) @ flat(b) / (flat(a).norm() * flat(b).norm()))

    assert record["align/cos"] == pytest.approx(
        [cosine(main0, per_block0[layer]) for layer in layers], rel=1e-5, abs=1e-7
    )
    assert record["align/noise_cos"] == pytest.approx(cosine(main0, main1), rel=1e-5)
    assert record["align/norm_ce"] == pytest.approx(float(flat(main0).norm()), rel=1e-5)
    assert record["align/norm_mbe"] == pytest.approx(
        [float(flat(per_block0[layer]).norm()) for layer in layers], rel=1e-5
    )
    blocks = trainer.model.blocks
    in_block = [any(p is q for q in blocks[2].parameters()) for p in params]
    a = [g for g, keep in zip(main0, in_block) if keep]
    b = [g for g, keep in zip(per_block0[3], in_block) if keep]
    assert record["align/cos_by_block"][1][2] == pytest.approx(
        cosine(a, b), rel=1e-5, abs=1e-7
    )  # block 2, MBE_3
    assert record["align/cos_by_block"][0][3] is None  # MBE of block 2 has no gradient in block 3


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_rq1_from_the_steps_own_passes_equals_the_separate_pass_and_leaves_the_step_alone(
    tmp_path, grad_accum
):
    # the in-step record (alignment.InStepAlignment) is the separate pass's record on the same weights,
    # up to rounding; and a probed step leaves exactly the gradient of an unprobed one
    config = tiny_config(
        "ce",
        train={
            "steps": 4,
            "grad_accum": grad_accum,
            "eval_every": 0,
            "eval_at_start": False,
            "checkpoint_every": 0,
        },
    )
    trainer = Trainer(config, tmp_path, show_progress=False)
    trainer.run()  # warm: no gradient is the degenerate one of the zero-initialized projections
    model, task, window, layers = trainer.model, trainer.task, trainer.model.attention_window(0.0), [2, 3]
    reference = gradient_alignment(model, task, step=2, layers=layers, window=window)

    def run_step(probe):
        trainer.optimizers.zero_grad()
        accumulate_gradients(
            model,
            task,
            trainer.method,
            trainer.config.objective,
            trainer.plan,
            step=2,
            phase=trainer.phase_at(2),
            micro_batches=range(grad_accum),
            window=window,
            autocast=nullcontext,
            probe=probe,
        )
        grads = [p.grad.detach().clone() for p in params_of(trainer)]
        trainer.optimizers.zero_grad()
        return grads

    plain = run_step(None)
    probe = InStepAlignment(model, task, layers, micro_batches=grad_accum)
    probed = run_step(probe)
    assert all(torch.equal(a, b) for a, b in zip(plain, probed))
    record = probe.record
    assert list(record) == list(reference)
    assert record["align/layers"] == layers and record["align/ce"] == pytest.approx(
        reference["align/ce"], rel=1e-6
    )
    for key in ("align/cos", "align/norm_mbe", "align/mbe"):
        assert record[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    for key in ("align/noise_cos", "align/norm_ce"):
        assert record[key] == pytest.approx(reference[key], rel=1e-5), key
    for mine, theirs in zip(record["align/cos_by_block"], reference["align/cos_by_block"]):
        assert [x is None for x in mine] == [x is None for x in theirs]
        assert [x for x in mine if x is not None] == pytest.approx(
            [x for x in theirs if x is not None], rel=1e-4, abs=1e-6
        )
    assert record["align/noise_cos_by_block"] == pytest.approx(
        reference["align/noise_cos_by_block"], rel=1e-4, abs=1e-6
    )


def test_the_loop_takes_rq1_from_the_step_where_it_can_and_from_a_separate_pass_where_not(
    tmp_path, monkeypatch
):
    import replication.training.train as loop

    separate = []
    real = loop.gradient_alignment
    monkeypatch.setattr(
        loop, "gradient_alignment", lambda *a, **k: separate.append(k["step"]) or real(*a, **k)
    )
    ce = trainer_for("ce", tmp_path / "ce", alignment={"every": 2})
    ce.run()
    assert separate == []  # every record of a ce run comes from its own steps
    records = [r for r in read_metrics(tmp_path / "ce" / "metrics.jsonl") if r["kind"] == "alignment"]
    assert [r["step"] for r in records] == [0, 2]
    config = tiny_config(
        "gapt",
        train={"steps": 12, "grad_accum": 2, "eval_every": 0, "eval_at_start": False, "checkpoint_every": 0},
        alignment={"every": 1},
        gapt={"patience_memorize": 1, "patience_compress": 2, "delta_ce": 10.0},
    )
    Trainer(config, tmp_path / "gapt", show_progress=False).run()
    phases = {
        r["step"]: r["phase"]
        for r in read_metrics(tmp_path / "gapt" / "metrics.jsonl")
        if r["kind"] == "train"
    }
    assert separate == [
        s for s, phase in sorted(phases.items()) if phase == "compress"
    ]  # alternate micro-batches
    assert "compress" in phases.values() and "memorize" in phases.values()


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    trainer = trainer_for("gapt_joint", run_dir)
    _save_first_step_gradient(trainer, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _save_first_step_gradient(trainer: Trainer, path: str) -> None:
    """Run one step from seeded random weights (the same in every process; no zero-initialized
    projection) and save .grad as the optimizer is about to use it (after any all-reduce)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in params_of(trainer):
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    real_step = trainer.optimizers.step

    def capture():
        if not os.path.exists(path):
            torch.save([p.grad.detach().clone() for p in params_of(trainer)], path)
        real_step()

    trainer.optimizers.step = capture
    trainer.config.train.__dict__["steps"] = 1
    trainer._train_step(0, lambda: 0.0)


@pytest.mark.slow
def test_two_processes_reduce_to_the_single_process_gradient_of_the_same_global_batch(tmp_path):
    # identity: after the all-reduce, each rank's .grad = (1/N) sum over all N micro-batches of the
    # step, the gradient one process computes alone (an average over ranks, not a sum)
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    _save_first_step_gradient(trainer_for("gapt_joint", tmp_path / "alone"), str(tmp_path / "alone.pt"))
    alone = torch.load(tmp_path / "alone.pt")
    for grads in ranks:
        assert_same(grads, alone, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in alone) and math.isfinite(sum(float(g.sum()) for g in alone))


@pytest.mark.parametrize(
    "method, phase", [("gapt", "compress"), ("gapt", "memorize"), ("gapt_joint", "compress")]
)
def test_the_logged_step_values_are_means_over_the_micro_batches_that_ran_the_whole_model(
    tmp_path, method, phase
):
    # identity: main loss = mean over the main-loss micro-batches; MBE of block l = mean over the
    # micro-batches that ran every block (gapt's MBE micro-batches stop early and do not count)
    from replication.science.gapt import Phase

    trainer = trainer_for(method, tmp_path, warm=True, objective=OPTIONS)
    task, window, kwargs = (
        trainer.task,
        trainer.model.attention_window(0.0),
        trainer.config.objective.mbe_options(),
    )
    full = [m for m in range(GRAD_ACCUM) if not (method == "gapt" and phase == "compress" and m % 2 == 1)]
    mains, mbes = [], []
    with torch.no_grad():
        for micro in full:
            batch = task.train_batch(2, micro)
            out = task.forward(trainer.model, batch, window=window)
            mains.append(float(task.main_loss(out.output, batch)))
            mbes.append(layer_mbe(out.hidden, None, **kwargs))
    result = accumulate_gradients(
        trainer.model,
        task,
        trainer.method,
        trainer.config.objective,
        trainer.plan,
        step=2,
        phase=Phase(phase),
        micro_batches=range(GRAD_ACCUM),
        window=window,
        autocast=nullcontext,
    )
    trainer.optimizers.zero_grad()
    assert (result.main_loss_count, result.mbe_count) == (len(full), len(full)) and result.finite
    assert result.main_loss == pytest.approx(sum(mains) / len(full), rel=1e-5)
    assert result.mbe_by_layer == pytest.approx((sum(mbes) / len(full)).tolist(), rel=1e-5)


def test_one_non_finite_micro_batch_makes_the_whole_step_non_finite(tmp_path, monkeypatch):
    # identity: finite = every micro-batch's loss is finite; a NaN in gapt's first MBE micro-batch is
    # not forgotten because the later ones are finite (it never reaches the logged main loss)
    import replication.training.objectives as objectives
    from replication.science.gapt import Phase

    trainer = trainer_for("gapt", tmp_path)
    real, calls = objectives.layer_mbe, {"n": 0}

    def nan_in_the_first_regularized_mbe(hidden, layers=None, **kwargs):
        values = real(hidden, layers, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 1:
                return values * math.nan
        return values

    monkeypatch.setattr(objectives, "layer_mbe", nan_in_the_first_regularized_mbe)
    result = accumulate_gradients(
        trainer.model,
        trainer.task,
        trainer.method,
        trainer.config.objective,
        trainer.plan,
        step=0,
        phase=Phase.COMPRESS,
        micro_batches=range(GRAD_ACCUM),
        window=trainer.model.attention_window(0.0),
        autocast=nullcontext,
    )
    trainer.optimizers.zero_grad()
    assert calls["n"] == GRAD_ACCUM // 2 and math.isfinite(result.main_loss) and not result.finite


def test_a_process_whose_share_holds_only_mbe_micro_batches_reports_no_main_loss(tmp_path):
    # identity: with no main-loss micro-batch the sums are 0 over 0, so that summing over processes is exact
    from replication.science.gapt import Phase

    trainer = trainer_for("gapt", tmp_path)
    result = accumulate_gradients(
        trainer.model,
        trainer.task,
        trainer.method,
        trainer.config.objective,
        trainer.plan,
        step=0,
        phase=Phase.COMPRESS,
        micro_batches=[1, 3],
        window=trainer.model.attention_window(0.0),
        autocast=nullcontext,
    )
    trainer.optimizers.zero_grad()
    assert (result.main_loss_sum, result.main_loss_count, result.mbe_sum, result.mbe_count) == (0.0, 0, [], 0)
    assert math.isnan(result.main_loss) and result.mbe_by_layer == [] and result.finite


def test_each_step_passes_its_window_and_step_to_the_gradient_and_rq1_and_logs_its_learning_rates(
    tmp_path, monkeypatch
):
    # identity: at step s the loop uses window = attention_window(s / steps) for the step's gradient
    # and for the RQ1 record of step s, and logs the learning rates that set_step(s) returns
    import replication.training.train as train_module

    seen = {"grad": [], "align": []}
    real_grad, real_align = train_module.accumulate_gradients, train_module.gradient_alignment

    def grad_spy(*args, **kwargs):
        seen["grad"].append((kwargs["step"], kwargs["window"]))
        if kwargs.get("probe") is not None:  # RQ1's record taken from the step's own passes
            seen["align"].append((kwargs["step"], kwargs["window"]))
        return real_grad(*args, **kwargs)

    def align_spy(*args, **kwargs):
        seen["align"].append((kwargs["step"], kwargs["window"]))
        return real_align(*args, **kwargs)

    monkeypatch.setattr(train_module, "accumulate_gradients", grad_spy)
    monkeypatch.setattr(train_module, "gradient_alignment", align_spy)
    trainer = trainer_for("ce", tmp_path, alignment={"every": 2})
    trainer.run()
    expected = [(s, trainer.model.attention_window(s / 4)) for s in range(4)]
    assert seen["grad"] == expected and seen["align"] == expected[::2]
    assert len({w for _, w in expected}) > 1  # the schedule moves within these 4 steps
    from replication.runtime.record import read_metrics

    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in records] == [trainer.optimizers.set_step(s) for s in range(4)]
