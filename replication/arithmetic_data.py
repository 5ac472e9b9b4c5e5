"""Multiplication as character tokens (PAPER.md section 6).

Vocabulary, 15 symbols: ``<bos>``=0, ``<eos>``=1, ``x``=2, ``=``=3, space=4, digits 0-9 = 5-14.
One example is ``<bos>{a} x {b} = {c}<eos>`` with c = a * b, and a split is one stream of examples
concatenated without padding. Each operand is drawn on its own: its digit count d uniform in the
split's range, then its value uniform in [10^(d-1), 10^d - 1] (so a 1-digit operand is 1..9).

The *answer* of an example is the space after ``=`` and every digit of c; ``<eos>`` is not part of
it. ``answer_mask`` finds the answer tokens of the examples that lie whole inside a window of
tokens, which is what the answer CE and the exact-match scoring count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

SYMBOLS = ("<bos>", "<eos>", "x", "=", " ", *"0123456789")
BOS, EOS, TIMES, EQUALS, SPACE = range(5)
FIRST_DIGIT = 5
VOCAB_SIZE = len(SYMBOLS)

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


def longest_example(max_digits: int) -> int:
    """Tokens in the longest example whose operands have at most max_digits digits."""
    return 1 + max_digits + 3 + max_digits + 3 + 2 * max_digits + 1


def sample_operands(rng: np.random.Generator, n: int, digits: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """n pairs (a, b): per operand, d ~ U{lo..hi}, then the value ~ U[10^(d-1), 10^d - 1]. int64 (n,)."""
    lo, hi = digits
    if not 1 <= lo <= hi <= 9:  # 9-digit operands keep c below 2^63
        raise ValueError(f"digit range must satisfy 1 <= lo <= hi <= 9, got {digits}")
    d = rng.integers(lo, hi + 1, size=(2, n))
    values = rng.integers(10 ** (d - 1), 10**d)  # high is exclusive
    return values[0], values[1]


def sample_square(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs (a, b) of two d-digit operands (d x d multiplication)."""
    return sample_operands(rng, n, (d, d))


def encode_examples(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Examples concatenated into one stream: (tokens uint8 (N,), offsets int64 (n,)), where
    offsets[i] is the position of example i's <bos>."""
    text = "".join(f"^{x} x {y} = {x * y}$" for x, y in zip(a.tolist(), b.tolist()))
    stream = _BYTE_TO_ID[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    return stream, np.flatnonzero(stream == BOS)


def answer_lengths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Answer tokens per example: the space after '=' and the digits of c."""
    return np.array([len(str(x * y)) + 1 for x, y in zip(a.tolist(), b.tolist())], dtype=np.int64)


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


def example_aligned_windows(stream: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """Cut a stream into windows of ``length`` tokens that each start at an example's <bos>, such
    that every example lies whole inside exactly one window's ``answer_mask``: (R, length) uint8.

    Window r starts at the first example that window r - 1 did not hold whole, so consecutive
    windows overlap by at most one example; the last window is padded with <eos>, which is never an
    answer token.
    """
    ends = np.append(offsets[1:], len(stream))
    if (ends - offsets).max() > length:
        raise ValueError(f"a window of {length} tokens cannot hold the longest example ({(ends - offsets).max()})")
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
