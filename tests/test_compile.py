"""torch.compile and bf16 on CPU: what the GPU scales switch on, checked where CI runs.

Compilation uses dynamo's ``eager`` backend here: it traces, guards and recompiles exactly as
inductor does (the recompile limit is dynamo's), without inductor's code generation, which would
cost minutes of CI time per graph.
"""

import math

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import replication.science.mbe as mbe
import replication.training.toolchain as toolchain
import replication.training.train as loop
from replication.config.base import ConfigError
from replication.runtime.record import read_metrics
from replication.science.gapt import Phase
from replication.science.methods import BASE_METHODS, METHODS

from .conftest import tiny_config

# a 12-block gapt run that enters compress at step 2 and stays there: no CE progress counts
# (delta_ce), no CE spike (spike_tol), and a compress patience longer than the run
TWELVE_BLOCKS = dict(
    model={"n_layer": 12},
    train={"steps": 22, "grad_accum": 2, "eval_every": 11, "compile": True},
    gapt={"delta_ce": 100.0, "spike_tol": 100.0, "patience_memorize": 2, "patience_compress": 100},
)
# per run: the first block (no value residual yet), the other blocks, and the head, each in training
# and in evaluation (no gradients)
GRAPHS = 6


@pytest.fixture
def dynamo(monkeypatch):
    """A clean dynamo whose recompile limit is an error, with the eager backend."""
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield counters
    torch._dynamo.reset()


@pytest.mark.slow
def test_gapt_under_compile_traces_a_bounded_number_of_graphs(tmp_path, dynamo):
    """Whole compress phases of a 12-block gapt model, through every layer the MBE micro-batch
    rotates through (each a different ``upto``), and evaluations: a few graphs in all. Compiling the
    whole model instead traces one graph per ``upto`` and stops at dynamo's recompile limit."""
    trainer = loop.Trainer(tiny_config("gapt", **TWELVE_BLOCKS), tmp_path, show_progress=False)
    summary = trainer.run()
    records = read_metrics(tmp_path / "metrics.jsonl")
    compress = [r["step"] for r in records if r["kind"] == "train" and r["phase"] == Phase.COMPRESS.value]
    layers = {trainer.plan.alternate[step % len(trainer.plan.alternate)] for step in compress}
    assert layers == set(trainer.plan.alternate) == set(range(2, 10))  # every rotation layer ran
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 11, 22]
    assert math.isfinite(summary["metrics"]["final/val/ce"])
    assert dynamo["stats"]["unique_graphs"] == GRAPHS, dict(dynamo["stats"])


def test_compiling_blocks_keeps_parameter_names_and_outputs(dynamo):
    """Checkpoints of compiled and eager runs are interchangeable, and the compiled blocks compute
    what the eager ones do."""
    from replication.models import build_model

    config = tiny_config("ce")
    eager, compiled = build_model(config.model), build_model(config.model)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="eager")
    assert list(compiled.state_dict()) == list(eager.state_dict())
    tokens = torch.randint(0, 32, (2, 32), generator=torch.Generator().manual_seed(0))
    for upto in (None, 3):
        a, b = eager(tokens, window=16, upto=upto), compiled(tokens, window=16, upto=upto)
        assert all(torch.equal(x, y) for x, y in zip(a.hidden, b.hidden))


def test_flex_attention_blocks_trace_once_for_every_window_of_the_schedule(dynamo):
    """The sliding window grows during a run; under FlexAttention it must not trace the compiled
    blocks again (forward only: FlexAttention has no backward on CPU in torch 2.13)."""
    from replication.config.base import ModdedModelConfig
    from replication.models.modded import ModdedGPT

    config = ModdedModelConfig(
        vocab_size=32,
        n_layer=3,
        d_model=32,
        n_head=2,
        head_dim=16,
        window_start=16,
        window_end=256,
        window_multiple=16,
        attention="flex",
    )
    model = ModdedGPT(config)
    model.compile_blocks(backend="eager")
    tokens = torch.randint(0, 32, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for progress in torch.linspace(0, 1, 9).tolist():
            model(tokens, window=model.attention_window(progress))
    assert dynamo["stats"]["unique_graphs"] == 3, dict(dynamo["stats"])  # the first block, the rest, the head


def test_flex_attention_on_cpu_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="FlexAttention has no backward pass on CPU"):
        loop.Trainer(tiny_config("ce", model={"attention": "flex"}), tmp_path, show_progress=False)


# -- bf16 --------------------------------------------------------------------------------------------

CE_TOLERANCE = 5e-3  # relative
MBE_TOLERANCE = 1e-2  # nats, absolute: MBE under compression nears 0, where a relative error means nothing
# gapt in compress from step 2 on (no CE progress counts, no spike, a patience longer than the run)
BF16_RUN = dict(
    train={"steps": 8, "eval_every": 4},
    gapt={"delta_ce": 100.0, "spike_tol": 100.0, "patience_memorize": 1, "patience_compress": 100},
)


