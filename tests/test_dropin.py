"""The drop-in API (replication.integrations.dropin) is the suite's algorithm: a plain loop around it trains a
model exactly as replication.training.train does."""

import math

import pytest
import torch

from replication.config.base import ConfigError
from replication.integrations.dropin import GAPT
from replication.models import build_model
from replication.runtime.record import read_metrics
from replication.science.gapt import GaptConfig, Phase
from replication.science.methods import METHODS
from replication.tasks.registry import build_task
from replication.training.checkpoint import seed_everything
from replication.training.optim import Optimizers
from replication.training.train import train

from .conftest import tiny_config

# a run whose gated methods change phase several times in 40 steps
PHASES = dict(
    train={"steps": 40, "eval_every": 0, "eval_at_start": False},
    gapt={"delta_ce": 0.05, "patience_memorize": 3, "patience_compress": 3},
)


def plain_loop(config):
    """replication.training.train's run, written as a user would write it around the drop-in API: the same
    seed, model, data, optimizers and steps, no Trainer."""
    seed_everything(config.seed)
    device = torch.device("cpu")
    task = build_task(config, device)
    model = build_model(config.model)
    task.init_model(model)
    optimizers = Optimizers(config.optim, model, config.train.steps)
    gapt = GAPT(
        model.blocks,
        method=config.method,
        micro_batches=config.train.grad_accum,
        objective=config.objective,
        controller=config.gapt,
    )
    reports = []
    for step in range(config.train.steps):
        window = model.attention_window(step / config.train.steps)
        optimizers.set_step(step)
        for micro in range(config.train.grad_accum):
            batch = task.train_batch(step, micro)
            with gapt.micro_batch(step, micro) as mb:
                output = task.forward(model, batch, window=window)
                mb.main_loss = task.main_loss(output.output, batch)
            mb.loss.backward()
        report = gapt.end_step()
        if report.finite:
            optimizers.step()
        optimizers.zero_grad()
        reports.append(report)
    return model, reports, gapt


@pytest.mark.parametrize("method", list(METHODS))
def test_a_plain_loop_around_the_drop_in_trains_exactly_as_the_suite(tmp_path, method):
    """Bit-identical on CPU: the same losses, MBE, phases and phase changes at every step."""
    config = tiny_config(method, **PHASES)
    train(config, tmp_path, show_progress=False)
    records = read_metrics(tmp_path / "metrics.jsonl")
    suite = [r for r in records if r["kind"] == "train"]
    model, reports, gapt = plain_loop(config)
    assert [r.phase.value for r in reports] == [r["phase"] for r in suite]
    assert [r.main_loss for r in reports] == [r["train/ce"] for r in suite]
    assert [r.mbe_by_layer for r in reports] == [r["train/mbe_by_layer"] for r in suite]
    changes = [c for r in reports for c in r.phase_changes]
    assert changes == [
        {k: v for k, v in r.items() if k not in ("kind", "event")}
        for r in records
        if r.get("event") == "phase_change"
    ]
    if METHODS[method].gated:
        assert len(changes) >= 2 and {r.phase for r in reports} == {Phase.MEMORIZE, Phase.COMPRESS}


@pytest.mark.parametrize("method", list(METHODS))
def test_the_drop_in_weights_equal_the_suites(tmp_path, method):
    """The weights after 40 steps, through the checkpoint the suite keeps: every micro-batch's
    gradient, MBE micro-batches included, was the same."""
    config = tiny_config(method, **{**PHASES, "train": {**PHASES["train"], "keep_checkpoint": True}})
    train(config, tmp_path, show_progress=False)
    suite_weights = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    model, _, _ = plain_loop(config)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, suite_weights[name]), name


