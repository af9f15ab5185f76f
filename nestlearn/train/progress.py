"""A tqdm progress bar showing step, loss, tokens/s and the ETA."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """Progress over `total` steps starting at `initial`, with loss and tokens/s in the postfix."""

    def __init__(self, *, total: int, initial: int, tokens_per_step: int, enabled: bool):
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )
        self._tokens_per_step = tokens_per_step
        self._last_time, self._last_step = time.perf_counter(), initial
        self.tokens_per_second = 0.0

    def update(self, step: int, loss: float) -> None:
        """Advances the bar to `step` and refreshes loss and throughput."""
        now = time.perf_counter()
        if step > self._last_step and now > self._last_time:
            rate = (step - self._last_step) * self._tokens_per_step / (now - self._last_time)
            # An exponential moving average: single steps are noisy on a shared CPU.
            ema = self.tokens_per_second
            self.tokens_per_second = rate if ema == 0 else 0.9 * ema + 0.1 * rate
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_second:,.0f}")
        self._last_time, self._last_step = now, step

    def close(self) -> None:
        self._bar.close()
