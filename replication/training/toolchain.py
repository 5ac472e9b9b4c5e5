"""What a run's config asks of the device, the toolchain and the process group, checked before
anything is built, each refusal naming the settings that work."""

from __future__ import annotations

import os
import shutil

import torch

from replication.config.base import ConfigError
from replication.config.run import RunConfig
from replication.science.methods import METHODS


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would find (its own order: $CXX, then the usual names), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_config(config: RunConfig, world_size: int, device: torch.device, *, backend: str) -> None:
    """Refuse a config this machine cannot train: ``backend`` is torch.compile's under ``train.compile``."""
    method = METHODS[config.method]
    attention = getattr(config.model, "attention", None)
    if attention == "flex" and device.type == "cpu":
        raise ConfigError(
            "model.attention is flex, but FlexAttention has no backward pass on CPU (torch "
            f"{torch.__version__.split('+')[0]}): use model.attention: auto (flex on CUDA, sdpa elsewhere) "
            "or sdpa"
        )
    if attention in ("flex", "auto") and device.type == "cuda" and not config.train.compile:
        raise ConfigError(
            f"model.attention is {attention}, which is FlexAttention on CUDA, and train.compile is false: "
            "uncompiled, FlexAttention builds every (T, T) score matrix; set train.compile: true, or "
            "model.attention: sdpa"
        )
    if config.train.compile and backend == "inductor" and cxx_compiler() is None:
        raise ConfigError(
            "train.compile is true, and torch.compile's inductor needs a C++ compiler, but none was found "
            "($CXX, c++, g++, clang++): install one (Debian: apt install g++), or set train.compile: false"
        )
    if config.train.grad_accum % world_size:
        raise ConfigError(
            f"train.grad_accum ({config.train.grad_accum} micro-batches per step in all) must be divisible "
            f"by the number of processes ({world_size})"
        )
    if method.compression == "alternate" and config.train.grad_accum < 2:
        raise ConfigError(
            f"method {config.method} alternates main-loss and MBE micro-batches within a step: "
            f"train.grad_accum must be >= 2 (got {config.train.grad_accum})"
        )
