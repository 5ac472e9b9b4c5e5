"""Matrix-Based Entropy (MBE) of representations (docs/SPEC.md section 2).

For a matrix Z with n rows of width d, K = Z Z^T is the linear Gram (no centring, no row
normalisation) and rho = K / tr K has eigenvalues lambda_i >= 0 summing to 1. The order-alpha
Renyi entropy is S_alpha = log(sum_i lambda_i^alpha) / (1 - alpha), natural log.

Everything here computes in float32 whatever the input dtype, and with autocast disabled inside, so
a bf16 model reports (and regularizes) the same number as its float32 copy of the activations, and
MBE under the run's autocast (training, evaluation) is the same function as outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_EPS = 1e-7
DEFAULT_PATCH_SIZE = 8


GRAM_ROUTES = ("auto", "rows", "columns")
_TINY = 1e-30  # floor of a squared norm before dividing by it


def _safe_pow(x: Tensor, alpha: float) -> Tensor:
    """x ** alpha for x >= 0 with 0 ** alpha = 0 and a finite gradient at 0, also for alpha < 1."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).pow(alpha), torch.zeros_like(x))


def gram_matrix(z: Tensor, gram: str = "auto") -> Tensor:
    """Gram of the rows, z z^T (n x n), or of the columns, z^T z (d x d): (..., m, m).

    The two share their non-zero eigenvalues, so every spectral quantity here is the same on
    either; "auto" takes the smaller one, which is cheaper to form and to decompose.
    """
    if gram not in GRAM_ROUTES:
        raise ValueError(f"gram must be one of {GRAM_ROUTES}, got {gram!r}")
    n, d = z.shape[-2], z.shape[-1]
    if gram == "rows" or (gram == "auto" and n <= d):
        return z @ z.transpose(-1, -2)
    return z.transpose(-1, -2) @ z


