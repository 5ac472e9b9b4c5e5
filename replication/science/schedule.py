"""The compress steps of a matched-dose control (``Method.matches``), from its gated run's phases.

A gated run decides, step by step, whether to compress. Its matched-dose control compresses at
exactly as many steps, at times no controller chose: the gated run's phase of every step moved
circularly by half of the segment that holds it (a segment is a stretch of the run trained on one
objective's data, such as a stage of experiment 3; a run of one stage is one segment). Step ``t`` of a
segment ``[a, b)`` of length ``n = b - a`` takes the phase the gated run had at step
``a + (t - a - n // 2) mod n``.

Why a shift and not random steps: a shift keeps the number of compress steps of every segment, the
length of every compress phase and the spacing between them (a phase that crosses the end of the
segment is cut in two and wraps to its start), and changes only when they happen. Drawing the same
number of steps at random would also break sustained phases into scattered single steps: a second
difference beside the timing, which the comparison must not have. Half a segment is the shift that
moves every step farthest from where the controller put it.
"""

from __future__ import annotations

from collections.abc import Sequence

Ranges = list[tuple[int, int]]  # half-open [start, end) ranges of optimizer steps, sorted, disjoint


def ranges(compress: Sequence[bool]) -> Ranges:
    """The half-open ranges of consecutive True steps."""
    out: Ranges = []
    for step, on in enumerate(compress):
        if on and out and out[-1][1] == step:
            out[-1] = (out[-1][0], step + 1)
        elif on:
            out.append((step, step + 1))
    return out


def mask(compress: Ranges, steps: int) -> list[bool]:
    """One bool per step: whether the ranges hold it."""
    on = [False] * steps
    for start, end in compress:
        on[start:end] = [True] * (end - start)
    return on


def shifted(compress: Sequence[bool], segments: Sequence[tuple[int, int]]) -> Ranges:
    """The matched-dose schedule: each segment's phases moved circularly by half its length.

    ``compress`` holds the gated run's phase of every step (True: compress); ``segments`` are
    half-open ranges that cover every step exactly once, in order.
    """
    steps = len(compress)
    if (
        [a for a, _ in segments][1:] != [b for _, b in segments][:-1]
        or segments[0][0] != 0
        or segments[-1][1] != steps
    ):
        raise ValueError(f"segments {list(segments)} do not cover the {steps} steps in order")
    out = [False] * steps
    for a, b in segments:
        n = b - a
        for t in range(a, b):
            out[t] = compress[a + (t - a - n // 2) % n]
    return ranges(out)
