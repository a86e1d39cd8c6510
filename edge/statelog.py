"""Logging a failure that repeats: once when it starts, now and then while it lasts,
once when it ends.

During an outage every request may meet the same failure; a line per request buries
the few lines that matter (thousands per second under load). `StateLog` keeps the
state changes and a periodic count instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["StateLog"]

#: How often a failure that goes on is logged again, with its count.
REPEAT_SECONDS = 10.0


class StateLog:
    """The log of one thing that can fail (an origin, a shield, the purge API)."""

    def __init__(
        self,
        logger: logging.Logger,
        subject: str,
        *,
        every: float = REPEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.subject = subject
        self.every = every
        self.clock = clock
        self.failures = 0
        self._since: float | None = None
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        """Whether the last thing reported was a failure."""
        return self._since is not None

    def failed(self, message: str) -> None:
        """Report one failure: logged if it starts an outage or `every` has passed."""
        now = self.clock()
        self.failures += 1
        if self._since is None:
            self._since = now
            self._logged_at = now
            self.failures = 1
            self.logger.warning("%s %s", self.subject, message)
        elif now - self._logged_at >= self.every:
            self._logged_at = now
            self.logger.warning(
                "%s still failing after %.0fs (%d failures): %s",
                self.subject,
                now - self._since,
                self.failures,
                message,
            )

    def turned_unhealthy(self, message: str) -> None:
        """Report a health check's verdict turning to failed: a state change of its own,
        logged once even during an outage that is already being logged (it happens
        once per change, never per request)."""
        if self._since is None:
            self.failed(message)
            return
        self.failures += 1
        self.logger.warning("%s %s", self.subject, message)

    def recovered(self) -> None:
        """Report success: logged once if it ends an outage."""
        if self._since is None:
            return
        self.logger.warning(
            "%s is back after %.0fs (%d failures)",
            self.subject,
            self.clock() - self._since,
            self.failures,
        )
        self._since = None
        self.failures = 0
