"""A webhook worker in a process of its own, delivering from a shared store file.

Run by test_leases.py: `python delivery_worker.py DB_PATH CLAIMER [LEASE_S TIMEOUT_S]`. Opens
the store and prints `ready`; starts its worker at the first line on stdin and stops it at the
second (or at EOF), then prints `stopped`.
"""

import asyncio
import sys

from config.settings import WebhookSettings
from mediaserver.store import Store
from mediaserver.webhooks import WebhookWorker


async def main(path: str, claimer: str, lease_s: float, timeout_s: float) -> None:
    settings = WebhookSettings(
        timeout_s=timeout_s, lease_s=lease_s, max_attempts=4, backoff_initial_s=0.05
    )
    async with await Store.open(path) as store:
        worker = WebhookWorker(store, settings, claimer=claimer, max_in_flight=4)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        worker.start()
        await asyncio.to_thread(sys.stdin.readline)
        await worker.close()
    print("stopped", flush=True)


if __name__ == "__main__":
    lease_s, timeout_s = (float(a) for a in sys.argv[3:5]) if len(sys.argv) > 3 else (60.0, 5.0)
    asyncio.run(main(sys.argv[1], sys.argv[2], lease_s, timeout_s))
