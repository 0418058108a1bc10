#!/usr/bin/env python3
"""Switchyard demo: call the services from Python.

    python clients/python/demo.py --all                  # against `just up`
    python clients/python/demo.py --math-only --servers nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from switchyard import ServiceError, Switchyard, SwitchyardError


def title(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 60 - len(text)))


async def demo_math(sy: Switchyard) -> None:
    title("math (request-reply, queue group)")
    for op, a, b in [("add", 2, 3), ("subtract", 10, 4), ("multiply", 6, 7), ("divide", 1, 4), ("power", 2, 16), ("mod", -7, 3)]:
        print(f"  {op:>8}({a}, {b}) = {await sy.math.calculate(op, a, b)}")
    print(f"  {'sqrt':>8}(2) = {await sy.math.sqrt(2)}")
    for label, call in [("divide(1, 0)", sy.math.divide(1, 0)), ("sqrt(-1)", sy.math.sqrt(-1)), ("cube(2)", sy.math.calculate("cube", 2))]:
        try:
            await call
        except ServiceError as e:
            print(f"  {label:>13} -> {type(e).__name__} [{e.code} {e.status}]: {e}")
    start = time.perf_counter()
    await asyncio.gather(*(sy.math.add(i, i) for i in range(200)))
    print(f"  200 concurrent adds in {(time.perf_counter() - start) * 1000:.0f} ms")


async def demo_email(sy: Switchyard) -> None:
    title("email-notifier (durable, scheduled, idempotent)")
    now = await sy.email.send("demo@example.com", "Hello from Python", "It works.")
    print(f"  sent now:        {now.id}")
    later = await sy.email.send("demo@example.com", "Later", "In a minute.", send_at=_in(60))
    print(f"  scheduled:       {later.id} for {later.scheduled_for}")
    key = f"demo-{uuid.uuid4().hex[:8]}"
    a = await sy.email.send("demo@example.com", "Once", "Only once.", idempotency_key=key)
    b = await sy.email.send("demo@example.com", "Once", "Only once.", idempotency_key=key)
    print(f"  idempotent:      {a.id} == {b.id}: {a.id == b.id}")
    try:
        await sy.email.send("not-an-address", "x", "y")
    except ServiceError as e:
        print(f"  bad address ->   {type(e).__name__} [{e.code} {e.status}]")


def _in(seconds: int):
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


async def demo_payments(sy: Switchyard) -> None:
    title("payment-processor (JetStream, exactly once)")
    ack = await sy.payments.publish("user-123", "99.99", email="payer@example.com", subscription_id="sub-monthly")
    print(f"  published {ack.payment_id} (stream {ack.stream} seq {ack.seq})")
    again = await sy.payments.publish("user-123", "99.99", payment_id=ack.payment_id)
    print(f"  published again: duplicate={again.duplicate}")
    status = await sy.payments.wait(ack.payment_id)
    print(f"  status: {status.status}, {status.amount} {status.currency}, attempts {status.attempts}")
    bad = await sy.payments.publish("user-123", "5.00", currency="XXX")
    failed = await sy.payments.wait(bad.payment_id)
    print(f"  unknown currency -> {failed.status}: {failed.reason}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224",
                        help="comma-separated NATS URLs")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--math-only", action="store_true")
    group.add_argument("--email-only", action="store_true")
    group.add_argument("--payment-only", action="store_true")
    group.add_argument("--all", action="store_true", help="everything (the default)")
    args = parser.parse_args()
    run_all = not (args.math_only or args.email_only or args.payment_only)
    try:
        sy = await Switchyard.connect(servers=args.servers.split(","), connect_timeout=3, max_reconnect_attempts=3)
    except Exception as e:  # noqa: BLE001 - report any connection failure plainly
        raise SystemExit(f"cannot connect to {args.servers}: {e!r} (is `just up` running?)")
    try:
        if run_all or args.math_only:
            await demo_math(sy)
        if run_all or args.email_only:
            await demo_email(sy)
        if run_all or args.payment_only:
            await demo_payments(sy)
        if run_all:
            title("discovery ($SRV.PING)")
            for s in sorted(await sy.services(), key=lambda s: s.name):
                print(f"  {s.name:<18} {s.version:<8} {s.id}")
    except SwitchyardError as e:
        raise SystemExit(f"error: {type(e).__name__}: {e}")
    finally:
        await sy.close()


if __name__ == "__main__":
    asyncio.run(main())
