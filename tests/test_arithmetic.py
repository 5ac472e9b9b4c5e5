"""Experiment 2 (arithmetic_ood): data, answer mask, exact-match scoring, early stopping, smoke runs."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from replication.arithmetic_data import (
    BOS,
    EOS,
    SYMBOLS,
    VOCAB_SIZE,
    answer_lengths,
    answer_mask,
    decode,
    encode,
    encode_examples,
    example_aligned_windows,
    example_text,
    sample_operands,
)
from replication.config import deep_merge, load_experiment, resolve_run_config, validate_run_config
from replication.models import ModelOutput, build_model
from replication.tasks.arithmetic import Task, early_stop
from replication.train import train

from .conftest import REPO, TINY

EXPERIMENT = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
EXAMPLE = re.compile(r"<bos>(\d+) x (\d+) = (\d+)<eos>")
SMALL_TASK = {
    "name": "arithmetic", "train_examples": 3000, "val_examples": 60, "seq_len": 64, "micro_batch_size": 4,
    "eval_batch_rows": 8, "exact_match_per_digits": 5, "decode_batch": 7,
}  # fmt: skip
SMALL_MODEL = {"vocab_size": 16, "n_layer": 5}


def small_task(seed=0, data_seed=None, rank=0, world_size=1, **task) -> Task:
    data = deep_merge(TINY, {"model": SMALL_MODEL, "seed": seed, "data_seed": data_seed})
    config = validate_run_config({**data, "task": {**SMALL_TASK, **task}})
    return Task(config, torch.device("cpu"), rank=rank, world_size=world_size)


def whole_examples(tokens) -> list[tuple[int, int, int]]:
    """Every complete example in a token sequence, as (a, b, c)."""
    return [tuple(map(int, m.groups())) for m in EXAMPLE.finditer(decode(tokens))]


def digits(n: int) -> int:
    return len(str(n))


# -- tokenizer ------------------------------------------------------------------------------------


def test_vocabulary_is_the_papers_15_symbols():
    assert VOCAB_SIZE == 15
    assert encode("<bos><eos>x= 0123456789") == list(range(15))
    assert SYMBOLS[BOS] == "<bos>" and SYMBOLS[EOS] == "<eos>"


@pytest.mark.parametrize("text", ["<bos>12 x 34 = 408<eos>", "<bos>7 x 8 = 56<eos><bos>999 x 1 = 999<eos>", "x = 0"])
def test_tokenizer_round_trip(text):
    assert decode(encode(text)) == text


def test_tokenizer_rejects_symbols_outside_the_vocabulary():
    with pytest.raises(ValueError, match="'\\+'"):
        encode("<bos>1 + 2")


def test_fast_stream_encoding_matches_the_tokenizer():
    a, b = np.array([12, 7, 999]), np.array([34, 8, 1])
    stream, offsets = encode_examples(a, b)
    assert stream.tolist() == encode("".join(example_text(x, y) for x, y in zip(a, b)))
    assert offsets.tolist() == [0, 15, 27]  # 15 and 12 tokens


# -- operand sampling and splits ------------------------------------------------------------------


def test_operand_digit_counts_are_uniform_and_values_have_that_many_digits():
    a, b = sample_operands(np.random.default_rng(0), 30_000, (1, 3))
    for operand in (a, b):
        counts = np.bincount([digits(x) for x in operand.tolist()], minlength=4)[1:]
        assert counts.sum() == 30_000 and np.all(np.abs(counts / 30_000 - 1 / 3) < 0.02)
    assert a.min() >= 1 and a.max() <= 999  # no zero operand: a 1-digit operand is 1..9
    three_digit = a[a >= 100]
    assert abs(three_digit.mean() - 549.5) < 10  # uniform over 100..999


def split_operand_digits(task: Task) -> dict[str, set[int]]:
    seen = {}
    for split in ("id", "ood", "control"):
        examples = [e for row in task.windows[split] for e in whole_examples(row.tolist())]
        seen[split] = {digits(x) for a, b, _ in examples for x in (a, b)}
    train_examples = whole_examples(task.stream.tolist())
    seen["train"] = {digits(x) for a, b, _ in train_examples for x in (a, b)}
    return seen


def test_every_split_draws_operands_from_its_pinned_digit_range():
    seen = split_operand_digits(small_task())
    assert seen == {"train": {1, 2, 3}, "id": {1, 2, 3}, "ood": {4, 5, 6}, "control": {4, 5, 6}}


def test_every_example_is_a_correct_product():
    task = small_task()
    examples = whole_examples(task.stream.tolist()) + [e for r in task.windows["ood"] for e in whole_examples(r.tolist())]
    assert len(examples) > 3000 and all(a * b == c for a, b, c in examples)


def test_control_split_is_not_the_ood_validation_split():
    task = small_task()
    assert task.windows["control"].shape != task.windows["ood"].shape or not torch.equal(
        task.windows["control"], task.windows["ood"]
    )


def test_exact_match_prompts_are_d_by_d_products_of_their_range():
    task = small_task()
    assert sorted(task.prompts["id"]) == [1, 2, 3] and sorted(task.prompts["ood"]) == [4, 5, 6]
    for groups in task.prompts.values():
        for d, (prompts, expected) in groups.items():
            for prompt, answer in zip(prompts.tolist(), expected.tolist()):
                text = decode(prompt) + decode([t for t in answer if t >= 0])
                ((a, b, c),) = whole_examples(encode(text))
                assert digits(a) == digits(b) == d and a * b == c


# -- determinism ----------------------------------------------------------------------------------


def batches(task: Task) -> list[torch.Tensor]:
    return [task.train_batch(step, micro).inputs for step in (0, 3, 50) for micro in (0, 1)]


def test_data_is_a_function_of_the_data_seed_only():
    first, again = small_task(seed=1, data_seed=7), small_task(seed=2, data_seed=7)
    other = small_task(seed=1, data_seed=8)
    assert all(torch.equal(x, y) for x, y in zip(batches(first), batches(again)))
    assert all(torch.equal(first.windows[s], again.windows[s]) for s in ("id", "ood", "control"))
    assert not torch.equal(batches(first)[0], batches(other)[0])
    assert not torch.equal(first.windows["ood"][0], other.windows["ood"][0])


def test_training_rows_start_at_an_example_and_targets_are_the_next_tokens():
    task = small_task()
    batch = task.train_batch(5, 1)
    assert batch.inputs.shape == (4, 64) and bool((batch.inputs[:, 0] == BOS).all())
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_micro_batches_read_consecutive_rows_of_the_stream_on_every_process():
    task, other_rank = small_task(), small_task(rank=1, world_size=2)
    wide = small_task(micro_batch_size=8)  # one micro-batch of 8 rows = two consecutive ones of 4
    assert torch.equal(wide.train_batch(1, 0).inputs, torch.cat([task.train_batch(2, 0).inputs, task.train_batch(2, 1).inputs]))
    assert torch.equal(task.train_batch(3, 1).inputs, other_rank.train_batch(3, 1).inputs)
    assert not torch.equal(task.train_batch(3, 0).inputs, task.train_batch(3, 1).inputs)


# -- the answer mask ------------------------------------------------------------------------------


def marked(text: str) -> str:
    """The text with every answer token in brackets."""
    tokens = torch.tensor(encode(text))
    return "".join(f"[{SYMBOLS[t]}]" if m else SYMBOLS[t] for t, m in zip(tokens.tolist(), answer_mask(tokens).tolist()))


def test_answer_is_the_space_after_equals_and_the_digits_of_c_never_eos():
    assert marked("<bos>12 x 34 = 408<eos>") == "<bos>12 x 34 =[ ][4][0][8]<eos>"
    assert marked("<bos>7 x 8 = 56<eos><bos>3 x 3 = 9<eos>") == "<bos>7 x 8 =[ ][5][6]<eos><bos>3 x 3 =[ ][9]<eos>"


def test_examples_cut_by_the_window_are_not_scored():
    assert marked("2 = 24<eos><bos>2 x 2 = 4<eos>") == "2 = 24<eos><bos>2 x 2 =[ ][4]<eos>"  # prompt cut
    assert marked("<bos>2 x 2 = 4<eos><bos>6 x 7 = 4") == "<bos>2 x 2 =[ ][4]<eos><bos>6 x 7 = 4"  # answer cut
    assert marked("<bos>2 x 2 = 4<eos><eos><eos>") == "<bos>2 x 2 =[ ][4]<eos><eos><eos>"  # padding


def test_answer_mask_works_row_by_row():
    rows = torch.tensor([encode("<bos>12 x 5 = 60<eos><bos>1 x"), encode("3 = 9<eos><bos>2 x 1 = 2<eos>")])
    assert answer_mask(rows).sum(dim=1).tolist() == [3, 2]


def test_validation_windows_score_every_example_exactly_once():
    a, b = sample_operands(np.random.default_rng(3), 500, (4, 6))
    stream, offsets = encode_examples(a, b)
    windows = torch.from_numpy(example_aligned_windows(stream, offsets, 65)).long()
    assert windows.shape[1] == 65 and bool((windows[:, 0] == BOS).all())
    whole = [e for row in windows.tolist() for e in whole_examples(row)]
    assert whole == list(zip(a.tolist(), b.tolist(), (a * b).tolist()))
    assert int(answer_mask(windows)[:, 1:].sum()) == int(answer_lengths(a, b).sum())


# -- exact match and answer CE with oracle models -------------------------------------------------


class Oracle(nn.Module):
    """Predicts every answer token of every example it sees from the example's prompt (off by
    ``error`` in c), and <eos> after the answer unless ``stops`` is False; uniform elsewhere."""

    def __init__(self, error: int = 0, stops: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Identity()])
        self.error, self.stops = error, stops

    @property
    def n_blocks(self) -> int:
        return 1

    def next_token(self, context: list[int]) -> int | None:
        if BOS not in context:
            return None
        text = decode(context[len(context) - 1 - context[::-1].index(BOS) :])
        match = re.fullmatch(r"<bos>(\d+) x (\d+) =(.*)", text)
        if match is None:
            return None
        answer = encode(f" {int(match[1]) * int(match[2]) + self.error}" + ("<eos>" if self.stops else "0" * 30))
        done = len(encode(match[3]))
        return answer[done] if done < len(answer) else None

    def forward(self, idx, *, docs=None, window=None, upto=None):
        logits = torch.zeros(*idx.shape, 16)
        for row, tokens in enumerate(idx.tolist()):
            for t in range(len(tokens)):
                token = self.next_token(tokens[: t + 1])
                if token is not None:
                    logits[row, t, token] = 30.0
        return ModelOutput(logits, [nn.functional.one_hot(idx, 16).float()])


def test_exact_match_of_an_oracle_is_one_and_its_answer_ce_is_zero():
    metrics = small_task().evaluate(Oracle(), step=1, window=None)
    assert metrics["id/exact_match"] == metrics["ood/exact_match"] == 1.0
    assert all(metrics[f"ood/exact_match/digits_{d}"] == 1.0 for d in (4, 5, 6))
    assert metrics["id/answer_ce"] < 1e-6 and metrics["ood/answer_ce"] < 1e-6 and metrics["control/answer_ce"] < 1e-6


def test_exact_match_of_a_wrong_answer_is_zero():
    metrics = small_task().evaluate(Oracle(error=1), step=1, window=None)
    assert metrics["id/exact_match"] == metrics["ood/exact_match"] == 0.0
    assert metrics["ood/answer_ce"] > 1.0


def test_a_right_answer_without_eos_is_not_an_exact_match():
    metrics = small_task().evaluate(Oracle(stops=False), step=1, window=None)
    assert metrics["id/exact_match"] == metrics["ood/exact_match"] == 0.0
    assert metrics["ood/answer_ce"] < 1e-6  # <eos> is not an answer token


def test_an_untrained_model_scores_uniform_answer_ce_and_every_metric_key():
    task = small_task()
    metrics = task.evaluate(build_model(task.config.model), step=0, window=64)  # zero-init head: uniform logits
    for prefix in ("id", "ood", "control"):
        assert metrics[f"{prefix}/answer_ce"] == pytest.approx(math.log(16), rel=1e-5)
    assert len(metrics["ood/mbe_by_layer"]) == 5 and metrics["ood/mbe"] == pytest.approx(np.mean(metrics["ood/mbe_by_layer"]))
    assert {k for k in metrics if "/exact_match/" in k} == {f"id/exact_match/digits_{d}" for d in (1, 2, 3)} | {
        f"ood/exact_match/digits_{d}" for d in (4, 5, 6)
    }


# -- early stopping -------------------------------------------------------------------------------


def test_early_stop_is_the_first_evaluation_one_percent_above_the_running_minimum():
    assert early_stop([3.0, 2.0, 2.01, 1.5, 1.52, 1.6], 0.01) == 4  # 1.52 > 1.5 * 1.01 = 1.515
    assert early_stop([3.0, 2.0, 2.019, 1.9], 0.01) is None  # 2.019 < 2.02
    assert early_stop([], 0.01) is None


def test_summary_reports_ood_ce_where_the_control_split_stops_and_ignores_step_0():
    task = small_task()
    control = [2.77, 4.0, 3.0, 3.1, 2.5]  # step 0 (uniform) would stop the run at step 10
    records = [
        {"kind": "eval", "step": 10 * i, "control/answer_ce": c, "ood/answer_ce": 100.0 + i, "id/answer_ce": 0.0,
         "ood/mbe": 1.0, "id/mbe": 1.0, "ood/exact_match": 0.0, "id/exact_match": 0.5}
        for i, c in enumerate(control)
    ]  # fmt: skip
    summary = task.summarize(records)
    assert summary["early_stop/step"] == 30 and summary["early_stop/ood/answer_ce"] == 103.0
    assert summary["early_stop/triggered"] == 1.0 and summary["final/ood/answer_ce"] == 104.0


# -- the experiment's own config ------------------------------------------------------------------


def test_every_scale_and_method_of_the_experiment_resolves():
    spec = load_experiment(EXPERIMENT)
    assert set(spec.methods) == {"ce", "ce_mbe", "gapt", "gapt_joint"}
    for scale in spec.scales:
        for method in spec.methods:
            config = resolve_run_config(spec, scale, method, 0)
            assert config.task.train_digits == (1, 3) and config.task.ood_digits == (4, 6)
    paper = resolve_run_config(spec, "paper", "gapt", 0)
    assert (paper.task.train_examples, paper.task.val_examples, paper.train.steps) == (10_000_000, 10_000, 875)
    assert paper.model.n_layer == 12 and paper.model.vocab_size == 50304


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    torch.set_num_threads(1)
    return {
        method: train(resolve_run_config(EXPERIMENT, "smoke", method, 0), tmp_path_factory.mktemp(method), show_progress=False)
        for method in ("ce", "ce_mbe", "gapt", "gapt_joint")
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "ce_mbe", "gapt", "gapt_joint"])
def test_smoke_run_has_every_metric_the_claims_and_table_name(smoke_runs, method):
    summary = smoke_runs[method]
    spec = load_experiment(EXPERIMENT)
    keys = {c.metric for c in spec.paper.claims} | {row.key for row in spec.paper.table}
    for key in keys:
        value = summary[key] if key in summary else summary["metrics"][key]
        assert math.isfinite(value), key
    for d in range(4, 7):
        assert 0.0 <= summary["metrics"][f"final/ood/exact_match/digits_{d}"] <= 1.0
    assert summary["metrics"]["final/id/answer_ce"] < math.log(16)  # it learned something


@pytest.mark.slow
def test_smoke_gapt_runs_change_phase(smoke_runs):
    assert smoke_runs["gapt"]["phase_changes"] >= 2 and smoke_runs["gapt_joint"]["phase_changes"] >= 2
    assert smoke_runs["ce"]["phase_changes"] == 0
