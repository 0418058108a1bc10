"""Hello pub/sub, the seed's first example, on a Switchyard cluster."""

import asyncio
import sys

from switchyard import Switchyard


async def main(servers):
    # Credentials (the `client` role) come from the .env `just up` made.
    sy = await Switchyard.connect(servers=servers)
    nc = sy.nc
    got = asyncio.Queue()
    async def on_message(msg):
        await got.put(msg.data.decode())

    await nc.subscribe("demo.hello", cb=on_message)
    await nc.publish("demo.hello", b"hello, switchyard")
    print("received:", await asyncio.wait_for(got.get(), 2))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