def test_an_mbe_micro_batch_ends_after_its_block_and_rotates():
    """In compress, gapt's odd micro-batches run the model only up to the block they regularize,
    which moves on by one every step."""
    config = tiny_config("gapt")
    model = build_model(config.model)
    ran = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda module, args, output, i=i: ran.append(i))
    gapt = GAPT(model.blocks, micro_batches=2, controller=GaptConfig(patience_memorize=1))
    gapt.controller.phase = Phase.COMPRESS
    tokens = torch.randint(0, 32, (2, 32))
    seen = []
    for step in range(3):
        for micro in range(2):
            ran.clear()
            with gapt.micro_batch(step, micro) as mb:
                out = model(tokens)
                mb.main_loss = out.output.float().logsumexp(-1).mean()
            seen.append((mb.kind, mb.layer, list(ran)))
            mb.loss.backward()
        gapt.end_step()
        gapt.controller.phase = Phase.COMPRESS
    alternate = gapt.plan.alternate
    assert alternate == [2, 3]
    for step in range(3):
        main, mbe = seen[2 * step], seen[2 * step + 1]
        layer = alternate[step % 2]
        assert main == ("main", None, list(range(6)))
        assert mbe == ("mbe", layer, list(range(layer + 1)))


def test_the_controller_state_round_trips_through_json():
    import json

    config = tiny_config("gapt", **PHASES)
    _, _, gapt = plain_loop(config)
    state = json.loads(json.dumps(gapt.state_dict()))
    fresh = GAPT(
        build_model(config.model).blocks, micro_batches=2, objective=config.objective, controller=config.gapt
    )
    fresh.load_state_dict(state)
    assert fresh.phase == gapt.phase and fresh.step_index == 40
    assert fresh.controller.state_dict() == gapt.controller.state_dict()


def test_misuse_is_named():
    model = build_model(tiny_config("gapt").model)
    with pytest.raises(ConfigError, match="micro_batches must be >= 2"):
        GAPT(model.blocks, method="gapt", micro_batches=1)
    with pytest.raises(ConfigError, match="unknown method"):
        GAPT(model.blocks, method="gpt")
    gapt = GAPT(model.blocks, method="ce")
    with pytest.raises(RuntimeError, match="set mb.main_loss"):
        with gapt.micro_batch(0, 0):
            model(torch.randint(0, 32, (1, 32)))
    with pytest.raises(RuntimeError, match="0 of the 6 blocks ran"):
        with gapt.micro_batch(0, 0) as mb:
            mb.main_loss = torch.zeros(())
    gapt.remove()
    assert not any(block._forward_hooks for block in model.blocks)


def test_a_block_listed_twice_applied_twice_or_without_gradients_is_refused():
    from torch.utils.checkpoint import checkpoint

    model = build_model(tiny_config("gapt").model)
    with pytest.raises(ConfigError, match="a block appears twice"):
        GAPT([*model.blocks, model.blocks[0]], method="ce")
    gapt = GAPT(model.blocks, method="ce")
    tokens = torch.randint(0, 32, (1, 32))
    with pytest.raises(RuntimeError, match="block 0 ran twice in one micro-batch"):
        with gapt.micro_batch(0, 0) as mb:
            model(tokens)
            mb.main_loss = model(tokens).output.float().mean()
    gapt.remove()
    mbe = GAPT(model.blocks, micro_batches=2)
    mbe.controller.phase = Phase.COMPRESS  # micro-batch 1 stops at block 2, inside a reentrant checkpoint
    mask = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    x = torch.randn(1, 32, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match="reentrant activation checkpointing"):
        with mbe.micro_batch(0, 1) as mb:
            h = x
            for block in model.blocks:
                h = checkpoint(lambda h, block=block: block(h, h, None, mask)[0], h, use_reentrant=True)


def test_a_nonfinite_step_is_reported_and_not_fed_to_the_controller():
    model = build_model(tiny_config("gapt").model)
    gapt = GAPT(model.blocks, micro_batches=2)
    for micro in range(2):
        with gapt.micro_batch(0, micro) as mb:
            out = model(torch.randint(0, 32, (1, 32)))
            mb.main_loss = out.output.float().mean() * math.nan
    report = gapt.end_step()
    assert not report.finite and gapt.controller.n_nonfinite == 1 and gapt.controller.s_m == 0
