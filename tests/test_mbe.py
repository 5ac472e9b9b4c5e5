import math

import numpy as np
import pytest
import torch

from replication.science.mbe import layer_mbe, patch_mbe, patches, renyi_entropy

ALPHAS = [0.5, 1.0, 2.0, 3.0]


def reference_entropy(z: np.ndarray, alpha: float) -> float:
    """Float64 eigenvalue reference straight from the definition in docs/SPEC.md section 2."""
    k = z @ z.T
    lam = np.clip(np.linalg.eigvalsh(k), 0.0, None) / np.trace(k)
    lam = lam[lam > 0]
    if alpha == 1.0:
        return float(-(lam * np.log(lam)).sum())
    return float(np.log((lam**alpha).sum()) / (1.0 - alpha))


def tolerance(alpha: float) -> float:
    # float32 eigenvalue noise of a rank-deficient Gram enters as noise^alpha: loose for alpha < 1
    return 2e-3 if alpha < 1 else 1e-4


def orthogonal_rows(n: int, d: int, norm: float = 3.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n, dtype=torch.float64))
    return norm * q.T  # (n, d), orthogonal rows of equal norm


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", [(8, 64), (64, 8), (8, 8), (5, 3), (3, 17)])
def test_matches_float64_reference_on_random_inputs(alpha, shape):
    z = torch.randn(*shape, dtype=torch.float64)
    got = renyi_entropy(z, alpha=alpha)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_entropy(z.numpy(), alpha), abs=tolerance(alpha))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_rank_one_rows_have_zero_entropy(alpha):
    z = torch.randn(8, 1) * torch.randn(1, 32)  # every row a multiple of one vector
    assert renyi_entropy(z, alpha=alpha).item() == pytest.approx(0.0, abs=tolerance(alpha) * 10)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n,d", [(8, 8), (8, 64), (4, 100)])
def test_orthogonal_equal_norm_rows_reach_log_n(alpha, n, d):
    z = orthogonal_rows(n, d)
    assert renyi_entropy(z, alpha=alpha).item() == pytest.approx(math.log(n), abs=1e-4)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_duplicated_rows_count_once(alpha):
    a, b = orthogonal_rows(2, 16)
    z = torch.stack([a, a, a, b, b, b])  # two distinct directions, equal weight
    got = renyi_entropy(z, alpha=alpha).item()
    assert got == pytest.approx(math.log(2), abs=tolerance(alpha))
    assert got == pytest.approx(reference_entropy(z.numpy(), alpha), abs=tolerance(alpha))


def test_unequal_weights_follow_the_reference():
    a, b, c = orthogonal_rows(3, 16)
    z = torch.stack([a, 2 * b, 0.5 * c, a])
    for alpha in ALPHAS:
        expected = reference_entropy(z.numpy(), alpha)
        assert renyi_entropy(z, alpha=alpha).item() == pytest.approx(expected, abs=tolerance(alpha))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_batched_leading_dims_equal_one_by_one(alpha):
    z = torch.randn(2, 3, 8, 20)
    got = renyi_entropy(z, alpha=alpha)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(renyi_entropy(z[i, j], alpha=alpha).item(), abs=1e-5)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", [(8, 32), (32, 8)])
def test_bounds_zero_to_log_n(alpha, shape):
    z = torch.randn(200, *shape) * torch.rand(200, 1, 1) * 10  # many matrices, mixed scales
    z[:50] = z[:50, :, :1] * torch.randn(50, 1, shape[1])  # some rank-1 ones, at the lower bound
    s = renyi_entropy(z, alpha=alpha, clamp=True)
    n = min(shape)  # the rank bounds the spectrum: log of the smaller side
    assert (s >= 0).all()
    assert (s <= math.log(n) + 1e-5).all()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(
    "scale", [1e-6, 1e-2, 0.3, 7.0, 1e3, 1e12]
)  # 1e12 would overflow an unnormalised Gram
def test_invariant_to_scaling(alpha, scale):
    z = torch.randn(8, 48)
    assert renyi_entropy(scale * z, alpha=alpha).item() == pytest.approx(
        renyi_entropy(z, alpha=alpha).item(), abs=1e-4
    )


@pytest.mark.parametrize("alpha", ALPHAS)
def test_not_invariant_to_shifting(alpha):
    z = torch.randn(8, 48)
    shifted = z + 2.0  # a common offset makes the rows more alike: no centring, lower entropy
    assert renyi_entropy(shifted, alpha=alpha).item() < renyi_entropy(z, alpha=alpha).item() - 0.1


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", [(8, 40), (40, 8), (12, 12)])
def test_row_and_column_grams_agree(alpha, shape):
    z = torch.randn(4, *shape)
    rows = renyi_entropy(z, alpha=alpha, gram="rows")
    cols = renyi_entropy(z, alpha=alpha, gram="columns")
    torch.testing.assert_close(rows, cols, atol=1e-5 if alpha >= 1 else 2e-3, rtol=0)


def test_closed_form_equals_eigenvalue_route_at_alpha_two():
    z = torch.randn(16, 8, 96)
    torch.testing.assert_close(renyi_entropy(z), renyi_entropy(z, eigen=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(8, 32),
        lambda: torch.randn(8, 1) * torch.randn(1, 32),  # rank 1: repeated zero eigenvalues
        lambda: torch.zeros(8, 32),  # a dead patch
        lambda: torch.randn(32, 8),
    ],
    ids=["random", "rank1", "zeros", "tall"],
)
def test_gradients_are_finite(alpha, make):
    z = make().requires_grad_(True)
    renyi_entropy(z, alpha=alpha).backward()
    assert torch.isfinite(z.grad).all()


