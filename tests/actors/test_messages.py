from typing import get_args

from actors.messages import (
    CRASH_REASONS,
    END_REASONS,
    LIVE_END_REASONS,
    CrashReason,
    EndReason,
)


def test_end_reasons_are_the_live_ones_then_the_crash_ones_each_once():
    assert get_args(EndReason) == LIVE_END_REASONS
    assert CRASH_REASONS == get_args(CrashReason) == ("worker_crash", "server_crash", "node_lost")
    assert END_REASONS == LIVE_END_REASONS + CRASH_REASONS
    assert len(set(END_REASONS)) == len(END_REASONS)
    assert "shutdown" in LIVE_END_REASONS and "server_restart" not in END_REASONS
