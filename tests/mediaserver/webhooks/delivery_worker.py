"""A webhook worker in a process of its own, delivering from a shared store file.

Run by test_leases.py: `python delivery_worker.py DB_PATH CLAIMER`. Opens the store and prints
`ready`; starts its worker at the first line on stdin and stops it at the second (or at EOF),
then prints `stopped`.
"""

import asyncio
import sys

from config.settings import WebhookSettings
from mediaserver.store import Store
from mediaserver.webhooks import WebhookWorker

SETTINGS = WebhookSettings(timeout_s=5.0, max_attempts=4, backoff_initial_s=0.05)


async def main(path: str, claimer: str) -> None:
    async with await Store.open(path) as store:
        worker = WebhookWorker(store, SETTINGS, claimer=claimer, max_in_flight=4)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        worker.start()
        await asyncio.to_thread(sys.stdin.readline)
        await worker.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
