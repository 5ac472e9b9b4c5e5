"""Multiplication as character tokens (docs/SPEC.md section 6).

Vocabulary, 15 symbols: ``<bos>``=0, ``<eos>``=1, ``x``=2, ``=``=3, space=4, digits 0-9 = 5-14.
One example is ``<bos>{a} x {b} = {c}<eos>`` with c = a * b, and a split is one stream of examples
concatenated without padding. Each operand is drawn on its own: its digit count d uniform in the
split's range, then its value uniform in [10^(d-1), 10^d - 1] (so a 1-digit operand is 1..9).

Held-out pairs: ``held_out(a, b)`` reserves a fixed tenth of all operand pairs for held-out ID
evaluation, chosen by a salted 64-bit hash of the *unordered* pair {a, b}, so that a x b and its
commutative twin b x a fall on the same side. The rule depends on the pair only (not on a seed, a
split, a scale or an example count): the training sampler (``pairs="train"``) can only emit pairs
outside it and the held-out ID samplers (``pairs="held_out"``) only pairs inside it, so the two never
share a pair. Every digit bucket is cut by the same rule, the 81 one-digit x one-digit products
included: 4 of their 45 unordered pairs are held out, 2x3, 2x8, 3x3 and 3x8 (7 ordered pairs with
the twins); tests pin the counts of every bucket.

The *answer* of an example is the space after ``=`` and every digit of c; ``<eos>`` is not part of
it. ``task.answer_mask`` finds the answer tokens of the examples that lie whole inside a window of
tokens, which is what the answer CE and the exact-match scoring count. This module needs numpy only,
so that resolving a run config never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from replication.config.arithmetic import SYMBOLS, VOCAB_SIZE, longest_example  # noqa: F401

BOS, EOS, TIMES, EQUALS, SPACE = range(5)
FIRST_DIGIT = 5

_ID_OF = {symbol: i for i, symbol in enumerate(SYMBOLS)}
# one byte per token for the fast path of encode_examples: '^' stands for <bos>, '$' for <eos>
_BYTE_TO_ID = np.full(256, 255, dtype=np.uint8)
for _char, _id in (("^", BOS), ("$", EOS), ("x", TIMES), ("=", EQUALS), (" ", SPACE)):
    _BYTE_TO_ID[ord(_char)] = _id
for _digit in range(10):
    _BYTE_TO_ID[ord(str(_digit))] = FIRST_DIGIT + _digit


def encode(text: str) -> list[int]:
    """Text over the 15 symbols -> token ids; ``<bos>`` and ``<eos>`` are written out in full."""
    ids, i = [], 0
    while i < len(text):
        for special in ("<bos>", "<eos>"):
            if text.startswith(special, i):
                ids.append(_ID_OF[special])
                i += len(special)
                break
        else:
            if text[i] not in _ID_OF:
                raise ValueError(f"{text[i]!r} at position {i} is not one of the 15 arithmetic symbols")
            ids.append(_ID_OF[text[i]])
            i += 1
    return ids


def decode(ids: Iterable[int]) -> str:
    return "".join(SYMBOLS[int(i)] for i in ids)


def example_text(a: int, b: int) -> str:
    return f"<bos>{a} x {b} = {a * b}<eos>"


Pairs = Literal["all", "train", "held_out"]  # the whole pair space, or one side of held_out
HELD_OUT_FRACTION = 0.1  # of the unordered operand pairs, in every digit bucket alike
_HELD_OUT_SALT = np.uint64(0xEC381D7EF39142DC)  # sha256(b"arithmetic_ood held-out ID pairs")[:8], LE
_HELD_OUT_BELOW = np.uint64(int(HELD_OUT_FRACTION * 2**64))  # held out: a hash below this
_SPLITMIX = tuple(map(np.uint64, (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 30, 27, 31)))
_MAX_REDRAWS = 10_000


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, uint64 -> uint64 (wrapping arithmetic)."""
    golden, m1, m2, s1, s2, s3 = _SPLITMIX
    x = x + golden
    x = (x ^ (x >> s1)) * m1
    x = (x ^ (x >> s2)) * m2
    return x ^ (x >> s3)


