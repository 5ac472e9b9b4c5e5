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
from replication.science.methods import BASE_METHODS, METHODS
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


@pytest.mark.parametrize("method", BASE_METHODS)
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


@pytest.mark.parametrize("method", BASE_METHODS)
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
    with pytest.raises(ConfigError, match="gapt_matched is a matched-dose control"):
        GAPT(model.blocks, method="gapt_matched")
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


# -- any model: block outputs of other shapes, any number of blocks -------------------------------------


class Stack(torch.nn.Module):
    """Blocks of Linear + ReLU on (..., width) inputs: an MLP on (B, D), or a per-token MLP on (B, S, D)."""

    def __init__(self, n_blocks, width=16, block=None):
        super().__init__()
        torch.manual_seed(0)
        make = block or (lambda: torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU()))
        self.blocks = torch.nn.ModuleList(make() for _ in range(n_blocks))
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x, keep=None):
        """The prediction, and each block's hidden state appended to ``keep``."""
        for block in self.blocks:
            x = block(x)
            if keep is not None:
                keep.append(x)
            x = x[0] if isinstance(x, tuple) else x["hidden"] if isinstance(x, dict) else x
        return self.head(x).squeeze(-1)


def one_step(gapt, model, x, micro=0):
    """A main micro-batch of step 0: the report, and the hidden states the model produced."""
    hidden = []
    with gapt.micro_batch(0, micro) as mb:
        mb.main_loss = model(x, hidden).square().mean()
    mb.loss.backward()
    return gapt.end_step(), hidden


def test_a_batch_of_vectors_is_one_sequence_of_samples():
    """(B, D) is read as (1, B, D): an MBE patch is P consecutive rows of the batch."""
    from replication.science.mbe import patch_mbe

    model = Stack(3)
    gapt = GAPT(model.blocks, method="ce")
    report, hidden = one_step(gapt, model, torch.randn(32, 16))
    expected = [patch_mbe(h.detach().unsqueeze(0)).item() for h in hidden]
    assert report.mbe_by_layer == pytest.approx(expected, rel=1e-6)
    assert min(expected) > 0.1  # patches of eight samples: not rank one


def test_the_suites_mlp_is_measured_as_the_suite_measures_it():
    """Around the forgetting experiment's one-block MLP, whose forward returns its hidden layer as
    (1, B, hidden): the same MBE, and block 0 (the experiment's configured layer) is the default."""
    from replication.config.base import MLPModelConfig
    from replication.science.mbe import patch_mbe

    torch.manual_seed(0)
    model = build_model(MLPModelConfig())
    gapt = GAPT(model.blocks, method="gapt_joint")
    assert gapt.plan.joint == [0]
    gapt.controller.phase = Phase.COMPRESS
    x = torch.randn(64, 10)
    with gapt.micro_batch(0, 0) as mb:
        out = model(x)
        mb.main_loss = out.output.square().mean()
    assert mb.kind == "joint"
    mbe = patch_mbe(out.hidden[0]).item()
    assert mb.objective.item() == pytest.approx(out.output.square().mean().item() + 20.0 * mbe, rel=1e-6)


def test_an_mlp_compresses_its_blocks_through_mbe_micro_batches():
    """gapt on an MLP of 4 blocks: an MBE micro-batch regularizes block 0, 1 or 2 (rotating) and
    stops after it; the gradient reaches that block and the ones before it, and no other."""
    model = Stack(4)
    gapt = GAPT(model.blocks, micro_batches=2)
    assert gapt.plan.alternate == [0, 1, 2]
    x = torch.randn(16, 16)
    for step in range(3):
        gapt.controller.phase = Phase.COMPRESS
        with gapt.micro_batch(step, 0) as mb:
            mb.main_loss = model(x).square().mean()
        mb.loss.backward()
        model.zero_grad(set_to_none=True)
        with gapt.micro_batch(step, 1) as mb:
            model(x).sum().backward()  # never reached: the forward pass ends after the block
        mb.loss.backward()
        assert mb.kind == "mbe" and mb.layer == step
        reached = [block[0].weight.grad is not None for block in model.blocks]
        assert reached == [i <= step for i in range(4)]
        assert model.head.weight.grad is None
        gapt.end_step()


def test_a_tuple_output_is_read_through_its_first_element():
    class TupleBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x):
            h = torch.relu(self.linear(x))
            return h, torch.ones_like(h)  # (hidden, a second output of the same shape, as attention weights)

    from replication.science.mbe import patch_mbe

    model = Stack(2, block=TupleBlock)
    gapt = GAPT(model.blocks, method="ce")
    report, outputs = one_step(gapt, model, torch.randn(2, 8, 16))
    expected = [patch_mbe(out[0].detach()).item() for out in outputs]
    assert report.mbe_by_layer == pytest.approx(expected, rel=1e-6)
    assert min(expected) > 0.5  # the all-ones second element would give 0


