"""Three workers in a queue group share 30 messages: each message goes to one.
Switchyard's log-workers do the same durably with one JetStream consumer."""

import asyncio
import collections
import sys

from switchyard import Switchyard


async def main(servers):
    # Credentials (the `client` role) come from the .env `just up` made.
    sy = await Switchyard.connect(servers=servers)
    nc = sy.nc
    counts = collections.Counter()
    done = asyncio.Event()

    def worker(name):
        async def handle(msg):
            counts[name] += 1
            if sum(counts.values()) == 30:
                done.set()
        return handle

    for i in range(3):
        await nc.subscribe("demo.tasks", queue="workers", cb=worker(f"worker-{i}"))
    for i in range(30):
        await nc.publish("demo.tasks", f"task {i}".encode())
    await asyncio.wait_for(done.wait(), 5)
    print("30 messages shared:", dict(counts))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
