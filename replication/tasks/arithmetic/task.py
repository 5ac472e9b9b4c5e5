"""Multiplication with out-of-distribution operands (docs/SPEC.md section 6, experiment ``arithmetic_ood``).

Data (``replication.tasks.arithmetic.data``), all drawn from the data seed, never the run seed:
- train: ``train_examples`` examples with operands of ``train_digits`` (1-3) digits, one stream,
  drawn only from the training part of the pair space (``data.held_out`` False);
- held-out ID validation (``id``): ``val_examples`` with ``train_digits``, drawn only from the
  held-out part (``held_out`` True), so no pair of it (nor its commutative twin) is ever trained on;
- seen ID validation (``id_seen``): the first ``val_examples`` training examples that a training
  row of the first pass holds whole, i.e. examples the model is trained on in its first steps;
- OOD validation: ``val_examples`` with ``ood_digits`` (4-6, above ``train_digits``, so never a
  training pair); the OOD control split: as OOD validation but drawn from its own seed, used only to
  decide the early-stopping point;
- exact-match prompts: ``exact_match_per_digits`` examples of d x d digits for every d of the ID
  and OOD ranges, each group from its own seed; the ID ones from the held-out part only.

Training rows are windows of ``seq_len`` + 1 tokens of the training stream; the main loss is token CE
over the whole window (the model is trained on the stream, as in the paper). Row j of a pass starts
at the first <bos> at or after j * seq_len, so no row begins with an example whose operands are cut
off; rows are read in order and the stream wraps around after a pass. Validation windows start at an
example's <bos> too and count every example's answer tokens exactly once
(``data.example_aligned_windows``).

Metrics of ``evaluate`` (prefix id/ (held-out ID), ood/; id_seen/ and control/ only the answer CE):
- ``answer_ce``: mean CE over answer tokens (the space after '=' and every digit of c, not <eos>);
- ``mbe_by_layer`` (every block's patch MBE over the validation windows) and ``mbe`` (their mean);
- ``exact_match``: the fraction of prompts ``<bos>a x b =`` whose greedy continuation is exactly
  `` c<eos>``, over all d x d groups of the range, and ``exact_match/digits_{d}`` per group.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from replication.config.arithmetic import Config
from replication.runtime.distributed import all_reduce_sum
from replication.runtime.precision import Autocast
from replication.science.errors import ConfigError
from replication.science.mbe import layer_mbe
from replication.tasks.arithmetic.data import (
    BOS,
    EOS,
    EQUALS,
    FIRST_DIGIT,
    SPACE,
    Pairs,
    encode_examples,
    example_aligned_windows,
    sample_operands,
    sample_square,
)
from replication.tasks.base import Batch, derive_seed
from replication.tasks.evaluation import mbe_kwargs
from replication.tasks.lm import LanguageTask, shard, windows_to_batch

SPLIT_PREFIXES = ("id", "id_seen", "ood", "control")  # validation windows scored by answer CE
MBE_PREFIXES = ("id", "ood")  # ... and by MBE


def answer_mask(tokens: Tensor) -> Tensor:
    """(..., T) token windows -> (..., T) bool: True at the answer tokens (the space after '=' and the
    digits of c) of every example whose <bos> and <eos> are both inside the window.

    An example cut by the window's start (its prompt not all visible) or end (its answer not all
    visible) contributes nothing. For next-token targets of a window w, use answer_mask(w)[..., 1:].
    """
    length = tokens.size(-1)
    pos = torch.arange(length, device=tokens.device).expand_as(tokens)
    none_before = torch.full_like(pos, -1)
    none_after = torch.full_like(pos, length)

    def last(symbol: int) -> Tensor:  # position of the latest `symbol` at or before each position
        return torch.where(tokens == symbol, pos, none_before).cummax(dim=-1).values

    def next_(symbol: int) -> Tensor:  # position of the first `symbol` at or after each position
        flipped = torch.where(tokens == symbol, pos, none_after).flip(-1)
        return flipped.cummin(dim=-1).values.flip(-1)

    last_bos, last_eq, last_eos = last(BOS), last(EQUALS), last(EOS)
    is_answer_symbol = (tokens == SPACE) | (tokens >= FIRST_DIGIT)
    after_equals = (last_bos >= 0) & (last_eq > last_bos) & (last_eq > last_eos)
    complete = next_(EOS) < next_(BOS)  # this example's <eos> comes before any later <bos> (or the end)
    return is_answer_symbol & after_equals & complete


def early_stop(control: list[float], tolerance: float) -> int | None:
    """Index of the first evaluation whose control CE exceeds the running minimum of the earlier
    evaluations by more than ``tolerance`` (relative), or None when that never happens."""
    running_min = math.inf
    for i, value in enumerate(control):
        if value > running_min * (1.0 + tolerance):
            return i
        running_min = min(running_min, value)
    return None


class Task(LanguageTask):
    separator = 0  # <bos> starts every example: the same-document mask keeps examples apart

    def __init__(self, config, device, rank=0, world_size=1, data_root=None):
        super().__init__(config, device, rank, world_size, data_root)
        self._autocast: Autocast = nullcontext  # evaluate() sets the run's precision
        cfg: Config = config.task
        self.cfg = cfg
        self.grad_accum = config.train.grad_accum
        seed = config.effective_data_seed
        # the ID pair space is cut in two once and for all (data.held_out): training draws
        # only from one part, held-out ID validation and ID exact match only from the other
        self.train_operands = self._operands(seed, "train", cfg.train_examples, cfg.train_digits, "train")
        self.stream, offsets = encode_examples(*self.train_operands)
        self.row_starts = self._row_starts(offsets)
        operands = {
            "id": self._operands(seed, "id", cfg.val_examples, cfg.train_digits, "held_out"),
            "id_seen": self._seen_operands(offsets),
            "ood": self._operands(seed, "ood", cfg.val_examples, cfg.ood_digits),
            "control": self._operands(seed, "control", cfg.val_examples, cfg.ood_digits),
        }
        self.windows = {split: self._validation_windows(pair) for split, pair in operands.items()}
        groups = (("id", cfg.train_digits, "held_out"), ("ood", cfg.ood_digits, "all"))
        self.prompts = {
            prefix: {d: self._exact_match_set(seed, prefix, d, pairs) for d in range(lo, hi + 1)}
            for prefix, (lo, hi), pairs in groups
        }

    # -- data --------------------------------------------------------------------------------------
    @staticmethod
    def _operands(seed: int, split: str, n: int, digits: tuple[int, int], pairs: Pairs = "all"):
        rng = np.random.default_rng(derive_seed(seed, "arithmetic", split))
        return sample_operands(rng, n, digits, pairs)

    def _seen_operands(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first ``val_examples`` training examples that a row of the first pass holds whole:
        examples the model is trained on (once at least) in its first steps."""
        ends = np.append(offsets[1:], len(self.stream))
        row = np.searchsorted(self.row_starts, offsets, side="right") - 1  # last row starting at or before
        whole = (row >= 0) & (ends <= self.row_starts[np.maximum(row, 0)] + self.cfg.seq_len + 1)
        chosen = np.flatnonzero(whole)[: self.cfg.val_examples]
        a, b = self.train_operands
        return a[chosen], b[chosen]

    def _row_starts(self, offsets: np.ndarray) -> np.ndarray:
        """Start of each training row of one pass: the first <bos> at or after j * seq_len."""
        span = self.cfg.seq_len + 1
        marks = np.arange(0, len(self.stream), self.cfg.seq_len)
        index = np.searchsorted(offsets, marks)
        starts = offsets[index[index < len(offsets)]]
        starts = np.unique(starts[starts + span <= len(self.stream)])
        if len(starts) == 0:
            raise ConfigError(
                f"{self.cfg.train_examples} training examples make a stream of {len(self.stream)} tokens, "
                f"too short for one row of {span}: raise task.train_examples"
            )
        return starts

    def _validation_windows(self, operands: tuple[np.ndarray, np.ndarray]) -> Tensor:
        stream, offsets = encode_examples(*operands)
        windows = example_aligned_windows(stream, offsets, self.cfg.seq_len + 1)
        return torch.from_numpy(shard(windows, self.rank, self.world_size)).long()

    def _exact_match_set(self, seed: int, prefix: str, d: int, pairs: Pairs) -> tuple[Tensor, Tensor]:
        """Prompts ``<bos>a x b =`` (N, 2d + 6) and expected continuations `` c<eos>`` (N, 2d + 2),
        -1 after <eos>; this process's share."""
        rng = np.random.default_rng(derive_seed(seed, "arithmetic", "exact_match", prefix, d))
        a, b = sample_square(rng, self.cfg.exact_match_per_digits, d, pairs)
        stream, offsets = encode_examples(a, b)
        prompt_len = 2 * d + 6
        ends = np.append(offsets[1:], len(stream))
        prompts = np.stack([stream[o : o + prompt_len] for o in offsets])
        expected = np.full((len(offsets), 2 * d + 2), -1, dtype=np.int64)
        for i, (o, e) in enumerate(zip(offsets, ends)):
            expected[i, : e - o - prompt_len] = stream[o + prompt_len : e]
        mine = shard(list(range(len(offsets))), self.rank, self.world_size)
        return torch.from_numpy(prompts[mine]).long(), torch.from_numpy(expected[mine])

    @property
    def units_per_micro_batch(self) -> int:
        return self.cfg.micro_batch_size * self.cfg.seq_len

    def train_batch(self, step: int, micro: int) -> Batch:
        rows_per_micro = self.cfg.micro_batch_size
        first = (step * self.grad_accum + micro) * rows_per_micro
        rows = np.arange(first, first + rows_per_micro) % len(self.row_starts)
        index = self.row_starts[rows][:, None] + np.arange(self.cfg.seq_len + 1)
        return windows_to_batch(torch.from_numpy(self.stream[index]), self.device)

    # -- evaluation --------------------------------------------------------------------------------
    def _answer_ce_and_mbe(self, model, windows: Tensor, window: int | None) -> Tensor:
        """Sums over this process's validation windows: [answer CE, answer tokens, patches, MBE x
        patches per block...], float64."""
        ce_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        answers = torch.zeros((), dtype=torch.float64, device=self.device)
        patches = torch.zeros((), dtype=torch.float64, device=self.device)
        mbe_sum = torch.zeros(model.n_blocks, dtype=torch.float64, device=self.device)
        for chunk in windows.split(self.cfg.eval_batch_rows):
            batch = windows_to_batch(chunk, self.device)
            mask = answer_mask(chunk.to(self.device))[:, 1:]
            with self._autocast():
                out = self.forward(model, batch, window=window)
            ce = F.cross_entropy(out.output.float()[mask], batch.targets[mask], reduction="sum")
            ce_sum += ce.double()
            answers += mask.sum()
            n_patches = batch.inputs.numel() // self.config.objective.patch_size
            mbe_sum += layer_mbe(out.hidden, **mbe_kwargs(self)).double() * n_patches
            patches += n_patches
        return torch.cat([ce_sum[None], answers[None], patches[None], mbe_sum])

    @torch.no_grad()
    def greedy_continuation(self, model, prompts: Tensor, new_tokens: int, window: int | None) -> Tensor:
        """Greedy decoding: (N, P) prompts -> (N, new_tokens) generated tokens, batched, no cache.

        Every new token is a new sequence length, and compiled blocks would compile once per length
        until dynamo's recompile limit (an error under ``train.compile``, replication.training.train).
        Decoding runs its short sequences eagerly instead (``torch.compiler.set_stance``)."""
        with torch.compiler.set_stance("force_eager"):
            return self._greedy_continuation(model, prompts, new_tokens, window)

    def _greedy_continuation(self, model, prompts: Tensor, new_tokens: int, window: int | None) -> Tensor:
        generated = []
        for chunk in prompts.split(self.cfg.decode_batch):
            sequence = chunk.to(self.device)
            for _ in range(new_tokens):
                with self._autocast():
                    out = self.forward(model, Batch(sequence, sequence), window=window)
                sequence = torch.cat([sequence, out.output[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
                if (sequence[:, chunk.size(1) :] == EOS).any(dim=1).all():
                    break
            tail = sequence[:, chunk.size(1) :]
            generated.append(F.pad(tail, (0, new_tokens - tail.size(1)), value=EOS))
        return torch.cat(generated) if generated else prompts.new_zeros((0, new_tokens))

    def _exact_match_counts(self, model, prompts: Tensor, expected: Tensor, window: int | None) -> Tensor:
        """[correct, total] on this process: correct when the continuation equals `` c<eos>``."""
        generated = self.greedy_continuation(model, prompts, expected.size(1), window).cpu()
        scored = expected >= 0
        correct = ((generated == expected) | ~scored).all(dim=1).sum()
        return torch.tensor([float(correct), float(len(expected))], dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def evaluate(
        self, model, *, step: int, window: int | None, autocast: Autocast = nullcontext
    ) -> dict[str, Any]:
        self._autocast = autocast  # the run's precision, for every forward pass below
        was_training = model.training
        model.eval()
        parts, layout = [], []
        for prefix in SPLIT_PREFIXES:
            parts.append(self._answer_ce_and_mbe(model, self.windows[prefix], window))
            layout.append((prefix, None))
        for prefix, groups in self.prompts.items():
            for d, (prompts, expected) in groups.items():
                parts.append(self._exact_match_counts(model, prompts, expected, window))
                layout.append((prefix, d))
        model.train(was_training)
        reduced = all_reduce_sum(torch.cat(parts)).tolist()

        metrics: dict[str, Any] = {}
        correct_total: dict[str, list[float]] = {}
        for (prefix, d), part in zip(layout, parts):
            values, reduced = reduced[: len(part)], reduced[len(part) :]
            if d is None:
                metrics[f"{prefix}/answer_ce"] = values[0] / max(values[1], 1.0)
                if prefix in MBE_PREFIXES:
                    by_layer = [m / values[2] for m in values[3:]]
                    metrics[f"{prefix}/mbe_by_layer"] = by_layer
                    metrics[f"{prefix}/mbe"] = sum(by_layer) / len(by_layer)
            else:
                metrics[f"{prefix}/exact_match/digits_{d}"] = values[0] / max(values[1], 1.0)
                totals = correct_total.setdefault(prefix, [0.0, 0.0])
                totals[0] += values[0]
                totals[1] += values[1]
        for prefix, (correct, total) in correct_total.items():
            metrics[f"{prefix}/exact_match"] = correct / max(total, 1.0)
        return metrics

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The default final metrics and ``final/id_seen/answer_ce``, plus the early-stopped ones: the
        values at the evaluation where the control answer CE first exceeds its running minimum by
        ``early_stop_tolerance`` (the last evaluation when that never happens), its step, and whether
        it happened (1.0 or 0.0).

        The evaluation of the untrained model (step 0) takes no part: its zero-initialized head
        predicts the uniform distribution, and a small model's OOD CE rises above that at once, which
        would stop every run at its first evaluation.
        """
        summary = super().summarize(records)
        last = [r for r in records if r["kind"] == "eval"][-1:]
        if last and "id_seen/answer_ce" in last[0]:  # the default keeps val/, id/ and ood/ keys only
            summary["final/id_seen/answer_ce"] = last[0]["id_seen/answer_ce"]
        evals = [r for r in records if r["kind"] == "eval" and r["step"] > 0 and "control/answer_ce" in r]
        if not evals:
            return summary
        stop = early_stop([r["control/answer_ce"] for r in evals], self.cfg.early_stop_tolerance)
        chosen = evals[-1 if stop is None else stop]
        summary["early_stop/step"] = chosen["step"]
        summary["early_stop/triggered"] = 0.0 if stop is None else 1.0
        for key in (
            "ood/answer_ce",
            "id/answer_ce",
            "ood/mbe",
            "id/mbe",
            "ood/exact_match",
            "id/exact_match",
        ):
            summary[f"early_stop/{key}"] = chosen[key]
        return summary
