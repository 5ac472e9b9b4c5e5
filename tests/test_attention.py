"""FlexAttention (the GPU path) against SDPA with a dense mask (the CPU path), checked on CPU.

Both paths must let every query see exactly the keys that are earlier or itself, in its own
document, and less than ``window`` positions back; ``attention_mask`` builds that as a dense boolean
mask for SDPA, ``flex_block_mask`` as a BlockMask for FlexAttention.

What torch 2.13 does on CPU: ``flex_attention`` runs in eager mode (an unfused implementation that
materializes the score matrix, the reference of the fused GPU kernel), with any sequence length
(the block mask pads to its 128-token blocks), and needs no ``torch.compile``. It refuses backward:
any input that requires grad raises ``NotImplementedError: FlexAttention does not support backward
on CPU`` (eager and compiled alike; the check runs before dispatch). So on CPU the forward passes
are compared under ``no_grad`` and the backward tests skip, naming that error; on a CUDA device
(``gpu`` marker) the same tests compare gradients too.

Tolerance: both paths compute softmax(q k^T / sqrt(d)) v in float32 over the same keys; they differ
only in summation order and in how a masked key is dropped (-inf in a dense mask, a skipped block or
-inf in the block mask): a few float32 roundings, about 1e-6 relative. A mask that differs by one
term moves whole keys' weights and changes outputs by order one (``test_the_comparison_sees_each_mask_term``
measures it at these shapes), so the checks allow 1e-4 of the reference's largest magnitude
(CPU) and 1e-3 on CUDA, where SDPA and eager flex use different kernels.
"""

import pytest
import torch

from replication.config.base import ModdedModelConfig
from replication.models.modded import CausalSelfAttention, ModdedGPT, attention_mask, flex_block_mask

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# relative to the largest magnitude of the reference tensor (see the module docstring)
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]

# three 128-token blocks: a window of 100 leaves blocks fully masked (query block 2, key block 0),
# partly masked (every diagonal block) and never all visible, and the documents cut blocks unevenly
SEQ, WINDOW = 384, 100
CFG = ModdedModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, head_dim=16, attention="sdpa")


def documents(batch: int, seq: int, device: str) -> torch.Tensor:
    """(B, T) document ids: several documents in a row, their boundaries different in every row."""
    docs = torch.zeros(batch, seq, dtype=torch.long)
    starts = [[37, 150, 160, 300], [90, 240, 333]]
    for b in range(batch):
        for start in starts[b % len(starts)]:
            docs[b, start:] += 1
    return docs.to(device)


def block_mask(docs: torch.Tensor, window: int):
    return flex_block_mask(docs, window)


def check_close(actual: torch.Tensor, expected: torch.Tensor, device: str, what: str) -> None:
    scale = expected.abs().max().item()
    assert scale > 0, f"{what}: the reference is all zeros; the comparison would prove nothing"
    error = (actual - expected).abs().max().item()
    assert error <= TOLERANCE[device] * scale, (
        f"{what}: max |flex - sdpa| = {error:.3g}, reference max {scale:.3g}"
    )


