"""The seed's KV feature flag with a watch, as Switchyard's maintenance mode:
flip config/site_maintenance and watch math answer 503, then recover."""

import asyncio
import sys

from switchyard import Maintenance, Switchyard


async def main(servers):
    # Maintenance mode is an operation: the admin role (ADMIN_PASSWORD in .env).
    async with await Switchyard.connect(servers=servers, role="admin") as sy:
        kv = await sy.js.key_value("config")
        watcher = await kv.watch("site_maintenance")
        await sy.set_maintenance(True)
        async for entry in watcher:
            if entry and entry.value is not None:
                print("flag is now:", entry.value.decode())
                break
        await asyncio.sleep(0.2)
        try:
            await sy.math.add(1, 1)
        except Maintenance as e:
            print(f"math says {e.status} {e.code}: {e}")
        await sy.set_maintenance(False)
        await asyncio.sleep(0.2)
        print("after turning it off: 1 + 1 =", await sy.math.add(1, 1))
        await watcher.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["nats://127.0.0.1:4222"]))
