"""Opens (and so migrates) a store when told to, then exits; one of several at once.

Run by test_migrations.py: `python open_store.py DB_PATH`. Prints `ready` once its imports are
done, waits for a line on stdin, opens the store, and prints `opened` or the error it got.
"""

import asyncio
import sys

from mediaserver.store import Store, StoreError


async def main(path: str) -> None:
    try:
        store = await Store.open(path)
    except StoreError as exc:
        print(f"error: {type(exc).__name__}: {exc}", flush=True)
        return
    await store.close()
    print("opened", flush=True)


if __name__ == "__main__":
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal: every process opens the file at the same moment
    asyncio.run(main(sys.argv[1]))
