"""Experiment 2 (arithmetic_ood): data, the held-out ID split, answer mask, exact-match scoring, early
stopping, smoke runs."""

import hashlib
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from replication.config.base import deep_merge
from replication.config.plan import load_plan
from replication.config.report import load_report_spec
from replication.config.run import resolve_run_config, validate_run_config
from replication.models import ModelOutput, build_model
from replication.reporting.aggregate import DERIVED
from replication.tasks.arithmetic.data import (
    BOS,
    EOS,
    SYMBOLS,
    VOCAB_SIZE,
    answer_lengths,
    decode,
    encode,
    encode_examples,
    example_aligned_windows,
    example_text,
    held_out,
    pair_hash,
    sample_operands,
    sample_square,
)
from replication.tasks.arithmetic.task import Task, answer_mask, early_stop
from replication.training.train import train

from .conftest import REPO, TINY

EXPERIMENT = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
EXAMPLE = re.compile(r"<bos>(\d+) x (\d+) = (\d+)<eos>")
SMALL_TASK = {
    "name": "arithmetic",
    "train_examples": 3000,
    "val_examples": 60,
    "seq_len": 64,
    "micro_batch_size": 4,
    "eval_batch_rows": 8,
    "exact_match_per_digits": 5,
    "decode_batch": 7,
}
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


@pytest.mark.parametrize(
    "text", ["<bos>12 x 34 = 408<eos>", "<bos>7 x 8 = 56<eos><bos>999 x 1 = 999<eos>", "x = 0"]
)
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
    for split in ("id", "id_seen", "ood", "control"):
        examples = [e for row in task.windows[split] for e in whole_examples(row.tolist())]
        seen[split] = {digits(x) for a, b, _ in examples for x in (a, b)}
    train_examples = whole_examples(task.stream.tolist())
    seen["train"] = {digits(x) for a, b, _ in train_examples for x in (a, b)}
    return seen


def test_every_split_draws_operands_from_its_pinned_digit_range():
    seen = split_operand_digits(small_task())
    assert seen == {
        "train": {1, 2, 3},
        "id": {1, 2, 3},
        "id_seen": {1, 2, 3},
        "ood": {4, 5, 6},
        "control": {4, 5, 6},
    }


def test_ood_digits_must_lie_above_the_training_digits():
    with pytest.raises(ValueError, match="must start above train_digits"):
        small_task(train_digits=(1, 3), ood_digits=(3, 6))


def test_every_example_is_a_correct_product():
    task = small_task()
    examples = whole_examples(task.stream.tolist()) + [
        e for r in task.windows["ood"] for e in whole_examples(r.tolist())
    ]
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


# -- the held-out ID split ------------------------------------------------------------------------

ALL_ID_PAIRS = np.stack(np.meshgrid(np.arange(1, 1000), np.arange(1, 1000), indexing="ij")).reshape(2, -1)
# unordered pairs held out per bucket (digits of the smaller-digit operand, digits of the other)
HELD_OUT_PER_BUCKET = {(1, 1): 4, (1, 2): 87, (1, 3): 845, (2, 2): 406, (2, 3): 8190, (3, 3): 40537}


def digit_counts(x: np.ndarray) -> np.ndarray:
    return np.floor(np.log10(x)).astype(np.int64) + 1


