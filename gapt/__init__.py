"""GAPT and Matrix-Based Entropy (MBE) for any PyTorch model: the public API of this distribution.

``pip install gapt-replication`` installs this package with torch, pydantic and pyyaml only;
``import gapt`` imports none of the replication suite's packages (pandas, scipy, matplotlib,
seaborn, snakemake, datasets, tiktoken). The suite is the ``suite`` extra, the Hugging Face
``Trainer`` integration the ``hf`` extra (``gapt.hf``).

    import gapt

    g = gapt.GAPT(model.blocks, method="gapt", micro_batches=2)  # hooks on the blocks' outputs
    for step, micro_batches in enumerate(loader):
        for micro, batch in enumerate(micro_batches):
            with g.micro_batch(step, micro) as mb:
                mb.main_loss = loss_fn(model(batch), batch)  # not reached on an MBE micro-batch
            mb.loss.backward()
        report = g.end_step()  # the controller's update: report.phase, report.mbe, report.finite
        if report.finite:
            optimizer.step()
        optimizer.zero_grad()

What is here:

- ``GAPT``: the drop-in for your own training loop (``replication.integrations.dropin``; its
  docstring lists the methods, the block shapes it reads and every knob). ``GAPT.end_step`` returns a
  ``StepReport``; ``MicroBatch`` is what ``GAPT.micro_batch`` yields; ``block_output`` is the default
  ``hidden_state``; ``default_block_layers`` the blocks regularized when none are named.
- ``ObjectiveConfig``: the MBE objective's knobs (``patch_size``, ``alpha``, ``lambda_mbe``, the
  regularized blocks), passed as ``GAPT(..., objective=ObjectiveConfig(...))``.
- ``GaptConfig``, ``PhaseController``, ``Phase``: the phase controller on its own (patiences,
  thresholds, smoothing, rule sets; ``GaptConfig.preset``), passed as ``GAPT(..., controller=...)``.
- ``patch_mbe``, ``layer_mbe``, ``renyi_entropy``, ``patches``: MBE of hidden states
  (``replication.science.mbe``): one block's (B, S, D) -> (), several blocks' -> (L,), the order-alpha
  Renyi entropy of a batch of matrices, and the split of (B, S, D) into patches of ``patch_size`` rows.
- ``ConfigError``: what a bad argument or config raises (a ``ValueError``).
- ``__version__``: the installed distribution's version.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from replication.config.base import ConfigError, ObjectiveConfig
from replication.integrations.dropin import (
    GAPT,
    MicroBatch,
    StepReport,
    block_output,
    default_block_layers,
)
from replication.science.gapt import GaptConfig, Phase, PhaseController
from replication.science.mbe import layer_mbe, patch_mbe, patches, renyi_entropy

DISTRIBUTION = "gapt-replication"
_SOURCE_VERSION = "0.3.1"  # pyproject.toml's version, for a checkout that is not installed


def _version() -> str:
    try:
        return _metadata.version(DISTRIBUTION)
    except _metadata.PackageNotFoundError:
        return _SOURCE_VERSION


__version__ = _version()

__all__ = [
    "GAPT",
    "ConfigError",
    "GaptConfig",
    "MicroBatch",
    "ObjectiveConfig",
    "Phase",
    "PhaseController",
    "StepReport",
    "__version__",
    "block_output",
    "default_block_layers",
    "layer_mbe",
    "patch_mbe",
    "patches",
    "renyi_entropy",
]
