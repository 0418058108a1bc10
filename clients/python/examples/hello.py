"""Hello pub/sub, the seed's first example, on a Switchyard cluster."""

import asyncio
import sys

import nats


async def main(servers):
    nc = await nats.connect(servers=servers)
    got = asyncio.Queue()
    async def on_message(msg):
        await got.put(msg.data.decode())

    await nc.subscribe("demo.hello", cb=on_message)
    await nc.publish("demo.hello", b"hello, switchyard")
    print("received:", await asyncio.wait_for(got.get(), 2))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
