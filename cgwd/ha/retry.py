"""Counted retries with backoff, the sleep injected (tests pass a recorder, not time)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = ["HaError", "RetryPolicy", "with_retries"]

T = TypeVar("T")


class HaError(Exception):
    """A takeover step failed; ``str()`` is one line for the operator, ``attempts`` how many
    calls were made, ``code`` a stable word (``throttled``, ``access_denied``,
    ``unreachable``...)."""

    def __init__(self, message: str, *, code: str = "error", attempts: int = 1):
        super().__init__(message)
        self.code = code
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): doubling, capped."""
        return min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))


def with_retries(call: Callable[[], T], policy: RetryPolicy, *, what: str,
                 classify: Callable[[BaseException], HaError | None],
                 retryable: Callable[[HaError], bool],
                 sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[HaError, int], None] | None = None) -> tuple[T, int]:
    """Run ``call`` up to ``policy.attempts`` times; returns (result, attempts used).

    ``classify`` turns an exception into an :class:`HaError` (None: not ours, re-raised);
    ``retryable`` says whether another attempt may help (throttling, a timeout) or not
    (access denied). The final error says what failed and after how many attempts."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(), attempt
        except Exception as exc:  # noqa: BLE001 - classified below, the rest re-raised
            err = classify(exc)
            if err is None:
                raise
        if not retryable(err) or attempt >= policy.attempts:
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise HaError(f"{what}: {err}{tries}", code=err.code, attempts=attempt) from None
        if on_retry is not None:
            on_retry(err, attempt)
        sleep(policy.delay(attempt))
