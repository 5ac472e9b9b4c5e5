"""A small synthetic language: documents drawn from a seeded sparse bigram model.

Each token has ``branching`` equally likely successors, so a model that learns the table reaches
CE close to log(branching) and then plateaus: a fast, deterministic task for the loop's tests, the
benchmarks and smoke runs. Token 0 separates documents.
"""

from __future__ import annotations

import torch

from replication.config.synthetic import Config
from replication.tasks.base import derive_seed
from replication.tasks.lm import LanguageTask, shard, windows_to_batch


class Task(LanguageTask):
    separator = 0

    def __init__(self, config, device, rank=0, world_size=1, data_root=None):
        super().__init__(config, device, rank, world_size, data_root)
        cfg: Config = config.task
        self.cfg = cfg
        table_rng = torch.Generator().manual_seed(config.effective_data_seed)
        # successors of every token, never the separator (documents end by the reset below)
        self.successors = torch.randint(
            1, cfg.vocab_size, (cfg.vocab_size, cfg.branching), generator=table_rng
        )
        val = [self._windows(config.effective_data_seed, "val", i) for i in range(cfg.val_batches)]
        self._val = [windows_to_batch(w, device) for w in shard(val, rank, world_size)]

    @property
    def units_per_micro_batch(self) -> int:
        return self.cfg.micro_batch_size * self.cfg.seq_len

    def _windows(self, *seed_parts: object) -> torch.Tensor:
        cfg = self.cfg
        rng = torch.Generator().manual_seed(derive_seed(*seed_parts))
        batch, length = cfg.micro_batch_size, cfg.seq_len + 1
        tokens = torch.empty(batch, length, dtype=torch.long)
        current = torch.zeros(batch, dtype=torch.long)
        choice = torch.randint(0, cfg.branching, (batch, length), generator=rng)
        reset = torch.rand(batch, length, generator=rng) < 1.0 / cfg.mean_doc_length
        for t in range(length):
            following = self.successors[current, choice[:, t]]
            current = torch.where(reset[:, t], torch.zeros_like(current), following)
            tokens[:, t] = current
        return tokens

    def train_batch(self, step: int, micro: int):
        windows = self._windows(self.config.effective_data_seed, "train", step, micro)
        return windows_to_batch(windows, self.device)

    def validation_batches(self):
        return self._val
