"""What the frontend does when the engine core dies or stops making progress.

`RestartPolicy` (from `--engine-restart`, `--engine-restart-retries`): restart the core with
bounded retries and exponential backoff, or fail fast. Retries count consecutive failures: a core
that stayed up for `stable_s` before dying starts the count afresh, so a core that crashes at
once again and again ends in a clean exit instead of a restart loop.

`StepWatchdog` (from `--engine-step-timeout`): the core sends a batch after every step that
changed anything, and says when it goes idle (nothing to do, or nothing that can progress until
an input arrives). So silence from a core that has work and did not say it is idle means a step
has been running for that long: the engine is unhealthy.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

logger = logging.getLogger("pagedserve.server")


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_retries: int = 3       # consecutive failed starts (or quick deaths) before giving up
    base_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_s: float = 60.0     # a core up this long before dying resets the count

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"engine_restart_retries: must be >= 0, got {self.max_retries}")
        if self.base_backoff_s < 0 or self.max_backoff_s < self.base_backoff_s:
            raise ValueError("engine restart backoff: need 0 <= base <= max")

    def backoff(self, attempt: int) -> float:
        """Delay before restart attempt `attempt` (0-based)."""
        return min(self.max_backoff_s, self.base_backoff_s * (2 ** attempt))


class RestartBudget:
    """Consecutive restart attempts under a policy."""

    def __init__(self, policy: RestartPolicy):
        self.policy = policy
        self.attempts = 0
        self.started_at = time.monotonic()

    def core_died(self) -> None:
        if time.monotonic() - self.started_at >= self.policy.stable_s:
            self.attempts = 0

    def next_delay(self) -> Optional[float]:
        """Backoff before the next attempt, or None when the retries are spent."""
        if not self.policy.enabled or self.attempts >= self.policy.max_retries:
            return None
        delay = self.policy.backoff(self.attempts)
        self.attempts += 1
        return delay

    def core_started(self) -> None:
        self.started_at = time.monotonic()


class StepWatchdog:
    """Tracks the core's messages; `stuck_for()` is how long a busy core has been silent."""

    def __init__(self, timeout_s: float):
        if timeout_s <= 0:
            raise ValueError(f"engine_step_timeout: must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._last = time.monotonic()
        self._idle = True

    def heard(self, idle: bool) -> None:
        self._last = time.monotonic()
        self._idle = idle

    def work_sent(self) -> None:
        """The frontend gave the core work: an idle core's clock starts now."""
        if self._idle:
            self._idle = False
            self._last = time.monotonic()

    def problem(self, has_work: bool) -> Optional[str]:
        silent = time.monotonic() - self._last
        if has_work and not self._idle and silent > self.timeout_s:
            return (f"an engine step has not finished for {silent:.0f} s "
                    f"(--engine-step-timeout {self.timeout_s:g} s)")
        return None


async def restart_core(budget: RestartBudget, reason: str, old_core: Any,
                       make_core: Callable[[], Any], on_ready: Callable[[Any], None]) -> Any:
    """Replace a dead core client under the budget's policy: back off, start a fresh one, hand
    its Ready message to `on_ready`. Returns the new client, or None when giving up."""
    budget.core_died()
    with contextlib.suppress(Exception):  # sockets and temp files of the dead one
        await old_core.shutdown(timeout=2.0)
    while True:
        delay = budget.next_delay()
        if delay is None:
            logger.error("Engine core died (%s); not restarting it", reason)
            return None
        logger.warning("Engine core died (%s); restarting it in %.1f s (attempt %d of %d)",
                       reason, delay, budget.attempts, budget.policy.max_retries)
        await asyncio.sleep(delay)
        core = make_core()
        try:
            on_ready(await core.start())
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await core.shutdown(timeout=2.0)
            raise
        except Exception as exc:
            reason = f"restart failed: {exc}"
            with contextlib.suppress(Exception):
                await core.shutdown(timeout=2.0)
            continue
        logger.info("Engine core restarted")
        return core
