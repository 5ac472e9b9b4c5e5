import pytest
import torch

from replication.config.base import (
    AdamConfig,
    AdamWConfig,
    GPT2ModelConfig,
    MLPModelConfig,
    ModdedModelConfig,
    MuonAdamConfig,
    ScheduleConfig,
)
from replication.models import build_model
from replication.training.optim import Muon, Optimizers, lr_multiplier, newton_schulz


def test_schedule_is_flat_for_sixty_percent_then_linear_to_a_tenth():
    schedule = ScheduleConfig()
    mults = [lr_multiplier(s, 1000, schedule) for s in range(1001)]
    assert mults[0] == mults[599] == 1.0
    assert mults[800] == pytest.approx(0.55)
    assert mults[1000] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(mults, mults[1:]))


def test_warmup_rises_linearly():
    schedule = ScheduleConfig(warmup_steps=10, stable_fraction=1.0)
    assert [lr_multiplier(s, 100, schedule) for s in (0, 4, 9, 10, 99)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0]
    )


def test_muon_adam_groups_and_momentum_warmup():
    model = build_model(ModdedModelConfig(vocab_size=40, n_layer=2, d_model=16, n_head=2, head_dim=8))
    opts = Optimizers(MuonAdamConfig(), model, total_steps=1000)
    muon, adam = opts.optimizers
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.Adam)
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    rates = opts.set_step(0)
    assert rates == pytest.approx({"muon": 0.05, "head": 0.008, "embed": 0.6, "scalar": 0.04})
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.85)
    opts.set_step(150)
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.90)
    rates = opts.set_step(900)
    assert muon.param_groups[0]["momentum"] == pytest.approx(0.95)
    assert rates["muon"] == pytest.approx(0.05 * lr_multiplier(900, 1000, ScheduleConfig()))
    assert adam.defaults["betas"] == (0.8, 0.95) and adam.defaults["eps"] == 1e-10


def test_adamw_decays_matrices_only_and_adam_is_constant_by_default():
    model = build_model(GPT2ModelConfig(vocab_size=40, n_layer=1, d_model=16, n_head=2, max_seq_len=8))
    (adamw,) = Optimizers(AdamWConfig(), model, 100).optimizers
    decay = {g["name"]: g["weight_decay"] for g in adamw.param_groups}
    assert decay == {"decay": 0.1, "no_decay": 0.0}
    mlp_opts = Optimizers(AdamConfig(), build_model(MLPModelConfig()), 100)
    assert mlp_opts.set_step(99) == {"all": 0.01}


def test_muon_adam_refuses_a_model_without_its_groups():
    with pytest.raises(ValueError, match="muon_adam needs the modded model"):
        Optimizers(MuonAdamConfig(), build_model(MLPModelConfig()), 10)


def _three_steps(make_optimizer):
    """Three steps of ``make_optimizer`` from one start on one set of gradients, for a wide, a tall and a
    square matrix: the matrices after them."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(8, 24), (24, 8), (16, 16)]]
    opt = make_optimizer(params)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("nesterov, weight_decay", [(True, 0.0), (False, 0.1)])
def test_muon_is_torchs_step_with_the_iteration_in_bfloat16_and_float32_on_a_cpu(nesterov, weight_decay):
    kwargs = {"lr": 0.05, "momentum": 0.9, "nesterov": nesterov, "weight_decay": weight_decay}
    theirs = _three_steps(lambda ps: torch.optim.Muon(ps, **kwargs))
    in_bf16 = _three_steps(lambda ps: Muon(ps, cpu_dtype=torch.bfloat16, **kwargs))
    ours = _three_steps(lambda ps: Muon(ps, **kwargs))
    for t, b, o in zip(theirs, in_bf16, ours):
        assert torch.equal(t, b)  # the same step to the last bit
        # float32: the same steps rounded otherwise (each update within 2 % of the learning rate)
        assert not torch.equal(t, o) and torch.allclose(t, o, rtol=0, atol=3 * 0.05 * 2e-2)


def test_newton_schulz_in_float32_is_the_iteration_and_in_bfloat16_its_rounding():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(16, 48, generator=gen)
    coefficients = (3.4445, -4.7750, 2.0315)
    a, b, c = coefficients
    x = g.double() / g.double().norm()  # five steps of the quintic iteration in float64
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    error = {
        d: (newton_schulz(g, coefficients, 5, 1e-7, d).double() - x).abs().max().item()
        for d in (torch.float32, torch.bfloat16)
    }
    assert error[torch.float32] < 1e-5 and error[torch.bfloat16] > 1e-3
    tall = newton_schulz(g.T, coefficients, 5, 1e-7, torch.float32)  # a tall matrix: the transposed result
    assert torch.allclose(tall.double(), x.T, atol=1e-5)
