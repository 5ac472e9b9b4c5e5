"""A run's numeric precision, decided once: the autocast context of every forward pass.

``train.dtype`` names it. The loop builds it once (``autocast_for``) and hands the same context to
training, evaluation and the RQ1 logger, so no part of a run decides on its own. MBE computes in
float32 whatever the context (``replication.science.mbe`` turns autocast off inside), and losses are taken
in float32 from logits cast up.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch

Autocast = Callable[[], AbstractContextManager]


def autocast_for(dtype: str, device: torch.device) -> Autocast:
    """A factory of the context every forward pass of the run enters: bf16 autocast on the run's
    device for ``bfloat16``, nothing for ``float32``."""
    if dtype == "bfloat16":
        return partial(torch.autocast, device.type, dtype=torch.bfloat16)
    if dtype == "float32":
        return nullcontext
    raise ValueError(f"unknown train.dtype {dtype!r}")
