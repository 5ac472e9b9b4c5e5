"""Models: every one returns its output and the hidden state of every block (docs/SPEC.md section 2).

``base`` holds the interface the training loop relies on (``ReplicationModel``, ``ModelOutput``);
``modded`` (the author's modded-nanogpt GPT-2), ``gpt2`` and ``mlp`` the models. ``MODELS`` is the
registry, each model under its config section; ``build_model`` builds the model of a section.
"""

from __future__ import annotations

from replication.config.base import GPT2ModelConfig, MLPModelConfig, ModdedModelConfig, ModelConfig
from replication.models.base import ModelOutput, ReplicationModel
from replication.models.gpt2 import GPT2
from replication.models.mlp import MLP
from replication.models.modded import ModdedGPT

__all__ = ["GPT2", "MLP", "ModdedGPT", "ModelOutput", "ReplicationModel", "build_model"]

MODELS: dict[type, type[ReplicationModel]] = {
    ModdedModelConfig: ModdedGPT,
    GPT2ModelConfig: GPT2,
    MLPModelConfig: MLP,
}


def build_model(config: ModelConfig) -> ReplicationModel:
    if type(config) not in MODELS:
        raise TypeError(f"no model is registered for the config section {type(config).__name__}")
    return MODELS[type(config)](config)
