"""LagProbe: an actor that measures how long a message waits before a dispatcher thread runs it.

The edge tells it `LagPing(sent_at=now)` a few times a second; the probe reports
`now - sent_at` through `report`. A ping waits behind whatever the shared threads are doing (every
call's actors, turn by turn), so its wait is the wait any call's message has now. A ping costs one
mailbox put and a subtraction.

Hooks run on a dispatcher thread; `report` is called there and must not block (the edge hands the
value to its event loop). If `report` raises, the probe fails alone and measuring stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.clock import SYSTEM_CLOCK, Clock
from actors.runtime import PooledActor

if TYPE_CHECKING:
    from actors.runtime import Dispatcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LagPing:
    sent_at: float  # monotonic seconds, on the probe's clock


class LagProbe(PooledActor):
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        report: Callable[[float], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(dispatcher)
        self._report = report
        self._clock = clock

    def on_receive(self, message: Any) -> Any:
        """Report how long a `LagPing` waited (seconds)."""
        match message:
            case LagPing(sent_at=sent_at):
                self._report(max(0.0, self._clock.monotonic() - sent_at))
            case _:
                logger.warning("unexpected message %r", message)