def unordered_keys(a, b) -> np.ndarray:
    """One integer per unordered pair {a, b}: a x b and b x a share it."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.minimum(a, b) * 10**9 + np.maximum(a, b)


def reference_pair_hash(a: int, b: int) -> int:
    """pair_hash in plain Python integers: splitmix64(splitmix64(min ^ salt) ^ max)."""
    mask = 2**64 - 1

    def mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    salt = int.from_bytes(hashlib.sha256(b"arithmetic_ood held-out ID pairs").digest()[:8], "little")
    return mix(mix(min(a, b) ^ salt) ^ max(a, b))


def test_pair_hash_matches_a_plain_python_reference():
    a, b = sample_operands(np.random.default_rng(5), 300, (1, 9))
    reference = [reference_pair_hash(x, y) for x, y in zip(a.tolist(), b.tolist())]
    assert pair_hash(a, b).tolist() == reference
    assert held_out(a, b).tolist() == [h < 0.1 * 2**64 for h in reference]
    assert held_out(7, 8) == held_out(np.array([8]), np.array([7]))[0]  # scalars and arrays alike


def test_a_tenth_of_every_digit_bucket_is_held_out_and_a_product_and_its_twin_go_together():
    a, b = ALL_ID_PAIRS  # all 999 x 999 ordered pairs of 1-3 digit operands
    held = held_out(a, b)
    assert np.array_equal(held, held_out(b, a))  # the commutative twin b x a is held out with a x b
    da, db = digit_counts(a), digit_counts(b)
    for (x, y), count in HELD_OUT_PER_BUCKET.items():
        unordered = (da == x) & (db == y) & ((a <= b) | (x != y))
        assert held[unordered].sum() == count, (x, y)
        if x > 1:
            assert abs(count / unordered.sum() - 0.1) < 0.006
    one_by_one = held & (da == 1) & (db == 1) & (a <= b)
    assert list(zip(a[one_by_one].tolist(), b[one_by_one].tolist())) == [(2, 3), (2, 8), (3, 3), (3, 8)]
    assert held.sum() == 100_038  # of 998,001 ordered pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_samplers_stay_on_their_side_of_the_split_with_uniform_digit_counts(seed):
    rng = np.random.default_rng(seed)
    train_a, train_b = sample_operands(rng, 1_000_000, (1, 3), "train")
    assert not held_out(train_a, train_b).any()
    a, b = ALL_ID_PAIRS
    small = ~held_out(a, b) & ((a < 10) | (b < 10) | (np.maximum(a, b) < 100))  # buckets of <= 8100 pairs
    assert np.isin(
        unordered_keys(a[small], b[small]), unordered_keys(train_a, train_b)
    ).all()  # all reachable
    val_a, val_b = sample_operands(rng, 100_000, (1, 3), "held_out")
    assert held_out(val_a, val_b).all()
    for x, y in ((train_a, train_b), (val_a, val_b)):  # the 9 (digits of a, digits of b) cells stay uniform
        cells = np.bincount(3 * (digit_counts(x) - 1) + digit_counts(y) - 1, minlength=9) / len(x)
        assert np.all(np.abs(cells * 9 - 1) < 0.05)  # a redraw outside its cell would shift 1 x 1 by 14 %
    for d in (1, 2, 3):
        square = sample_square(rng, 500, d, "held_out")
        assert held_out(*square).all() and set(digit_counts(np.concatenate(square)).tolist()) == {d}
    unrestricted = sample_operands(np.random.default_rng(seed), 1000, (1, 3))
    assert held_out(*unrestricted).any() and not held_out(*unrestricted).all()


def id_evaluation_pairs(task: Task) -> dict[str, list[tuple[int, int]]]:
    """The operand pairs of the held-out ID validation windows and of the ID exact-match prompts."""
    val = [(a, b) for row in task.windows["id"].tolist() for a, b, _ in whole_examples(row)]
    prompts = [
        tuple(map(int, re.fullmatch(r"<bos>(\d+) x (\d+) =", decode(prompt)).groups()))
        for prompts, _ in task.prompts["id"].values()
        for prompt in prompts.tolist()
    ]
    return {"validation": val, "exact_match": prompts}


def training_pairs(task: Task) -> np.ndarray:
    """Unordered keys of every pair in the training stream (read back from the stream's operands,
    which must encode to exactly that stream)."""
    assert np.array_equal(encode_examples(*task.train_operands)[0], task.stream)
    return np.unique(unordered_keys(*task.train_operands))


def experiment_task(scale: str, seed: int, max_train_examples: int = 200_000) -> Task:
    """The experiment's task at a scale and seed, its training stream cut to max_train_examples: the
    10 M examples of gpu1 and paper take 10 s and 1.5 GB to build; smoke and cpu are built whole."""
    config = resolve_run_config(EXPERIMENT, scale, "ce", seed)
    shorter = min(config.task.train_examples, max_train_examples)
    task = config.task.model_copy(update={"train_examples": shorter})
    return Task(config.model_copy(update={"task": task}), torch.device("cpu"))


SCALE_SEEDS = [
    (name, seed) for name, scale in load_report_spec(EXPERIMENT).scales.items() for seed in scale.seeds
]


@pytest.mark.parametrize("scale, seed", SCALE_SEEDS)
def test_no_held_out_id_pair_or_its_twin_is_in_the_training_stream(scale, seed):
    task = experiment_task(scale, seed)
    if scale in ("smoke", "cpu"):  # built whole
        assert (
            len(task.train_operands[0])
            == resolve_run_config(EXPERIMENT, scale, "ce", seed).task.train_examples
        )
    trained = training_pairs(task)
    for name, pairs in id_evaluation_pairs(task).items():
        expected = task.cfg.val_examples if name == "validation" else 3 * task.cfg.exact_match_per_digits
        assert len(pairs) == expected
        assert not np.isin(unordered_keys(*zip(*pairs)), trained).any(), name
    ood = [
        (a, b)
        for s in ("ood", "control")
        for row in task.windows[s].tolist()
        for a, b, _ in whole_examples(row)
    ]
    assert digit_counts(np.array(ood)).min() >= 4
    assert not np.isin(unordered_keys(*zip(*ood)), trained).any()


def test_at_the_papers_count_the_stream_holds_no_held_out_pair_by_construction():
    """The paper's 10 M examples are not built here; the guarantee is structural: held_out is a fixed
    function of the unordered pair (tested on every 1-3 digit pair above), the training sampler emits
    only pairs outside it whatever its seed and count, and the paper's ID validation and exact-match
    prompts lie inside it."""
    task = experiment_task("paper", seed=0)
    assert resolve_run_config(EXPERIMENT, "paper", "ce", 0).task.train_examples == 10_000_000
    assert not held_out(*task.train_operands).any()
    for pairs in id_evaluation_pairs(task).values():
        assert held_out(*np.array(pairs).T).all()


def test_seen_id_examples_are_the_first_examples_the_model_is_trained_on():
    task = small_task()
    seen = [e for row in task.windows["id_seen"].tolist() for e in whole_examples(row)]
    a, b = task.train_operands
    offsets = encode_examples(a, b)[1]
    ends = np.append(offsets[1:], len(task.stream))
    span = task.cfg.seq_len + 1
    whole = sorted({i for s in task.row_starts for i in np.flatnonzero((offsets >= s) & (ends <= s + span))})
    first = [(int(a[i]), int(b[i]), int(a[i] * b[i])) for i in whole[: task.cfg.val_examples]]
    assert len(seen) == task.cfg.val_examples and seen == first
    read = Counter()  # what train_batch feeds the model in its first steps
    for step in range(4):
        for micro in range(task.grad_accum):
            batch = task.train_batch(step, micro)
            for row in torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1).tolist():
                read.update(whole_examples(row))
    assert all(read[e] >= n for e, n in Counter(seen).items())


# -- determinism ----------------------------------------------------------------------------------


def batches(task: Task) -> list[torch.Tensor]:
    return [task.train_batch(step, micro).inputs for step in (0, 3, 50) for micro in (0, 1)]


def test_data_is_a_function_of_the_data_seed_only():
    first, again = small_task(seed=1, data_seed=7), small_task(seed=2, data_seed=7)
    other = small_task(seed=1, data_seed=8)
    assert all(torch.equal(x, y) for x, y in zip(batches(first), batches(again)))
    assert all(torch.equal(first.windows[s], again.windows[s]) for s in ("id", "id_seen", "ood", "control"))
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
    assert torch.equal(
        wide.train_batch(1, 0).inputs,
        torch.cat([task.train_batch(2, 0).inputs, task.train_batch(2, 1).inputs]),
    )
    assert torch.equal(task.train_batch(3, 1).inputs, other_rank.train_batch(3, 1).inputs)
    assert not torch.equal(task.train_batch(3, 0).inputs, task.train_batch(3, 1).inputs)


# -- the answer mask ------------------------------------------------------------------------------


def marked(text: str) -> str:
    """The text with every answer token in brackets."""
    tokens = torch.tensor(encode(text))
    return "".join(
        f"[{SYMBOLS[t]}]" if m else SYMBOLS[t] for t, m in zip(tokens.tolist(), answer_mask(tokens).tolist())
    )


def test_answer_is_the_space_after_equals_and_the_digits_of_c_never_eos():
    assert marked("<bos>12 x 34 = 408<eos>") == "<bos>12 x 34 =[ ][4][0][8]<eos>"
    assert (
        marked("<bos>7 x 8 = 56<eos><bos>3 x 3 = 9<eos>")
        == "<bos>7 x 8 =[ ][5][6]<eos><bos>3 x 3 =[ ][9]<eos>"
    )


def test_examples_cut_by_the_window_are_not_scored():
    assert marked("2 = 24<eos><bos>2 x 2 = 4<eos>") == "2 = 24<eos><bos>2 x 2 =[ ][4]<eos>"  # prompt cut
    assert (
        marked("<bos>2 x 2 = 4<eos><bos>6 x 7 = 4") == "<bos>2 x 2 =[ ][4]<eos><bos>6 x 7 = 4"
    )  # answer cut
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
        answer = encode(
            f" {int(match[1]) * int(match[2]) + self.error}" + ("<eos>" if self.stops else "0" * 30)
        )
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
    assert all(metrics[f"{p}/answer_ce"] < 1e-6 for p in ("id", "id_seen", "ood", "control"))


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
    metrics = task.evaluate(
        build_model(task.config.model), step=0, window=64
    )  # zero-init head: uniform logits
    for prefix in ("id", "id_seen", "ood", "control"):
        assert metrics[f"{prefix}/answer_ce"] == pytest.approx(math.log(16), rel=1e-5)
    assert {k for k in metrics if "mbe" in k} == {"id/mbe", "id/mbe_by_layer", "ood/mbe", "ood/mbe_by_layer"}
    assert len(metrics["ood/mbe_by_layer"]) == 5 and metrics["ood/mbe"] == pytest.approx(
        np.mean(metrics["ood/mbe_by_layer"])
    )
    assert {k for k in metrics if "/exact_match/" in k} == {
        f"id/exact_match/digits_{d}" for d in (1, 2, 3)
    } | {f"ood/exact_match/digits_{d}" for d in (4, 5, 6)}


# -- early stopping -------------------------------------------------------------------------------


def test_early_stop_is_the_first_evaluation_one_percent_above_the_running_minimum():
    assert early_stop([3.0, 2.0, 2.01, 1.5, 1.52, 1.6], 0.01) == 4  # 1.52 > 1.5 * 1.01 = 1.515
    assert early_stop([3.0, 2.0, 2.019, 1.9], 0.01) is None  # 2.019 < 2.02
    assert early_stop([], 0.01) is None


def test_summary_reports_ood_ce_where_the_control_split_stops_and_ignores_step_0():
    task = small_task()
    control = [2.77, 4.0, 3.0, 3.1, 2.5]  # step 0 (uniform) would stop the run at step 10
    records = [
        {
            "kind": "eval",
            "step": 10 * i,
            "control/answer_ce": c,
            "ood/answer_ce": 100.0 + i,
            "id/answer_ce": 0.0,
            "id_seen/answer_ce": 0.1 * i,
            "ood/mbe": 1.0,
            "id/mbe": 1.0,
            "ood/exact_match": 0.0,
            "id/exact_match": 0.5,
        }
        for i, c in enumerate(control)
    ]
    summary = task.summarize(records)
    assert summary["early_stop/step"] == 30 and summary["early_stop/ood/answer_ce"] == 103.0
    assert summary["early_stop/triggered"] == 1.0 and summary["final/ood/answer_ce"] == 104.0
    assert (
        summary["final/id_seen/answer_ce"] == pytest.approx(0.4) and "final/control/answer_ce" not in summary
    )


# -- the experiment's own config ------------------------------------------------------------------


def test_every_scale_and_method_of_the_experiment_resolves():
    spec = load_report_spec(EXPERIMENT)
    assert set(spec.methods) == {"ce", "ce_mbe", "gapt", "gapt_joint", "gapt_matched", "gapt_joint_matched"}
    for scale, scale_spec in spec.scales.items():
        for method in (
            scale_spec.methods if scale_spec.study_of else spec.methods
        ):  # a study's arm: its methods
            config = resolve_run_config(spec, scale, method, 0)
            assert config.task.train_digits == (1, 3) and config.task.ood_digits == (4, 6)
    paper = resolve_run_config(spec, "paper", "gapt", 0)
    assert (paper.task.train_examples, paper.task.val_examples, paper.train.steps) == (
        10_000_000,
        10_000,
        875,
    )
    assert paper.model.n_layer == 12 and paper.model.vocab_size == 50304


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    torch.set_num_threads(1)
    return {
        method: train(
            resolve_run_config(EXPERIMENT, "smoke", method, 0),
            tmp_path_factory.mktemp(method),
            show_progress=False,
        )
        for method in ("ce", "ce_mbe", "gapt", "gapt_joint")
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "ce_mbe", "gapt", "gapt_joint"])
def test_smoke_run_has_every_metric_the_claims_and_table_name(smoke_runs, method):
    summary = smoke_runs[method]
    spec = load_report_spec(EXPERIMENT)
    plan, _ = load_plan(EXPERIMENT.parent / "plan.yaml")
    keys = {c.metric for c in plan.claims} | {row.key for row in spec.paper.table}
    keys = {k for k in keys if not k.startswith(DERIVED)}  # the analysis derives these from the CSVs
    for key in keys:
        value = summary[key] if key in summary else summary["metrics"][key]
        assert math.isfinite(value), key
    for d in range(4, 7):
        assert 0.0 <= summary["metrics"][f"final/ood/exact_match/digits_{d}"] <= 1.0
    assert summary["metrics"]["final/id/answer_ce"] < math.log(16)  # it learned something
    assert math.isfinite(summary["metrics"]["final/id_seen/answer_ce"])


@pytest.mark.slow
def test_smoke_gapt_runs_change_phase(smoke_runs):
    assert smoke_runs["gapt"]["phase_changes"] >= 2 and smoke_runs["gapt_joint"]["phase_changes"] >= 2
    assert smoke_runs["ce"]["phase_changes"] == 0