def renyi_entropy(
    z: Tensor,
    alpha: float = 2.0,
    eps: float = DEFAULT_EPS,
    clamp: bool = False,
    *,
    gram: str = "auto",
    eigen: bool = False,
) -> Tensor:
    """Matrix-based Renyi entropy of the rows of z: (..., n, d) -> (...), float32, differentiable.

    With eigenvalues mu_i of K = z z^T (unnormalised, so sum mu = tr K):

        S_alpha = log((sum mu_i^alpha + eps) / ((sum mu_i)^alpha + eps)) / (1 - alpha)

    which is log(sum lambda_i^alpha) / (1 - alpha) for lambda = mu / tr K when eps -> 0.
    - alpha = 2 uses the closed form with no eigendecomposition: sum mu^2 = ||K||_F^2 and
      sum mu = tr K = ||z||_F^2, so S_2 = log(tr(K)^2 + eps) - log(||K||_F^2 + eps).
    - any other alpha > 0 goes through the eigenvalues of the smaller Gram; alpha = 1 is the von
      Neumann limit -sum lambda log lambda with lambda = mu / (tr K + eps).

    Numerics (choices docs/SPEC.md leaves open): z is first scaled to unit Frobenius norm, which changes
    nothing mathematically (tr K becomes 1) but makes eps a tolerance relative to the patch's own
    scale, so the value is exactly scale-invariant and float32 cannot overflow on large
    activations. eps is then added to both sides of the ratio, so S lies in [0, log n] for every
    input, a rank-1 z gives exactly 0 and an all-zero z (a dead patch) gives 0 with a zero gradient
    instead of log(eps). Nothing is centred, so S is not invariant to shifting z.

    clamp=True clamps the result at 0, as the author's later code did; with this placement of eps
    it only removes float32 round-off of the eigenvalue route.

    gram ("auto", "rows", "columns") forces one Gram and eigen=True forces the eigenvalue route at
    alpha = 2; both exist for tests and benchmarks, the defaults are the fast choice.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if z.dim() < 2:
        raise ValueError(f"renyi_entropy expects (..., n, d), got shape {tuple(z.shape)}")
    # autocast would run the Gram matmul in bf16 (docs/SPEC.md section 2: it must not), so it is off here
    with torch.autocast(device_type=z.device.type, enabled=False):
        return _renyi_entropy_float32(z.float(), alpha, eps, clamp, gram, eigen)


def _renyi_entropy_float32(
    z: Tensor, alpha: float, eps: float, clamp: bool, gram: str, eigen: bool
) -> Tensor:
    sq_norm = z.square().sum(dim=(-2, -1), keepdim=True)
    z = z * torch.rsqrt(sq_norm.clamp_min(_TINY))
    k = gram_matrix(z, gram)
    trace = z.square().sum(dim=(-2, -1))  # 1, or 0 for an all-zero z
    if alpha == 2.0 and not eigen:
        frob_sq = k.square().sum(dim=(-2, -1))
        entropy = torch.log(trace.square() + eps) - torch.log(frob_sq + eps)
    else:
        mu = torch.linalg.eigvalsh(k).clamp_min(0.0)
        if alpha == 1.0:
            lam = mu / (trace.unsqueeze(-1) + eps)
            # 0 log 0 = 0, written with a safe argument so the gradient stays finite at lambda = 0
            safe = torch.where(lam > 0, lam, torch.ones_like(lam))
            entropy = -(lam * torch.log(safe)).sum(dim=-1)
        else:
            power_sum = _safe_pow(mu, alpha).sum(dim=-1)
            entropy = (torch.log(power_sum + eps) - torch.log(_safe_pow(trace, alpha) + eps)) / (1.0 - alpha)
    if clamp:
        entropy = entropy.clamp_min(0.0)
    return entropy


def patches(h: Tensor, patch_size: int = DEFAULT_PATCH_SIZE) -> Tensor:
    """Cut (B, S, D) into non-overlapping contiguous patches: (B * S / P, P, D).

    Patches ignore document boundaries (docs/SPEC.md section 2).
    """
    if h.dim() != 3:
        raise ValueError(f"expected hidden states of shape (B, S, D), got {tuple(h.shape)}")
    batch, seq, width = h.shape
    if patch_size < 1 or seq % patch_size != 0:
        raise ValueError(
            f"sequence length {seq} is not divisible by the MBE patch size {patch_size}; "
            f"choose a sequence length that is a multiple of {patch_size}"
        )
    return h.reshape(batch * (seq // patch_size), patch_size, width)


def patch_mbe(
    h: Tensor,
    patch_size: int = DEFAULT_PATCH_SIZE,
    alpha: float = 2.0,
    eps: float = DEFAULT_EPS,
    clamp: bool = False,
) -> Tensor:
    """Patch-wise MBE of one block's hidden states: (B, S, D) -> (), the mean over all patches."""
    return renyi_entropy(patches(h, patch_size), alpha=alpha, eps=eps, clamp=clamp).mean()


def layer_mbe(
    hidden_states: Sequence[Tensor],
    layers: Sequence[int] | None = None,
    patch_size: int = DEFAULT_PATCH_SIZE,
    alpha: float = 2.0,
    eps: float = DEFAULT_EPS,
    clamp: bool = False,
) -> Tensor:
    """Patch MBE of each selected block: a list of (B, S, D) -> (len(layers),), float32.

    layers=None takes every block. Blocks of one shape go through renyi_entropy in one batched call
    (a handful of kernels instead of a handful per block). Gradients flow unless the caller detaches
    or runs under no_grad.
    """
    chosen = list(range(len(hidden_states)) if layers is None else layers)
    if not chosen:
        raise ValueError("layer_mbe needs at least one layer")
    selected = [hidden_states[i] for i in chosen]
    if len({tuple(h.shape) for h in selected}) > 1:
        return torch.stack([patch_mbe(h, patch_size, alpha, eps, clamp) for h in selected])
    stacked = patches(torch.stack(selected).flatten(0, 1), patch_size)  # (L * B * S / P, P, D)
    per_patch = renyi_entropy(stacked, alpha=alpha, eps=eps, clamp=clamp)
    return per_patch.view(len(selected), -1).mean(dim=1)
