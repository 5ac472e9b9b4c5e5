"""The compress steps of a matched-dose control (``Method.matches``), from its gated run's phases.

A gated run decides, step by step, whether to compress. Its matched-dose control compresses at
exactly as many steps, at times no controller chose: the gated run's phase of every step moved
circularly, within the segment that holds it, by a shift drawn for the seed and the segment (a
segment is a stretch of the run trained on one objective's data, such as a stage of experiment 3; a
run of one stage is one segment). Step ``t`` of a segment ``[a, b)`` of length ``n = b - a`` shifted
by ``s`` takes the phase the gated run had at step ``a + (t - a - s) mod n``.

- **A shift, not random steps**: it keeps the number of compress steps of every segment, the length
  of every compress phase and the spacing between them (a phase that crosses the end of the segment
  is cut in two and wraps to its start), and changes only when they happen. Drawing the same number
  of steps at random would also break sustained phases into scattered single steps: a second
  difference beside the timing, which the comparison must not have.
- **Drawn per seed** (``draw_shift``), uniformly between a quarter and three quarters of the
  segment: one fixed shift would put every seed's control at the same offset from a gate that runs
  like a clock (a smoothed gate whose phases end on its patiences), and so in the same phase at every
  evaluation; a drawn one spreads the offsets over seeds.
- **A multiple of** ``period``: the number of blocks ``gapt``'s compress phase cycles through (block
  ``alternate[step % period]``), so that each moved step regularizes the block it did in the gated run.
"""

from __future__ import annotations

import random
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


def draw_shift(length: int, period: int, seed: int, segment: int) -> int:
    """A shift of a segment of ``length`` steps: uniform between a quarter and three quarters of it,
    rounded down to a multiple of ``period`` (at least one period), from the seed and the segment's
    index alone."""
    rng = random.Random(
        f"matched-dose/seed{seed}/segment{segment}"
    )  # a str seeds it the same in every process
    drawn = rng.randint(length // 4, (3 * length) // 4)
    return max(period, drawn - drawn % period)


def shifted(compress: Sequence[bool], segments: Sequence[tuple[int, int]], shifts: Sequence[int]) -> Ranges:
    """The matched-dose schedule: each segment's phases moved circularly by its shift.

    ``compress`` holds the gated run's phase of every step (True: compress); ``segments`` are
    half-open ranges that cover every step exactly once, in order; ``shifts`` one per segment.
    """
    steps = len(compress)
    starts, ends = [a for a, _ in segments], [b for _, b in segments]
    if starts[1:] != ends[:-1] or starts[0] != 0 or ends[-1] != steps or len(shifts) != len(segments):
        raise ValueError(f"segments {list(segments)} do not cover the {steps} steps in order, one shift each")
    out = [False] * steps
    for (a, b), shift in zip(segments, shifts):
        n = b - a
        for t in range(a, b):
            out[t] = compress[a + (t - a - shift) % n]
    return ranges(out)