def test_zero_matrix_has_zero_entropy():
    assert renyi_entropy(torch.zeros(8, 16)).item() == 0.0


def test_bfloat16_input_gives_the_float32_answer():
    z = torch.randn(4, 8, 64).to(torch.bfloat16)
    got = renyi_entropy(z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, renyi_entropy(z.float()), atol=0, rtol=0)
    h = torch.randn(2, 16, 32).to(torch.bfloat16)
    assert patch_mbe(h).item() == patch_mbe(h.float()).item()


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0])
def test_autocast_to_bfloat16_does_not_reach_the_entropy(alpha):
    # MBE is float32 inside autocast too: the value and the gradient equal those computed outside it
    h = torch.randn(3, 2, 32, 48, requires_grad=True)  # 3 blocks of (B, S, D), every Gram is 8 x 8
    outside = layer_mbe(list(h), alpha=alpha)
    (grad_outside,) = torch.autograd.grad(outside.sum(), h)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the forward under autocast, as in training
        inside = layer_mbe(list(h), alpha=alpha)
    (grad_inside,) = torch.autograd.grad(inside.sum(), h)  # backward outside it, as in training
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)
    assert torch.equal(grad_inside, grad_outside)


def test_rejects_non_positive_alpha():
    with pytest.raises(ValueError, match="alpha"):
        renyi_entropy(torch.randn(4, 4), alpha=0.0)


def test_patch_mbe_averages_contiguous_patches():
    # patch 0 (tokens 0-7) rank 1 -> 0; patch 1 (tokens 8-15) orthogonal rows -> log 8
    rank_one = torch.randn(8, 1) * torch.randn(1, 16)
    orthogonal = orthogonal_rows(8, 16).float()
    h = torch.cat([rank_one, orthogonal]).unsqueeze(0)  # (1, 16, 16)
    assert patch_mbe(h, patch_size=8).item() == pytest.approx(math.log(8) / 2, abs=1e-4)
    # one patch over the whole sequence is a different number: patches really are contiguous chunks
    assert patch_mbe(h, patch_size=16).item() != pytest.approx(math.log(8) / 2, abs=1e-2)


def test_patch_mbe_is_the_mean_over_batch_and_patches():
    h = torch.randn(3, 24, 20)
    manual = torch.stack([renyi_entropy(h[b, i : i + 8]) for b in range(3) for i in range(0, 24, 8)]).mean()
    assert patch_mbe(h, patch_size=8).item() == pytest.approx(manual.item(), abs=1e-6)


def test_patch_mbe_rejects_a_length_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match="not divisible by the MBE patch size 8"):
        patch_mbe(torch.randn(2, 12, 16), patch_size=8)


def test_layer_mbe_selects_layers_in_order():
    hidden = [torch.randn(2, 16, 12) * (i + 1) + i for i in range(4)]
    every = layer_mbe(hidden)
    assert every.shape == (4,)
    chosen = layer_mbe(hidden, layers=[3, 1])
    torch.testing.assert_close(chosen, every[[3, 1]])
    assert every[2].item() == pytest.approx(patch_mbe(hidden[2]).item(), abs=1e-6)


def test_layer_mbe_carries_gradients_to_each_layer():
    hidden = [torch.randn(1, 8, 16, requires_grad=True) for _ in range(3)]
    layer_mbe(hidden, layers=[0, 2]).sum().backward()
    assert hidden[0].grad.abs().sum() > 0 and hidden[2].grad.abs().sum() > 0
    assert hidden[1].grad is None


def test_layer_mbe_of_blocks_of_different_shapes_falls_back_to_one_by_one():
    hidden = [torch.randn(2, 16, 12), torch.randn(2, 8, 20)]
    values = layer_mbe(hidden)
    assert values.tolist() == pytest.approx([patch_mbe(h).item() for h in hidden], abs=1e-6)


def test_patch_mbe_passes_alpha_eps_and_clamp_through():
    # identity: patch_mbe(h, P, alpha, eps, clamp) = mean of renyi_entropy over the patches
    # with the same options
    h = torch.randn(2, 16, 12)
    for kwargs in ({"alpha": 3.0}, {"eps": 0.5}, {"alpha": 1.0, "clamp": True}):
        expected = renyi_entropy(patches(h, 8), **kwargs).mean()
        assert patch_mbe(h, 8, **kwargs).item() == pytest.approx(expected.item(), rel=1e-6)
    assert patch_mbe(h, 8, alpha=3.0).item() != pytest.approx(patch_mbe(h, 8).item(), rel=1e-3)
    assert patch_mbe(h, 8, eps=0.5).item() != pytest.approx(patch_mbe(h, 8).item(), rel=1e-3)
    # clamp defaults to off: a value a hair below 0 (eigenvalue round-off) is kept as it is
    torch.manual_seed(1)
    rank_one = torch.randn(1, 1, 4).expand(1, 8, 4) * torch.rand(1, 8, 1)  # round-off gives about -9e-8
    unclamped = renyi_entropy(rank_one, alpha=3.0)
    assert unclamped.item() < 0 and patch_mbe(rank_one, 8, alpha=3.0).item() == unclamped.item()
    assert patch_mbe(rank_one, 8, alpha=3.0, clamp=True).item() == 0.0
