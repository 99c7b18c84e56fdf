"""LoadGate: admission by measured load. Closed, it refuses new calls ("load"); it never ends one.

    LoopLagProbe (every 20 ms) ----observe_loop_lag------+
    DispatchLagProbe (every 50 ms) --observe_dispatch_lag-+-> LoadGate --is_open--> CallEdge
    CpuProbe (every 250 ms) ------observe_cpu-------------+     +--subscribe(on_change)

Each measurement is kept for `window_s` (2 s). The lags count by their p99 (nearest rank), taken
after every new sample, except that the window's single worst sample never decides alone (with
fewer than 100 samples, nearest-rank p99 would be the maximum: one stall is an event, not a
load); the process's CPU by its mean. The gate closes as soon as the loop lag's p99 passes
`limits.max_loop_lag_ms`, the dispatcher lag's passes `limits.max_dispatch_lag_ms`, or the CPU
passes `limits.max_cpu_pct` of one core (0 turns a measurement off). It opens again once every
measurement has stayed calm for `reopen_after_s` (1 s): the lags at or under half their
thresholds, the CPU at or under 90 % of its own. The hysteresis keeps a server hovering at a
threshold from admitting in bursts. Lag is the late signal: a loop lags only once its process
is already past what it can carry, and calls admitted meanwhile break; CPU rises before that
(decisions 0090, 0091).

An operator (or a test) may force it: `set_mode("off")` refuses every new call, `"on"` admits
regardless of load, `"auto"` follows the measurements again. Each change of the gate's answer is
logged once (closing: a warning with the p99 and the threshold; opening: a line with how many
calls it refused meanwhile) and given to every subscriber. Loop only: the probes hop to the loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from config.settings import LimitsSettings

logger = logging.getLogger(__name__)

WINDOW_S = 2.0
REOPEN_AFTER_S = 1.0
REOPEN_FRACTION = 0.5
# CPU reopens closer to its limit: half of it would keep a worker with a steady 50 % shut.
CPU_REOPEN_FRACTION = 0.9

Mode = Literal["auto", "on", "off"]
MODES: tuple[Mode, ...] = ("auto", "on", "off")
Why = Literal["", "loop_lag", "dispatch_lag", "cpu", "forced"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateState:
    """What the gate answers now, and from what."""

    open: bool
    mode: Mode
    why: Why  # why it is closed ("" when open)
    loop_lag_p99_ms: float
    dispatch_lag_p99_ms: float
    cpu_pct: float  # this process's CPU over the window, % of one core
    max_loop_lag_ms: float
    max_dispatch_lag_ms: float
    max_cpu_pct: float
    refused: int  # calls refused since it last closed (the current or the last episode)
    since_s: float  # how long it has been in this state

    def as_json(self) -> dict[str, Any]:
        return {
            key: round(value, 1) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


class _Window:
    """Samples of one measurement over the last `window_s`, and their p99."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, at: float, value: float) -> None:
        self._samples.append((at, value))

    def _forget(self, now: float) -> None:
        samples = self._samples
        while samples and samples[0][0] < now - self._window_s:
            samples.popleft()

    def mean(self, now: float) -> float:
        self._forget(now)
        samples = self._samples
        return sum(value for _, value in samples) / len(samples) if samples else 0.0

    def p99(self, now: float) -> float:
        self._forget(now)
        samples = self._samples
        if not samples:
            return 0.0
        ordered = sorted(value for _, value in samples)
        rank = math.ceil(0.99 * len(ordered))
        if len(ordered) > 1:
            rank = min(rank, len(ordered) - 1)  # never the worst sample alone
        return ordered[rank - 1]


