"""Progress of a run: a tqdm bar on a terminal, a few plain lines otherwise (CI, Snakemake logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

LINES_PER_RUN = 20


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, bar: bool | None = None):
        self.total = total
        self.enabled = enabled
        self.bar_mode = sys.stderr.isatty() if bar is None else bar
        self.every = max(1, total // LINES_PER_RUN)
        self._bar: tqdm | None = None
        self._t0 = time.perf_counter()
        self._first = 0

    def start(self, initial: int) -> None:
        self._t0, self._first = time.perf_counter(), initial
        if self.enabled and self.bar_mode:
            self._bar = tqdm(
                total=self.total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def update(self, step: int, loss_key: str, loss: float, mbe: list[float], phase: str) -> None:
        """One step; ``mbe``: the training MBE of the blocks the controller monitors."""
        if not self.enabled:
            return
        shown_mbe = f" | monitored mbe {sum(mbe) / len(mbe):.3f}" if mbe else ""  # none yet after a resume
        if self._bar is not None:
            self._bar.update(1)
            if step % 10 == 0 or step + 1 == self.total:
                self._bar.set_postfix_str(f"{loss_key} {loss:.4f}{shown_mbe} | {phase}", refresh=False)
            return
        done = step + 1
        if done % self.every == 0 or done == self.total:
            rate = (done - self._first) / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            print(
                f"[step {done}/{self.total}] {loss_key} {loss:.4f}{shown_mbe} | {phase} | "
                f"{rate:.2f} steps/s | eta {eta / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
        line = f"[eval @ {step}] {shown}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
