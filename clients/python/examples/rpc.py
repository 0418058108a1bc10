"""RPC: the seed summed numbers with a responder; here math-service does it."""

import asyncio
import sys

from switchyard import Switchyard


async def main(servers):
    async with await Switchyard.connect(servers=servers) as sy:
        total = 0.0
        for n in range(1, 11):
            total = await sy.math.add(total, n)
        print("sum 1..10 =", total)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
