"""FineWeb pretraining (docs/SPEC.md section 5): token shards made by ``replication.tasks.fineweb.prepare``.

The loader is modded-nanogpt's: the training split is read in order, shard after shard, as
contiguous chunks of ``micro_batch_size * seq_len + 1`` tokens (inputs and next-token targets of
``micro_batch_size`` rows of ``seq_len``), with no shuffling; when the shards are used up it starts
again at the first one. Micro-batch ``micro`` of step ``step`` is chunk ``step * grad_accum + micro``
(``grad_accum`` counts the micro-batches of a step over all processes, each of which runs its share),
so a run reads the same stream on any number of processes. A shard's tail too short for a whole
chunk is skipped. The order does not depend on any seed: every seed and every method read the same
tokens in the same order.

Validation: the first ``val_tokens`` targets of the validation split, in windows of ``seq_len``
predicted tokens (``seq_len + 1`` tokens at stride ``seq_len``), shared round-robin among processes
and run in the training dtype; reported are the mean token CE and every block's patch MBE
(``replication.tasks.evaluation``; MBE itself is always computed in float32).

Summary metrics (beyond the task defaults ``final/val/...`` and ``best/val/ce``):
``best/val/ce_step``; ``final/val/mbe_alternate_layers`` and ``final/val/mbe_joint_layers``, the
mean validation MBE over the blocks that ``gapt`` and ``gapt_joint`` regularize (the same blocks
in every method, so that runs compare); and ``speed/tokens_per_s`` (training steps only). The RQ1
statistics of runs that logged gradient alignment are computed at aggregation, as the experiment
file's ``reporting:`` section declares (``replication.reporting.rq1``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from replication.config.fineweb import Config
from replication.runtime.precision import Autocast
from replication.science.errors import ConfigError
from replication.science.methods import default_layers
from replication.tasks.base import Batch
from replication.tasks.evaluation import evaluate_lm
from replication.tasks.fineweb.data import load_manifest
from replication.tasks.fineweb.shards import read_shard
from replication.tasks.lm import LanguageTask, shard, windows_to_batch


class TokenStream:
    """The training split as a cyclic sequence of chunks; ``chunk(j)`` is a pure function of j."""

    def __init__(self, shards: list[np.ndarray], chunk_tokens: int):
        self.shards, self.chunk_tokens = shards, chunk_tokens
        # one extra token: the last target of a chunk
        self.chunks_per_shard = np.array([max(len(s) - 1, 0) // chunk_tokens for s in shards], dtype=np.int64)
        self.chunks_per_pass = int(self.chunks_per_shard.sum())
        if self.chunks_per_pass == 0:
            raise ConfigError(
                f"the training split holds no chunk of {chunk_tokens} + 1 tokens in any shard: "
                "lower task.seq_len or task.micro_batch_size, or prepare more training tokens"
            )
        self.first_chunk = np.concatenate([[0], np.cumsum(self.chunks_per_shard)[:-1]])

    def locate(self, chunk: int) -> tuple[int, int]:
        """(shard index, start token) of chunk ``chunk``."""
        chunk = chunk % self.chunks_per_pass
        # a shard without chunks shares first_chunk with the next one; side="right" skips it
        index = int(np.searchsorted(self.first_chunk, chunk, side="right") - 1)
        return index, (chunk - int(self.first_chunk[index])) * self.chunk_tokens

    def chunk(self, chunk: int) -> np.ndarray:
        index, start = self.locate(chunk)
        return np.asarray(self.shards[index][start : start + self.chunk_tokens + 1], dtype=np.int64)


class Task(LanguageTask):
    def __init__(self, config, device, rank=0, world_size=1, data_root=None):
        super().__init__(config, device, rank, world_size, data_root)
        cfg: Config = config.task
        self.cfg = cfg
        folder = self.data_root / cfg.dataset
        self.manifest = load_manifest(folder, experiment=config.experiment)
        tokenizer = self.manifest["tokenizer"]
        self.separator = int(tokenizer["separator"])
        model_vocab = getattr(config.model, "vocab_size", None)
        if model_vocab is not None and tokenizer["n_vocab"] > model_vocab:
            raise ConfigError(
                f"data set {cfg.dataset} uses the {tokenizer['name']} tokenizer "
                f"({tokenizer['n_vocab']} ids); "
                f"model.vocab_size is {model_vocab}"
            )
        train = [read_shard(folder / s["file"]) for s in self.manifest["splits"]["train"]["shards"]]
        self.stream = TokenStream(train, cfg.micro_batch_size * cfg.seq_len)
        self._val = self._validation(folder)

    def _validation(self, folder: Path) -> list[Batch]:
        cfg = self.cfg
        if cfg.val_tokens % cfg.seq_len:
            raise ConfigError(
                f"task.val_tokens ({cfg.val_tokens}) must be a multiple of task.seq_len ({cfg.seq_len})"
            )
        val = _first_tokens(folder, self.manifest["splits"]["val"]["shards"], cfg.val_tokens + 1)
        if len(val) < cfg.val_tokens + 1:
            raise ConfigError(
                f"task.val_tokens is {cfg.val_tokens}, but the validation split of {cfg.dataset} holds "
                f"{len(val)} tokens (one more than the targets is needed)"
            )
        n_windows = cfg.val_tokens // cfg.seq_len
        if n_windows < self.world_size:
            raise ConfigError(
                f"{n_windows} validation windows cannot be shared among {self.world_size} processes"
            )
        starts = np.arange(n_windows) * cfg.seq_len
        windows = torch.from_numpy(np.stack([val[s : s + cfg.seq_len + 1] for s in starts]))
        mine = shard(list(windows), self.rank, self.world_size)
        size = cfg.micro_batch_size
        return [
            windows_to_batch(torch.stack(mine[i : i + size]), self.device) for i in range(0, len(mine), size)
        ]

    @property
    def units_per_micro_batch(self) -> int:
        return self.cfg.micro_batch_size * self.cfg.seq_len

    def train_batch(self, step: int, micro: int) -> Batch:
        tokens = torch.from_numpy(self.stream.chunk(step * self.config.train.grad_accum + micro))
        return windows_to_batch(_rows(tokens, self.cfg), self.device)

    def validation_batches(self) -> list[Batch]:
        return self._val

    def evaluate(
        self, model, *, step: int, window: int | None, autocast: Autocast = nullcontext
    ) -> dict[str, Any]:
        return evaluate_lm(model, self, self._val, window=window, prefix="val", autocast=autocast)

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        summary = super().summarize(records)
        evals = [r for r in records if r["kind"] == "eval" and r.get("val/ce") is not None]
        if evals:
            summary["best/val/ce_step"] = min(evals, key=lambda r: r["val/ce"])["step"]
            by_layer = evals[-1]["val/mbe_by_layer"]
            for kind in ("alternate", "joint"):
                layers = getattr(self.config.objective, f"{kind}_layers") or _middle(len(by_layer), kind)
                if layers:
                    summary[f"final/val/mbe_{kind}_layers"] = float(np.mean([by_layer[i] for i in layers]))
        steps = [r for r in records if r["kind"] == "train"]
        if steps:
            summary["speed/tokens_per_s"] = steps[-1]["tokens"] / sum(r["step_time"] for r in steps)
        return summary


def _first_tokens(folder: Path, shards: list[dict[str, Any]], count: int) -> np.ndarray:
    """Up to ``count`` tokens from the start of a split, reading only the shards needed."""
    parts, have = [], 0
    for entry in shards:
        if have >= count:
            break
        part = read_shard(folder / entry["file"])[: count - have]
        parts.append(np.asarray(part, dtype=np.int64))
        have += len(part)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _rows(tokens: torch.Tensor, cfg: Config) -> torch.Tensor:
    """A chunk of B * T + 1 tokens -> (B, T + 1) overlapping rows: row b is tokens[b T : (b + 1) T + 1]."""
    return tokens.unfold(0, cfg.seq_len + 1, cfg.seq_len)


def _middle(n_blocks: int, kind: Literal["alternate", "joint"]) -> list[int]:
    try:
        return default_layers(n_blocks, kind)
    except ConfigError:
        return []
