"""The seed's JetStream order processor, told with payments: publish with a
Msg-Id (a second publish is a duplicate), the processor applies it once."""

import asyncio
import sys

from switchyard import Switchyard


async def main(servers):
    async with await Switchyard.connect(servers=servers) as sy:
        ack = await sy.payments.publish("user-42", "12.50", payment_id="order-0001")
        print(f"order-0001 stored at seq {ack.seq} (duplicate={ack.duplicate})")
        again = await sy.payments.publish("user-42", "12.50", payment_id="order-0001")
        print(f"published again: duplicate={again.duplicate}")
        print("status:", await sy.payments.wait("order-0001"))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
