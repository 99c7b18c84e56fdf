"""Ends an owner's calls and is killed in the middle of it.

Run by test_owners.py: `python owner_ender.py DB_PATH OWNER_ID`. Prints `building CALL_ID` as it
builds each call's webhook body inside the store's transaction, and hangs on the second one, so
the test can kill it with a call ended and its outbox row written but nothing committed.
"""

import asyncio
import sys
import threading

from mediaserver.store import Store

built: list[str] = []


def body(call, turns, usage, *, event_id, created_at):
    print(f"building {call.id}", flush=True)
    built.append(call.id)
    if len(built) == 2:
        threading.Event().wait()  # until killed
    return "{}"


async def main(path: str, owner_id: str) -> None:
    async with await Store.open(path) as store:
        await store.end_owner_calls(owner_id, "server_crash", call_ended_body=body)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
