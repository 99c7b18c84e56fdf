"""Writes batches of call events, one transaction each, until it is killed.

Run by test_concurrency.py: `python crash_writer.py DB_PATH BATCH_SIZE`. Prints one line per
committed batch, so the test knows how many must survive.
"""

import asyncio
import sys

from mediaserver.store import AgentSpec, CallEvent, Store


async def main(path: str, batch_size: int) -> None:
    async with await Store.open(path) as store:
        company = await store.create_company("Crash Co")
        agent = await store.create_agent(company.id, AgentSpec(name="Desk"))
        call = await store.start_call(
            company.id, agent_id=agent.id, transport="text", peer_id="crash"
        )
        batch = 0
        while True:
            # About 2 MB a batch: more than SQLite's page cache, so a transaction spills
            # uncommitted pages into the WAL before it commits, and the kill can land there.
            events = [
                CallEvent(kind="tick", data={"batch": batch, "n": n, "pad": "x" * 2000})
                for n in range(batch_size)
            ]
            await store.add_call_events(company.id, call.id, events)
            print(batch, flush=True)
            batch += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