def test_hidden_state_picks_the_tensor_from_any_output():
    class DictBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x):
            h = torch.relu(self.linear(x))
            return {"hidden": h, "gate": h.mean(-1)}

    from replication.science.mbe import patch_mbe

    model = Stack(2, block=DictBlock)
    x = torch.randn(16, 16)
    refused = GAPT(model.blocks, method="ce")
    with pytest.raises(TypeError, match=r"block 0 \(DictBlock\) returned a dict.*pass hidden_state="):
        one_step(refused, model, x)
    refused.remove()
    gapt = GAPT(model.blocks, method="ce", hidden_state=lambda out: out["hidden"])
    report, outputs = one_step(gapt, model, x)
    expected = [patch_mbe(out["hidden"].detach().unsqueeze(0)).item() for out in outputs]
    assert report.mbe_by_layer == pytest.approx(expected, rel=1e-6)


def test_blocks_without_parameters_can_be_hooked():
    """The ReLUs of an MLP as its blocks: nothing is read from a block's parameters."""
    layers = torch.nn.ModuleList(
        [torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU()]
    )
    gapt = GAPT([layers[1], layers[3]], method="ce")
    with gapt.micro_batch(0, 0) as mb:
        mb.main_loss = torch.nn.Sequential(*layers)(torch.randn(8, 16)).mean()
    assert len(gapt.end_step().mbe_by_layer) == 2


@pytest.mark.parametrize(
    ("n_blocks", "alternate", "joint"),
    [
        (1, [0], [0]),
        (2, [0], [0]),
        (3, [0, 1], [1]),  # joint: the paper's 1 .. L-2 from 3 blocks
        (4, [0, 1, 2], [1, 2]),
        (5, [2], [1, 2, 3]),  # the paper's middle blocks from 5 blocks, as the suite
        (8, [2, 3, 4, 5], [1, 2, 3, 4, 5, 6]),
    ],
)
def test_the_default_blocks_of_a_model_of_any_size(n_blocks, alternate, joint):
    model = Stack(n_blocks)
    assert GAPT(model.blocks, micro_batches=2).plan.alternate == alternate
    assert GAPT(model.blocks, method="gapt_joint").plan.joint == joint
    monitored = GAPT(model.blocks, method="ce").plan.monitored
    assert monitored == alternate


def test_named_blocks_win_over_the_default():
    from replication.config.base import ObjectiveConfig

    model = Stack(4)
    gapt = GAPT(model.blocks, micro_batches=2, objective=ObjectiveConfig(alternate_layers=[3]))
    assert gapt.plan.alternate == [3] and gapt.plan.monitored == [3]
    joint = GAPT(model.blocks, method="ce_mbe", objective=ObjectiveConfig(joint_layers=[0, 3]))
    assert joint.plan.joint == [0, 3]
    with pytest.raises(ConfigError, match=r"alternate_layers \[4\] must be .* within 0..3"):
        GAPT(model.blocks, micro_batches=2, objective=ObjectiveConfig(alternate_layers=[4]))
    with pytest.raises(ConfigError, match="blocks is empty"):
        GAPT([], method="ce")


def test_a_hidden_state_gapt_cannot_read_is_named_with_its_block_and_shape():
    conv = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, padding=1)])
    gapt = GAPT(conv, method="ce")
    shape = r"block 0 \(Conv2d\) gave a hidden state of shape \(8, 4, 4, 4\): GAPT reads \(B, S, D\)"
    with pytest.raises(ValueError, match=shape):
        with gapt.micro_batch(0, 0):
            conv[0](torch.randn(8, 3, 4, 4))
    gapt.remove()
    # the hint works: H * W positions of C channels
    gapt = GAPT(conv, method="ce", hidden_state=lambda out: out.flatten(2).transpose(1, 2))
    with gapt.micro_batch(0, 0) as mb:
        mb.main_loss = conv[0](torch.randn(2, 3, 4, 4)).mean()
    assert len(gapt.end_step().mbe_by_layer) == 1

    model = Stack(2)
    gapt = GAPT(model.blocks, method="ce")
    with pytest.raises(
        ValueError,
        match=r"block 0 \(Sequential\) .* \(30, 16\): its batch 30 is not a multiple of the MBE patch size 8",
    ):
        one_step(gapt, model, torch.randn(30, 16))
    with pytest.raises(
        ValueError, match=r"\(2, 12, 16\): its sequence length 12 is not a multiple of the MBE patch size 8"
    ):
        one_step(gapt, model, torch.randn(2, 12, 16))
    gapt.remove()
    assert Stack(2)(torch.randn(30, 16)).shape == (30,)  # outside a micro-batch: no hook, no check


def test_the_mlp_example_changes_phase():
    """examples/gapt_mlp.py, shortened: its patiences fit its run."""
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("gapt_mlp", REPO / "examples" / "gapt_mlp.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    reports, val_mse = example.train(steps=100, verbose=False)
    changes = [c for r in reports for c in r.phase_changes]
    assert changes and changes[0]["from"] == "memorize" and changes[0]["to"] == "compress"
    assert any(r.phase is Phase.COMPRESS for r in reports)
    assert math.isfinite(val_mse)