@pytest.mark.parametrize("method", BASE_METHODS)
def test_a_bf16_run_is_finite_computes_mbe_in_float32_and_agrees_with_float32(tmp_path, monkeypatch, method):
    """One run's precision reaches training, MBE and evaluation: under bf16 autocast every entropy
    is computed from float32 inputs with autocast off, losses stay finite, and eight steps (the
    last six in compress for the gated methods) agree with float32 within 0.5 % in CE and 0.01 nats
    in MBE. Measured on this model: at most 0.09 % and 0.0013 nats; bf16 keeps 8 bits of mantissa
    (0.4 % per rounding), and the Gram matrices and losses stay float32."""
    seen = []
    real = mbe._renyi_entropy_float32

    def spy(z, *args, **kwargs):
        seen.append((z.dtype, torch.is_autocast_enabled("cpu")))
        return real(z, *args, **kwargs)

    monkeypatch.setattr(mbe, "_renyi_entropy_float32", spy)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        config = tiny_config(method, **{**BF16_RUN, "train": {**BF16_RUN["train"], "dtype": dtype}})
        loop.train(config, tmp_path / dtype, show_progress=False)
        runs[dtype] = [
            r for r in read_metrics(tmp_path / dtype / "metrics.jsonl") if r["kind"] in ("train", "eval")
        ]
        assert seen and all(d == torch.float32 and not autocast for d, autocast in seen), set(seen)
    assert [r["kind"] for r in runs["float32"]] == [r["kind"] for r in runs["bfloat16"]]
    if METHODS[method].gated:
        assert [r["phase"] for r in runs["bfloat16"] if r["kind"] == "train"][2:] == ["compress"] * 6
    for a, b in zip(runs["float32"], runs["bfloat16"]):
        for key, tolerance in (("train/ce", CE_TOLERANCE), ("val/ce", CE_TOLERANCE)):
            if key in a:
                assert math.isfinite(b[key]) and b[key] == pytest.approx(a[key], rel=tolerance), (key, a, b)
        for key in ("train/mbe", "val/mbe"):
            if key in a:
                assert math.isfinite(b[key]) and b[key] == pytest.approx(a[key], abs=MBE_TOLERANCE), (
                    key,
                    a,
                    b,
                )
    # bf16 did run: the later records differ (step 0's loss is log V exactly in both: a zero-init head)
    assert any(a.get("train/ce") != b.get("train/ce") for a, b in zip(runs["float32"], runs["bfloat16"]))


def test_the_run_precision_reaches_evaluation(tmp_path, monkeypatch):
    """The loop hands its autocast to the task's evaluation (and RQ1), not a choice of the task's."""
    from replication.tasks.lm import LanguageTask

    real_evaluate = LanguageTask.evaluate
    inside = []

    def evaluate(self, model, *, step, window, autocast):
        with autocast():
            inside.append(
                torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            )
        return real_evaluate(self, model, step=step, window=window, autocast=autocast)

    monkeypatch.setattr(LanguageTask, "evaluate", evaluate)
    loop.train(tiny_config("ce", train={"steps": 2, "dtype": "bfloat16"}), tmp_path, show_progress=False)
    assert inside == [True, True]


class CountingAutocast:
    """An autocast factory that counts the forward passes it wraps and records the grad mode."""

    def __init__(self):
        self.entered = 0

    def __call__(self):
        from contextlib import contextmanager

        @contextmanager
        def context():
            self.entered += 1
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield

        return context()


def test_arithmetic_and_forgetting_evaluations_run_in_the_autocast_they_are_handed():
    """Every forward pass of the arithmetic evaluation (answer CE and greedy decoding) and of the
    forgetting evaluation enters the run's autocast, and a bf16 evaluation differs from float32."""
    from replication.models import build_model
    from replication.tasks.forgetting.task import Task as ForgettingTask

    from .test_arithmetic import small_task
    from .test_forgetting import smoke_config

    for task in (small_task(), ForgettingTask(smoke_config(), torch.device("cpu"))):
        torch.manual_seed(0)
        model = build_model(task.config.model)
        with torch.no_grad():
            for p in model.parameters():  # zero-initialized heads would give the same numbers in any dtype
                p.normal_(0.0, 0.3)
        autocast = CountingAutocast()
        in_bf16 = task.evaluate(model, step=1, window=64, autocast=autocast)
        in_float32 = task.evaluate(model, step=1, window=64)
        assert autocast.entered >= 2, type(task)
        key = "ood/answer_ce" if "ood/answer_ce" in in_float32 else "val/a/l1"
        assert in_bf16[key] != in_float32[key] and in_bf16[key] == pytest.approx(in_float32[key], rel=0.05)


def test_flex_attention_on_cuda_needs_compile():
    config = tiny_config("ce", model={"attention": "auto"})
    with pytest.raises(ConfigError, match="uncompiled, FlexAttention builds every"):
        toolchain.check_config(config, 1, torch.device("cuda"), backend="inductor")
    compiled = tiny_config("ce", model={"attention": "auto"}, train={"compile": True})
    toolchain.check_config(compiled, 1, torch.device("cuda"), backend="inductor")
    toolchain.check_config(config, 1, torch.device("cpu"), backend="inductor")  # auto is sdpa on CPU


