"""Models: every one returns its output and the hidden state of every block (docs/SPEC.md section 2).

``base`` holds the interface the training loop relies on (``ReplicationModel``, ``ModelOutput``);
``modded`` (the author's modded-nanogpt GPT-2), ``gpt2`` and ``mlp`` the models; ``build_model``
picks one by its config's ``name``.
"""

from __future__ import annotations

from replication.config.base import ModelConfig
from replication.models.base import ModelOutput, ReplicationModel
from replication.models.gpt2 import GPT2
from replication.models.mlp import MLP
from replication.models.modded import ModdedGPT

__all__ = ["GPT2", "MLP", "ModdedGPT", "ModelOutput", "ReplicationModel", "build_model"]

MODELS: dict[str, type[ReplicationModel]] = {"modded": ModdedGPT, "gpt2": GPT2, "mlp": MLP}


def build_model(config: ModelConfig) -> ReplicationModel:
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}")
    return MODELS[config.name](config)
