"""How apart two groups' representations are, and how much one group is forgotten (docs/SPEC.md section 7).

The hidden representations of the two conflicting groups A and B are (n, d) tensors, one row per
sample. Every function here is pure: tensors or numbers in, a number out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


def _check_pair(h_a: Tensor, h_b: Tensor) -> None:
    if h_a.dim() != 2 or h_b.dim() != 2 or h_a.shape[1] != h_b.shape[1]:
        shapes = f"{tuple(h_a.shape)} and {tuple(h_b.shape)}"
        raise ValueError(f"expected two (n, d) tensors of the same width, got {shapes}")
    if h_a.shape[0] < 1 or h_b.shape[0] < 1:
        raise ValueError("each group needs at least one sample")


def within_variance(h: Tensor) -> Tensor:
    """Mean over the rows of h (n, d) of the squared distance to their mean: ()."""
    centred = h - h.mean(dim=0, keepdim=True)
    return centred.square().sum(dim=1).mean()


def separation_ratio(h_a: Tensor, h_b: Tensor) -> float:
    """||mean(h_a) - mean(h_b)|| / sqrt((var_a + var_b) / 2) for h_a (n_a, d) and h_b (n_b, d).

    var_g is ``within_variance`` of group g. The ratio is 0 for groups with the same mean, and
    invariant to scaling both groups by one factor and to shifting both by one vector. It is
    computed in float64; identical constant groups (0 / 0) give 0, distinct constant groups inf.
    """
    _check_pair(h_a, h_b)
    h_a, h_b = h_a.detach().double(), h_b.detach().double()
    between = torch.linalg.vector_norm(h_a.mean(dim=0) - h_b.mean(dim=0)).item()
    within = math.sqrt((within_variance(h_a).item() + within_variance(h_b).item()) / 2)
    if between == 0.0:
        return 0.0
    return between / within if within > 0 else math.inf


def unit_selectivity(h_a: Tensor, h_b: Tensor) -> Tensor:
    """(m_a - m_b) / (m_a + m_b) per hidden unit: (d,), in [-1, 1] for non-negative activations.

    m_g is the unit's mean activation over group g's rows. A unit silent on both groups
    (m_a + m_b = 0) has selectivity 0: it serves neither group.
    """
    _check_pair(h_a, h_b)
    m_a, m_b = h_a.detach().double().mean(dim=0), h_b.detach().double().mean(dim=0)
    if (m_a < 0).any() or (m_b < 0).any():
        raise ValueError("selectivity is defined for non-negative (ReLU) activations")
    total = m_a + m_b
    ratio = (m_a - m_b) / total.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, ratio, torch.zeros_like(total))


def specialized_fraction(h_a: Tensor, h_b: Tensor, threshold: float = 0.5) -> float:
    """Fraction of the d hidden units whose |selectivity| exceeds ``threshold`` (silent units count
    as not specialized, and stay in the denominator)."""
    return (unit_selectivity(h_a, h_b).abs() > threshold).double().mean().item()


def interference(l1_before: float, l1_after: float) -> float:
    """Rise of a held-out group's L1 during fine-tuning on the other group: after - before."""
    return l1_after - l1_before


def alleviation_percent(
    baseline_after: ArrayLike, method_after: ArrayLike, baseline_before: ArrayLike
) -> float | np.ndarray:
    """Share of the baseline's forgetting that a method avoids, in percent (docs/SPEC.md section 7):

        100 * (baseline_after - method_after) / (baseline_after - baseline_before)

    with the held-out group's L1 of the same seed: ``baseline_before`` and ``baseline_after`` from
    the ``ce`` run before and after fine-tuning, ``method_after`` from the method's run after it.
    100 % means no more loss than ce had before fine-tuning; 0 % means as much forgetting as ce;
    negative, more. Floats or arrays (element-wise, numpy broadcasting); a zero denominator (ce
    forgot nothing) gives nan.
    """
    after = np.asarray(baseline_after, dtype=float)
    denominator = after - np.asarray(baseline_before, dtype=float)
    numerator = after - np.asarray(method_after, dtype=float)
    safe = np.where(denominator != 0, denominator, 1.0)
    result = np.where(denominator != 0, 100.0 * numerator / safe, np.nan)
    return float(result) if result.ndim == 0 else result
