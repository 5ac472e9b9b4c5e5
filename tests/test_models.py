import math

import pytest
import torch

from replication.config.base import GPT2ModelConfig, MLPModelConfig, ModdedModelConfig
from replication.models import build_model
from replication.tasks.lm import document_ids

SMALL = dict(vocab_size=50, n_layer=4, d_model=32, n_head=2, head_dim=16)


def randomized(model):
    """Zero-init projections make a fresh model blind to its inputs; give every weight a value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ["modded", "gpt2"])
def test_future_tokens_never_change_past_logits(name):
    cfg = (
        ModdedModelConfig(**SMALL)
        if name == "modded"
        else GPT2ModelConfig(vocab_size=50, n_layer=3, d_model=32, n_head=2)
    )
    model = randomized(build_model(cfg)).eval()
    idx = torch.randint(1, 50, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(1, 50, (2, 9))
    a, b = model(idx).output, model(changed).output
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_other_documents_are_invisible():
    model = randomized(build_model(ModdedModelConfig(**SMALL))).eval()
    idx = torch.randint(1, 50, (1, 24))
    idx[0, 10] = 0  # a separator starts the second document at position 10
    changed = idx.clone()
    changed[0, 2:10] = torch.randint(1, 50, (8,))  # rewrite the first document only
    docs_a, docs_b = document_ids(idx, 0), document_ids(changed, 0)
    a, b = model(idx, docs=docs_a).output, model(changed, docs=docs_b).output
    torch.testing.assert_close(a[:, 10:], b[:, 10:], atol=1e-6, rtol=0)
    # without the document mask the second document would see the first
    c, d = model(idx).output, model(changed).output
    assert not torch.allclose(c[:, 10:], d[:, 10:])


def test_sliding_window_limits_what_one_block_sees():
    model = randomized(build_model(ModdedModelConfig(**{**SMALL, "n_layer": 1}))).eval()
    idx = torch.randint(1, 50, (1, 32))
    t, window = 20, 8

    def logits_at_t_after_changing(pos):
        changed = idx.clone()
        changed[0, pos] = (idx[0, pos] % 49) + 1
        return model(changed, window=window).output[0, t]

    base = model(idx, window=window).output[0, t]
    torch.testing.assert_close(logits_at_t_after_changing(t - window), base, atol=1e-6, rtol=0)  # outside
    assert not torch.allclose(logits_at_t_after_changing(t - window + 1), base)  # inside


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_matches_the_plain_path():
    torch.manual_seed(0)
    sdpa = randomized(build_model(ModdedModelConfig(**SMALL, attention="sdpa"))).eval()
    flex = build_model(ModdedModelConfig(**SMALL, attention="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    idx = torch.randint(1, 50, (2, 128))
    idx[:, 40] = 0
    idx[1, 90] = 0
    docs = document_ids(idx, 0)
    with torch.no_grad():  # CPU flex attention is forward-only (the unfused reference of the GPU kernel)
        out_flex = flex(idx, docs=docs, window=32)
        out_sdpa = sdpa(idx, docs=docs, window=32)
    torch.testing.assert_close(out_flex.output, out_sdpa.output, atol=2e-5, rtol=1e-5)


def test_paper_size_modded_model_has_about_162m_parameters():
    model = build_model(ModdedModelConfig())
    n = sum(p.numel() for p in model.parameters())
    assert 161_500_000 < n < 163_000_000, n
    assert model.n_blocks == 12 and len(model.skip_weights) == 6


def test_hidden_states_are_block_outputs_and_upto_stops_early():
    model = randomized(build_model(ModdedModelConfig(**SMALL))).eval()
    idx = torch.randint(1, 50, (2, 16))
    full = model(idx)
    assert full.output.shape == (2, 16, 50)
    assert len(full.hidden) == 4 and all(h.shape == (2, 16, 32) for h in full.hidden)
    part = model(idx, upto=2)
    assert part.output is None and len(part.hidden) == 2
    for a, b in zip(part.hidden, full.hidden[:2]):
        torch.testing.assert_close(a, b)


def test_fresh_modded_model_predicts_uniformly():
    model = build_model(ModdedModelConfig(**SMALL))
    logits = model(torch.randint(0, 50, (1, 8))).output
    assert torch.all(logits == 0)  # zero-init head
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.zeros(8, dtype=torch.long))
    assert ce.item() == pytest.approx(math.log(50))


def test_logits_are_soft_capped():
    model = build_model(ModdedModelConfig(**SMALL))
    with torch.no_grad():
        model.head.weight.fill_(10.0)
    assert model(torch.randint(0, 50, (1, 8))).output.abs().max() <= 30.0


def test_window_schedule_grows_linearly_in_multiples():
    model = build_model(ModdedModelConfig(**SMALL))
    windows = [model.attention_window(p / 100) for p in range(101)]
    assert windows[0] == 64 and windows[-1] == 1792
    assert all(w % 64 == 0 for w in windows) and windows == sorted(windows)
    assert windows[50] == 64 * round((64 + 1728 * 0.5) / 64)


def test_gpt2_ties_its_head_to_the_embedding():
    model = build_model(GPT2ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=2, max_seq_len=16))
    out = model(torch.randint(0, 50, (2, 16)))
    assert out.output.shape == (2, 16, 50) and len(out.hidden) == 2
    with torch.no_grad():
        model.wte.weight.zero_()
    assert torch.all(model(torch.randint(0, 50, (1, 4))).output == 0)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_mlp_exposes_its_hidden_layer_as_one_sequence_of_samples():
    model = build_model(MLPModelConfig())
    x = torch.randn(32, 10)
    out = model(x)
    assert out.output.shape == (32, 1)
    assert len(out.hidden) == 1 and out.hidden[0].shape == (1, 32, 50)
    assert torch.all(out.hidden[0] >= 0)  # after the ReLU
    torch.testing.assert_close(model.out(out.hidden[0][0]), out.output)


@pytest.mark.parametrize(
    "cfg", [ModdedModelConfig(**SMALL), GPT2ModelConfig(n_layer=2, d_model=32, n_head=2), MLPModelConfig()]
)
def test_param_groups_cover_every_parameter_once(cfg):
    model = build_model(cfg)
    grouped = [id(p) for ps in model.param_groups().values() for p in ps]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