def test_compiling_without_a_cxx_compiler_is_refused_naming_the_ways_out(monkeypatch, tmp_path):
    compiled = tiny_config("ce", train={"compile": True})
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)  # a machine with no C++ compiler
    with pytest.raises(
        ConfigError, match=r"needs a C\+\+ compiler.*apt install g\+\+\), or set train.compile: false"
    ):
        toolchain.check_config(compiled, 1, torch.device("cpu"), backend="inductor")
    with pytest.raises(ConfigError, match=r"needs a C\+\+ compiler"):  # the loop checks with its backend
        loop.Trainer(compiled, tmp_path, show_progress=False)
    toolchain.check_config(tiny_config("ce"), 1, torch.device("cpu"), backend="inductor")  # eager needs none
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")  # nor does a backend that generates no code
    toolchain.check_config(compiled, 1, torch.device("cpu"), backend="eager")
    loop.Trainer(compiled, tmp_path, show_progress=False)
    monkeypatch.setattr(
        toolchain.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "clang++" else None
    )
    assert toolchain.cxx_compiler() == "clang++"


@pytest.mark.parametrize("compiled,every,donated", [(True, 2, False), (True, 0, True), (False, 2, True)])
def test_a_compiled_run_that_logs_rq1_compiles_without_donated_buffers(
    tmp_path, monkeypatch, compiled, every, donated
):
    # RQ1's record keeps a backward's graph (retain_graph), which a compiled backward that donates its
    # saved buffers refuses; seen with inductor at the cpu scale when the DAG's cache held a gapt_joint
    # run's kernels. The setting is the run's own: it is restored after.
    import torch._functorch.config as functorch_config

    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")
    seen = []
    monkeypatch.setattr(loop.Trainer, "_run", lambda self: seen.append(functorch_config.donated_buffer) or {})
    config = tiny_config("ce", train={"compile": compiled}, alignment={"every": every})
    before = functorch_config.donated_buffer
    loop.Trainer(config, tmp_path, show_progress=False).run()
    assert seen == [donated] and functorch_config.donated_buffer == before


def test_greedy_decoding_through_compiled_blocks_compiles_a_bounded_number_of_graphs(dynamo):
    """Each decoded token is a new sequence length: through the compiled blocks that would be one
    graph per length, past dynamo's recompile limit (an error here, as in a compiled run). Decoding
    runs eagerly, and its tokens are those of the uncompiled model."""
    from replication.models import build_model

    from .test_arithmetic import small_task

    task = small_task()
    torch.manual_seed(0)
    model = build_model(task.config.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    prompts = torch.randint(5, 15, (4, 6))
    expected = task.greedy_continuation(model, prompts, new_tokens=12, window=64)
    model.compile_blocks(backend="eager")
    assert torch.equal(task.greedy_continuation(model, prompts, new_tokens=12, window=64), expected)
    assert dynamo["stats"].get("unique_graphs", 0) == 0  # nothing compiled while decoding


def test_a_compiled_run_makes_a_recompile_limit_hit_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "eager")
    # dynamo's own patch, which restores the setting (monkeypatch's undo would delete the option)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False):
        loop.Trainer(tiny_config("ce", train={"compile": True}), tmp_path, show_progress=False)
        assert torch._dynamo.config.fail_on_recompile_limit_hit  # no silent fall back to eager


def test_the_compiled_cross_entropy_is_the_eager_one_with_ignored_targets_and_both_shapes(dynamo):
    """``LanguageTask.compile_loss`` (a GPU run under train.compile): the loss and its gradient are the
    eager ones, -100 targets ignored, and a second shape (evaluation's) traces no third graph."""
    from replication.tasks.registry import build_task

    task = build_task(tiny_config("ce"), torch.device("cpu"))  # the synthetic language
    eager = task.main_loss
    task.compile_loss(backend="inductor")
    generator = torch.Generator().manual_seed(0)
    for rows in (2, 3):
        logits = torch.randn(rows, 16, 50, generator=generator)
        targets = torch.randint(0, 50, (rows, 16), generator=generator)
        targets[:, :3] = -100
        batch = type("Batch", (), {"targets": targets})()
        grads = []
        for loss_fn in (eager, task.main_loss):
            x = logits.clone().requires_grad_()
            loss = loss_fn(x, batch)
            loss.backward()
            grads.append((loss.detach(), x.grad))
        (a, ga), (b, gb) = grads
        assert torch.allclose(a, b, rtol=1e-6) and torch.allclose(ga, gb, rtol=1e-5, atol=1e-8)
        assert ga[:, :3].abs().sum() == 0
    assert dynamo["stats"]["unique_graphs"] <= 2, dict(dynamo["stats"])  # static, then dynamic