def randomized(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Zero-initialized projections and head would make the outputs (and most gradients) zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return module


def flex_grad_or_skip(device: str) -> None:
    """Skip a backward comparison where FlexAttention cannot differentiate, naming what fails."""
    if device != "cpu":
        return
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.zeros(1, 1, 128, 16, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError as error:
        pytest.skip(
            f"torch {torch.__version__}: flex_attention with requires_grad inputs on CPU raises "
            f"NotImplementedError: {error}"
        )


def attention_pair(device: str) -> tuple[CausalSelfAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    attn = randomized(CausalSelfAttention(CFG)).to(device)
    x = torch.randn(2, SEQ, CFG.d_model, device=device)
    v1 = torch.randn(2, SEQ, CFG.n_head, CFG.head_dim, device=device)  # a later block's value residual
    return attn, x, v1, documents(2, SEQ, device)


@pytest.mark.parametrize("device", DEVICES)
def test_attention_forward_flex_matches_sdpa(device):
    attn, x, v1, docs = attention_pair(device)
    with torch.no_grad():
        flex, _ = attn(x, v1, block_mask(docs, WINDOW))
        sdpa, _ = attn(x, v1, attention_mask(docs, WINDOW))
    check_close(flex, sdpa, device, "attention output")


@pytest.mark.parametrize("device", DEVICES)
def test_attention_backward_flex_matches_sdpa(device):
    flex_grad_or_skip(device)
    attn, x, v1, docs = attention_pair(device)
    grads = {}
    for name, mask in (("flex", block_mask(docs, WINDOW)), ("sdpa", attention_mask(docs, WINDOW))):
        attn.zero_grad()
        xi, v1i = x.clone().requires_grad_(), v1.clone().requires_grad_()
        out, _ = attn(xi, v1i, mask)
        # a fixed random cotangent, so that every output element's gradient counts
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device))
        grads[name] = {
            "x": xi.grad,
            "v1": v1i.grad,
            **{n: p.grad.clone() for n, p in attn.named_parameters()},
        }
    for key, expected in grads["sdpa"].items():
        check_close(grads["flex"][key], expected, device, f"gradient of {key}")


def model_pair(device: str) -> tuple[ModdedGPT, ModdedGPT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    sdpa = randomized(ModdedGPT(CFG)).to(device)
    flex = ModdedGPT(CFG.model_copy(update={"attention": "flex"})).to(device)
    flex.load_state_dict(sdpa.state_dict())
    idx = torch.randint(1, CFG.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(3)).to(device)
    return sdpa, flex, idx, documents(2, SEQ, device)


@pytest.mark.parametrize("device", DEVICES)
def test_model_forward_flex_matches_sdpa(device):
    sdpa, flex, idx, docs = model_pair(device)
    with torch.no_grad():
        a, b = flex(idx, docs=docs, window=WINDOW), sdpa(idx, docs=docs, window=WINDOW)
    check_close(a.output, b.output, device, "logits")
    assert len(a.hidden) == len(b.hidden) == CFG.n_layer
    for i, (h_flex, h_sdpa) in enumerate(zip(a.hidden, b.hidden)):
        check_close(h_flex, h_sdpa, device, f"hidden state of block {i}")


@pytest.mark.parametrize("device", DEVICES)
def test_model_backward_flex_matches_sdpa(device):
    flex_grad_or_skip(device)
    sdpa, flex, idx, docs = model_pair(device)
    targets = torch.roll(idx, -1, dims=1)
    for model in (flex, sdpa):
        out = model(idx, docs=docs, window=WINDOW)
        torch.nn.functional.cross_entropy(out.output.flatten(0, 1), targets.flatten()).backward()
    flex_grads = dict(flex.named_parameters())
    for name, p in sdpa.named_parameters():
        assert p.grad is not None and flex_grads[name].grad is not None, name
        check_close(flex_grads[name].grad, p.grad, device, f"gradient of {name}")


def test_the_comparison_sees_each_mask_term():
    """At these shapes each term of the mask changes the output far beyond the tolerance, so a
    block mask that dropped one (or a dense mask that did) fails the tests above."""
    from torch.nn.attention.flex_attention import create_block_mask

    attn, x, v1, docs = attention_pair("cpu")
    window = torch.tensor(WINDOW)

    def flex_without(term: str):
        def mask_mod(b, h, q, k):
            terms = {"causal": q >= k, "window": q - k < window, "document": docs[b, q] == docs[b, k]}
            allowed = q >= 0
            for name, value in terms.items():
                if name != term:
                    allowed = allowed & value
            return allowed

        return create_block_mask(mask_mod, docs.size(0), None, SEQ, SEQ, device="cpu")

    with torch.no_grad():
        reference, _ = attn(x, v1, attention_mask(docs, WINDOW))
        scale = reference.abs().max().item()
        for term in ("causal", "window", "document"):
            broken, _ = attn(x, v1, flex_without(term))
            error = (broken - reference).abs().max().item()
            assert error > 100 * TOLERANCE["cpu"] * scale, (term, error, scale)
        # and the documents of row 0 differ from those of row 1: a mask_mod indexing docs[0] for every
        # row would be caught too
        one_row = docs[:1].expand_as(docs).contiguous()
        broken, _ = attn(x, v1, attention_mask(one_row, WINDOW))
        assert (broken - reference).abs().max().item() > 100 * TOLERANCE["cpu"] * scale
