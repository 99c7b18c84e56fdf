"""50 concurrent calls, 500 random child crashes among them (seeded)."""

from __future__ import annotations

import random
import threading
import time

from actors.faults import Fault, FaultKind, FaultPlan
from actors.messages import CallEnded, CallEventRecorded, ResponseCompleted, TurnRecorded
from tests.actors.conftest import SUPERVISION, make_harness
from tests.actors.fakes import Script
from tests.timing import MS

CALLS = 50
CRASHES = 500
TURNS = 3
# Message kinds every call is sure to see, per child, with how many of each a conversation has.
TARGETS = [
    ("session", "InterimTranscribed", 8),
    ("session", "UtteranceTranscribed", 3),
    ("session", "ReplyFinished", 3),
    ("ingest", "AudioReceived", 120),
    ("transcriber", "AudioReplayed", 1),
    ("transcriber", "EngineOutput", 20),
    ("responder", "Reply", 3),
    ("responder", "EngineOutput", 30),
    ("responder", "CallerStartedSpeaking", 3),
]


def answered(call, expected: str) -> bool:
    box = call.outbox
    return bool(box.of(CallEnded)) or any(r.content == expected for r in box.of(ResponseCompleted))


def converse(call, results: dict[str, list[str]], done: threading.Event) -> None:
    """Speak TURNS turns, waiting for each answer; stop early if the call ends."""
    try:
        for _ in range(TURNS):
            words = call.caller.say(2)
            expected = f"You said {' '.join(words)}. Okay."
            # A transport sends frames all the time: silence flows while the caller waits.
            deadline = time.monotonic() + 20_000 * MS
            while not answered(call, expected):
                assert time.monotonic() < deadline, f"no answer to {expected!r}"
                call.caller.silence(40)
                call.outbox.wait_for(
                    lambda box, e=expected: answered(call, e), timeout=40 * MS, raise_=False
                )
            if call.outbox.of(CallEnded):
                break
            results.setdefault(call.call_id, []).append(" ".join(words))
    except AssertionError as error:
        results.setdefault("errors", []).append(f"{call.call_id}: {error}")
    finally:
        done.set()


def test_fifty_calls_with_five_hundred_random_crashes():
    rng = random.Random(20240531)
    settings = SUPERVISION.model_copy(
        update={"max_restarts": 10, "restart_window_s": 120.0, "stall_timeout_s": 5.0}
    )
    plans = [FaultPlan() for _ in range(CALLS)]
    for _ in range(CRASHES):
        child, message, seen = rng.choice(TARGETS)
        kinds: list[FaultKind] = ["exception", "exception", "system_exit"]
        kind = rng.choice(kinds)
        plans[rng.randrange(CALLS)].arm(
            Fault(child=child, message=message, nth=rng.randint(1, seen), kind=kind)
        )
    with make_harness(settings) as harness:
        calls = [harness.call(faults=plan, script=Script(tts_ms_per_word=2)) for plan in plans]
        results: dict[str, list[str]] = {}
        finished = [threading.Event() for _ in calls]
        threads = [
            threading.Thread(target=converse, args=(call, results, done))
            for call, done in zip(calls, finished, strict=True)
        ]
        for thread in threads:
            thread.start()
        for done in finished:
            assert done.wait(30_000 * MS)
        assert not results.get("errors"), results.get("errors")

        escalated = completed = 0
        for call in calls:
            # One restart per failure (rest_for_one may replace several children for it).
            restarts = sum(e.kind == "child_failed" for e in call.outbox.of(CallEventRecorded))
            ended = call.outbox.of(CallEnded)
            if ended:
                assert ended[0].reason == "escalated"
                assert restarts == settings.max_restarts
                escalated += 1
                continue
            completed += 1
            assert restarts <= settings.max_restarts
            said = results[call.call_id]
            assert len(said) == TURNS
            user = [t.text for t in call.outbox.of(TurnRecorded) if t.role == "user"]
            assert user == said, call.call_id
        assert escalated and completed, (escalated, completed)
        fired = sum(len(plan.fired) for plan in plans)
        # Crashes armed past an escalation, or on a message a call never got to, don't fire.
        assert fired >= CRASHES // 2, fired
