"""The store's report queries on their own: percentiles, scoping, ranges, summaries."""

import asyncio
import datetime as dt

import pytest

from mediaserver.store import CallFilter, InvalidValue, NotFound, Store
from mediaserver.store.reports import percentile, percentiles, summarize_call
from tests.mediaserver.http_api.conftest import seed


def run(main):
    return asyncio.run(main())


def test_percentiles_interpolate_between_closest_ranks_like_numpy():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([400.0, 500.0, 600.0], 95) == pytest.approx(590.0)
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0
    summary = percentiles([None, 2.0, None, 4.0])
    assert (summary.count, summary.p50, summary.max) == (2, 3.0, 4.0)


def test_reports_see_only_the_companys_rows(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            acme = await seed(store, "acme")
            evil = await seed(store, "evil", calls=1)
            page = await store.search_calls(evil.company_id, CallFilter(agent_id=acme.agent_id))
            assert page.calls == [] and page.total == 0
            page = await store.search_calls(evil.company_id, CallFilter(), limit=10)
            assert [c.id for c in page.calls] == evil.call_ids and page.total == 1
            with pytest.raises(NotFound):
                await store.conversation_turns(evil.company_id, acme.conversation_id)
            today = dt.datetime.now(dt.UTC).date()
            (day,) = await store.usage_per_day(evil.company_id, today, today)
            assert day.calls == 1 and day.tokens_in == 10

    run(main)


def test_report_inputs_are_checked_and_name_the_field(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            acme = await seed(store, "acme", calls=1)
            today = dt.datetime.now(dt.UTC).date()
            checks = [
                (store.usage_per_day(acme.company_id, today, today - dt.timedelta(days=1)), "to"),
                (store.usage_per_day(acme.company_id, today - dt.timedelta(days=400), today), "to"),
                (store.search_calls(acme.company_id, CallFilter(status="ringing")), "status"),  # type: ignore[arg-type]
                (store.search_calls(acme.company_id, CallFilter(transport="pigeon")), "transport"),
                (
                    store.search_calls(acme.company_id, CallFilter(started_after=float("nan"))),
                    "started_after",
                ),
                (store.search_calls(acme.company_id, CallFilter(), limit=-1), "limit"),
            ]
            for attempt, field in checks:
                with pytest.raises(InvalidValue) as caught:
                    await attempt
                assert caught.value.field == field

    run(main)


def test_a_summary_of_a_live_call_has_no_duration_yet(tmp_path):
    async def main():
        async with await Store.open(str(tmp_path / "s.db")) as store:
            acme = await seed(store, "acme", calls=1)  # the only call is still live
            call = await store.get_call(acme.company_id, acme.call_ids[0])
            assert call is not None
            turns = await store.list_turns(acme.company_id, call.id)
            usage = await store.list_usage(acme.company_id, call.id)
            summary = summarize_call(call, turns, usage)
            assert summary.duration_s is None
            assert (summary.turns, summary.user_turns, summary.assistant_turns) == (2, 1, 1)
            assert summary.latency_ms["voice_to_voice_ms"].p50 == 400.0
            assert summary.latency_ms["stt_ms"].count == 1

    run(main)
