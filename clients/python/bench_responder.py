#!/usr/bin/env python3
"""A seed-style nats-py responder (one asyncio process): {"a","b"} -> {"result": a+b}.
`switchyard bench python` compares math-service with it under the same load."""

import argparse
import asyncio
import json

import nats


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", default="nats://127.0.0.1:4222")
    p.add_argument("--subject", default="bench.math.add")
    args = p.parse_args()
    nc = await nats.connect(servers=args.servers.split(","))

    async def handle(msg):
        body = json.loads(msg.data)
        await msg.respond(json.dumps({"result": body["a"] + body["b"]}).encode())

    await nc.subscribe(args.subject, queue="bench", cb=handle)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