class LoadGate:
    """Open or closed to new calls, from the p99 of the loop's and the dispatcher's lag.

    Args:
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        limits: LimitsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
        reopen_after_s: float = REOPEN_AFTER_S,
    ) -> None:
        self._max_loop_s = limits.max_loop_lag_ms / 1000
        self._max_dispatch_s = limits.max_dispatch_lag_ms / 1000
        self._max_cpu = limits.max_cpu_pct / 100
        self._clock = clock
        self._reopen_after_s = reopen_after_s
        self._loop = _Window(window_s)
        self._dispatch = _Window(window_s)
        self._cpu = _Window(window_s)
        self._loop_p99 = 0.0
        self._dispatch_p99 = 0.0
        self._cpu_mean = 0.0
        self._mode: Mode = "auto"
        self._measured_open = True
        self._measured_why: Why = ""
        self._calm_since: float | None = None
        self._open = True
        self._changed_at = clock()
        self._refused = 0
        self._subscribers: list[Callable[[GateState], None]] = []

    # -- reading ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Would a new call be admitted, as far as load goes."""
        return self._open

    def state(self) -> GateState:
        """The gate now (its measurements brought up to date first)."""
        now = self._clock()
        self._evaluate(now)
        return self._state(now)

    def subscribe(self, on_change: Callable[[GateState], None]) -> Callable[[], None]:
        """Call `on_change(state)` on the loop each time the gate opens or closes.

        Returns a function that ends the subscription. A subscriber that raises is logged.
        """
        self._subscribers.append(on_change)

        def unsubscribe() -> None:
            if on_change in self._subscribers:
                self._subscribers.remove(on_change)

        return unsubscribe

    # -- measurements, refusals, the override ----------------------------------------------------

    def observe_loop_lag(self, lag_s: float) -> None:
        """One loop-lag sample (how late a timer ran, in seconds)."""
        now = self._clock()
        self._loop.add(now, lag_s)
        self._evaluate(now)

    def observe_dispatch_lag(self, lag_s: float) -> None:
        """One dispatcher-lag sample (how long a message waited for a thread, in seconds)."""
        now = self._clock()
        self._dispatch.add(now, lag_s)
        self._evaluate(now)

    def observe_cpu(self, cores: float) -> None:
        """This process's CPU since the last sample, in cores (1.0: one core, all the time)."""
        now = self._clock()
        self._cpu.add(now, cores)
        self._evaluate(now)

    def refused(self) -> None:
        """A call was refused because the gate is closed (counted for the episode's log line)."""
        self._refused += 1

    def set_mode(self, mode: Mode) -> GateState:
        """Force the gate closed ("off") or open ("on"), or let it follow the load ("auto")."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode != self._mode:
            logger.warning("= admission mode: %s -> %s", self._mode, mode)
            self._mode = mode
        now = self._clock()
        self._evaluate(now)
        return self._state(now)

    # -- internals -------------------------------------------------------------------------------

    def _evaluate(self, now: float) -> None:
        self._loop_p99 = loop_p99 = self._loop.p99(now)
        self._dispatch_p99 = dispatch_p99 = self._dispatch.p99(now)
        self._cpu_mean = cpu = self._cpu.mean(now)
        if self._measured_open:
            why: Why = ""
            if self._max_loop_s and loop_p99 > self._max_loop_s:
                why = "loop_lag"
            elif self._max_dispatch_s and dispatch_p99 > self._max_dispatch_s:
                why = "dispatch_lag"
            elif self._max_cpu and cpu > self._max_cpu:
                why = "cpu"
            if why:
                self._measured_open, self._measured_why, self._calm_since = False, why, None
        else:
            calm = (
                (not self._max_loop_s or loop_p99 <= self._max_loop_s * REOPEN_FRACTION)
                and (
                    not self._max_dispatch_s
                    or dispatch_p99 <= self._max_dispatch_s * REOPEN_FRACTION
                )
                and (not self._max_cpu or cpu <= self._max_cpu * CPU_REOPEN_FRACTION)
            )
            if not calm:
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self._reopen_after_s:
                self._measured_open, self._measured_why = True, ""
        is_open = self._measured_open if self._mode == "auto" else self._mode == "on"
        if is_open != self._open:
            self._flip(is_open, now)

    def _why(self) -> Why:
        if self._open:
            return ""
        return "forced" if self._mode == "off" else self._measured_why

    def _flip(self, is_open: bool, now: float) -> None:
        held_s = now - self._changed_at
        self._open, self._changed_at = is_open, now
        if is_open:
            logger.info(
                "= admission open again after %.1f s closed: %d calls refused meanwhile",
                held_s,
                self._refused,
            )
        else:
            self._refused = 0
            why = self._why()
            if why == "loop_lag":
                measured, limit = self._loop_p99, self._max_loop_s
            elif why == "dispatch_lag":
                measured, limit = self._dispatch_p99, self._max_dispatch_s
            else:
                measured = limit = 0.0
            if why == "forced":
                logger.warning("= admission closed by the operator: new calls are refused")
            elif why == "cpu":
                logger.warning(
                    "= admission closed: CPU %.0f %% of a core over %.0f %%: new calls are refused",
                    self._cpu_mean * 100,
                    self._max_cpu * 100,
                )
            else:
                logger.warning(
                    "= admission closed: %s p99 %.0f ms over %.0f ms: new calls are refused",
                    why.replace("_", " "),
                    measured * 1000,
                    limit * 1000,
                )
        state = self._state(now)
        for subscriber in list(self._subscribers):
            try:
                subscriber(state)
            except Exception:
                logger.exception("= an admission subscriber failed")

    def _state(self, now: float) -> GateState:
        return GateState(
            open=self._open,
            mode=self._mode,
            why=self._why(),
            loop_lag_p99_ms=self._loop_p99 * 1000,
            dispatch_lag_p99_ms=self._dispatch_p99 * 1000,
            cpu_pct=self._cpu_mean * 100,
            max_loop_lag_ms=self._max_loop_s * 1000,
            max_dispatch_lag_ms=self._max_dispatch_s * 1000,
            max_cpu_pct=self._max_cpu * 100,
            refused=self._refused,
            since_s=now - self._changed_at,
        )
