"""The MBE kernel: the route renyi_entropy chooses against the other two.

For patch sizes n and widths d, the alpha = 2 closed form on the smaller Gram (the default) is timed
against the eigenvalue route and against always forming the n x n Gram. The chosen route must never
be the slower one.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import interleaved
from replication.science.mbe import renyi_entropy

PATCHES = (8, 32, 128, 512, 1024)
WIDTHS = (64, 256, 1024)
ELEMENTS = 2**21  # about 8 MB of float32 activations per call, whatever the shape


def mbe_kernel(rounds: int = 5) -> dict[str, Any]:
    torch.manual_seed(0)
    rows = []
    for n in PATCHES:
        for d in WIDTHS:
            batch = max(1, ELEMENTS // (n * d))
            z = torch.randn(batch, n, d)
            seconds = interleaved(
                {
                    "chosen": lambda z=z: renyi_entropy(z),
                    "rows_gram": lambda z=z: renyi_entropy(z, gram="rows"),
                    "eigenvalues": lambda z=z: renyi_entropy(z, eigen=True),
                },
                rounds=rounds,
            )
            rows.append(
                {
                    "patch": n,
                    "width": d,
                    "patches": batch,
                    "seconds": seconds,
                    "chosen_over_rows_gram": seconds["chosen"] / seconds["rows_gram"],
                    "chosen_over_eigenvalues": seconds["chosen"] / seconds["eigenvalues"],
                }
            )
    worst = max(max(r["chosen_over_rows_gram"], r["chosen_over_eigenvalues"]) for r in rows)
    return {"rows": rows, "worst_ratio": worst, "target": "chosen never slower (ratio <= 1 within noise)"}
