"""OTP supervision policy, pure: child specs, rest_for_one, restart intensity and backoff.

Erlang/OTP semantics (erlang.org/doc/system/sup_princ) mapped onto one call:

* restart type per child: `permanent` is always restarted, `transient` only after an abnormal
  exit (every failure the supervisor hears of is abnormal), `temporary` never;
* strategy `rest_for_one` over the start order: a failed child and every child started after it
  are replaced, in start order, because the later ones depend on the earlier ones;
* intensity: more than `max_restarts` restarts within `restart_window_s` escalates (the call
  ends with reason "escalated"); unlike OTP, each restart waits an exponential backoff first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from config.settings import SupervisionSettings

RestartType = Literal["permanent", "transient", "temporary"]
N = TypeVar("N", bound=str)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    name: str
    restart: RestartType


def rest_for_one(order: Sequence[N], failed: N) -> tuple[N, ...]:
    """The failed child and every child started after it, in start order."""
    return tuple(order[order.index(failed) :])


def should_restart(spec: ChildSpec, *, abnormal: bool = True) -> bool:
    if spec.restart == "permanent":
        return True
    if spec.restart == "transient":
        return abnormal
    return False


class RestartIntensity:
    """Counts restarts in a sliding window and gives the backoff before the next one."""

    def __init__(self, settings: SupervisionSettings) -> None:
        self._max = settings.max_restarts
        self._window_s = settings.restart_window_s
        self._initial_s = settings.backoff_initial_ms / 1000
        self._max_backoff_s = settings.backoff_max_ms / 1000
        self._times: deque[float] = deque()
        self.total = 0

    def record(self, now: float) -> bool:
        """Record a restart at `now`; False when it exceeds the intensity (escalate instead)."""
        self.total += 1
        self._times.append(now)
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()
        return len(self._times) <= self._max

    def backoff_s(self) -> float:
        """Exponential: initial, 2x initial, 4x ... up to the maximum, by restarts in the window."""
        exponent = max(0, len(self._times) - 1)
        return float(min(self._initial_s * (2**exponent), self._max_backoff_s))