def pair_hash(a, b) -> np.ndarray:
    """Salted 64-bit hash of the unordered pair {a, b} of positive ints: uint64, the shape of a and b.
    Symmetric (pair_hash(a, b) == pair_hash(b, a)), and a function of the pair alone."""
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix64(_mix64(lo ^ _HELD_OUT_SALT) ^ hi)


def held_out(a, b) -> np.ndarray:
    """True for the operand pairs reserved for held-out ID evaluation (about HELD_OUT_FRACTION of
    them): never in a training stream. Bool, the shape of a and b; held_out(a, b) == held_out(b, a)."""
    return pair_hash(a, b) < _HELD_OUT_BELOW


def sample_operands(
    rng: np.random.Generator, n: int, digits: tuple[int, int], pairs: Pairs = "all"
) -> tuple[np.ndarray, np.ndarray]:
    """n pairs (a, b): per operand, d ~ U{lo..hi}, then the value ~ U[10^(d-1), 10^d - 1]. int64 (n,).

    ``pairs`` restricts the draw to the training part of the pair space (``held_out`` False) or to
    the held-out part (True): a pair on the wrong side is redrawn with the same two digit counts, so
    the digit counts stay uniform and within each (digits of a, digits of b) cell the pairs are
    uniform over that cell's allowed part.
    """
    lo, hi = digits
    if not 1 <= lo <= hi <= 9:  # 9-digit operands keep c below 2^63
        raise ValueError(f"digit range must satisfy 1 <= lo <= hi <= 9, got {digits}")
    if pairs not in ("all", "train", "held_out"):
        raise ValueError(f"pairs must be 'all', 'train' or 'held_out', got {pairs!r}")
    d = rng.integers(lo, hi + 1, size=(2, n))
    values = rng.integers(10 ** (d - 1), 10**d)  # high is exclusive
    if pairs == "all":
        return values[0], values[1]
    want_held_out = pairs == "held_out"
    redraw = np.flatnonzero(held_out(values[0], values[1]) != want_held_out)
    for _ in range(_MAX_REDRAWS):
        if len(redraw) == 0:
            return values[0], values[1]
        cells = d[:, redraw]
        values[:, redraw] = rng.integers(10 ** (cells - 1), 10**cells)
        redraw = redraw[held_out(values[0, redraw], values[1, redraw]) != want_held_out]
    raise ValueError(f"{len(redraw)} draws of {digits} digits found no {pairs} pair in {_MAX_REDRAWS} tries")


def sample_square(
    rng: np.random.Generator, n: int, d: int, pairs: Pairs = "all"
) -> tuple[np.ndarray, np.ndarray]:
    """n pairs (a, b) of two d-digit operands (d x d multiplication), restricted as in sample_operands."""
    return sample_operands(rng, n, (d, d), pairs)


def encode_examples(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples concatenated into one stream: (tokens uint8 (N,), offsets int64 (n,)), where
    offsets[i] is the position of example i's <bos>."""
    text = "".join(f"^{x} x {y} = {x * y}$" for x, y in zip(a.tolist(), b.tolist()))
    stream = _BYTE_TO_ID[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    return stream, np.flatnonzero(stream == BOS)


def answer_lengths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Answer tokens per example: the space after '=' and the digits of c."""
    return np.array([len(str(x * y)) + 1 for x, y in zip(a.tolist(), b.tolist())], dtype=np.int64)


def example_aligned_windows(stream: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """Cut a stream into windows of ``length`` tokens that each start at an example's <bos>, such
    that every example lies whole inside exactly one window's ``answer_mask``: (R, length) uint8.

    Window r starts at the first example that window r - 1 did not hold whole, so consecutive
    windows overlap by at most one example; the last window is padded with <eos>, which is never an
    answer token.
    """
    ends = np.append(offsets[1:], len(stream))
    if (ends - offsets).max() > length:
        raise ValueError(
            f"a window of {length} tokens cannot hold the longest example ({(ends - offsets).max()})"
        )
    windows = []
    k = 0
    while k < len(offsets):
        start = offsets[k]
        window = stream[start : start + length]
        if len(window) < length:
            window = np.concatenate([window, np.full(length - len(window), EOS, dtype=stream.dtype)])
        windows.append(window)
        k = int(np.searchsorted(ends, start + length, side="right"))
    return np.stack(windows)
