"""Pacing and concurrency helpers shared by the providers.

- :class:`TokenBucket` keeps requests under a provider's rate limit (client-side), so that a
  batch of hundreds of nodes goes at the rate the API allows instead of bouncing off HTTP 429.
- :class:`BlockingPool` runs a synchronous SDK under asyncio in a bounded thread pool.
- :class:`Deadline` bounds the total time of retries so they end before Slurm's ResumeTimeout.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class TokenBucket:
    """Async token bucket: at most ``rate`` acquisitions per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(1.0, rate / 10))
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        """Wait until a request may be sent."""
        async with self._lock:  # FIFO: waiters are served in the order they came
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1

    def penalise(self, seconds: float) -> None:
        """Stop handing out tokens for ``seconds`` (after the server said 429 / Retry-After)."""
        self._refill()
        self._tokens = min(self._tokens, 0.0) - seconds * self.rate


class BlockingPool:
    """A bounded thread pool for a synchronous SDK, usable from asyncio."""

    def __init__(self, workers: int, name: str = "citc-power"):
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Deadline:
    """A point in time after which no new attempt starts."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.at = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    def expired(self) -> bool:
        return self.remaining() <= 0
