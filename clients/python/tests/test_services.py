"""Every service subject through the Python client, against the real stack."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import pytest

import switchyard
from switchyard import (
    NeedsAdmin,
    Conflict, DivisionByZero, DomainError, InvalidAddress, InvalidRequest, Maintenance, NotFound, Overflow,
    ServiceError, TooLarge, UnknownOperation,
)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def test_math_results(sy):
    assert await sy.math.add(2, 3) == 5
    assert await sy.math.subtract(2, 3) == -1
    assert await sy.math.multiply(2.5, 4) == 10
    assert await sy.math.divide(7, 2) == 3.5
    assert await sy.math.power(2, 10) == 1024
    assert await sy.math.sqrt(16) == 4
    assert await sy.math.mod(-7, 3) == -1
    for op, a, b, want in [("add", 1, 2, 3), ("sqrt", 9, None, 3), ("mod", 7, 3, 1)]:
        assert await sy.math.calculate(op, a, b) == want


@pytest.mark.parametrize("call,error", [
    (lambda sy: sy.math.divide(1, 0), DivisionByZero),
    (lambda sy: sy.math.mod(1, 0), DivisionByZero),
    (lambda sy: sy.math.calculate("cube", 1, 2), UnknownOperation),
    (lambda sy: sy.math.multiply(1e308, 1e10), Overflow),
    (lambda sy: sy.math.sqrt(-4), DomainError),
    (lambda sy: sy.request("services.math.add", {"a": 1}), InvalidRequest),
    (lambda sy: sy.request("services.math.calculate", {"operation": "add", "a": "1", "b": 2}), InvalidRequest),
    (lambda sy: sy.request("services.math.add", {"a": 1, "b": 2, "pad": "x" * 70_000}), TooLarge),
])
async def test_math_errors(sy, call, error):
    with pytest.raises(error) as info:
        await call(sy)
    assert info.value.code == error.code and info.value.status == error.status
    assert str(info.value)


async def test_malformed_bodies_get_typed_errors_from_headers_and_body(sy):
    for raw in [b"", b"{", b"null", b'{"operation":"add","a":1e999,"b":2}', b'{"operation":"add","a":NaN,"b":1}']:
        msg = await sy.request_raw("services.math.calculate", raw)
        assert msg.headers["Nats-Service-Error-Code"] == "400"
        assert msg.headers["Nats-Service-Error"]
        assert json.loads(msg.data)["error"]["code"] == "invalid_request"
    assert await sy.math.add(1, 1) == 2


async def test_email(sy, stack):
    accepted = await sy.email.send("py@b.example", "Hello from Python", "Hi")
    assert accepted.accepted and accepted.id and accepted.scheduled_for is None
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    scheduled = await sy.email.send("py@b.example", "Later", "x", send_at=later)
    assert scheduled.scheduled_for and scheduled.scheduled_for.endswith("Z")
    key = uid("key")
    first = await sy.email.send("py@b.example", "Once", "x", idempotency_key=key)
    again = await sy.email.send("py@b.example", "Once", "x", idempotency_key=key)
    assert first.id == again.id
    await sy.email.publish("fire@b.example", "Fire and forget", "x", idempotency_key=uid("ff"))
    with pytest.raises(InvalidAddress):
        await sy.email.send("not an address", "s", "b")
    with pytest.raises(InvalidRequest):
        await sy.email.send("py@b.example", "s", "b", send_at="tomorrow")
    for _ in range(100):
        if (stack.outbox / f"{accepted.id}.eml").is_file():
            break
        await asyncio.sleep(0.1)
    assert (stack.outbox / f"{accepted.id}.eml").read_text().count("Subject: Hello from Python") == 1


async def test_payments(sy, admin):
    pid = uid("py-pay")
    ack = await sy.payments.publish("user-py", "19.99", payment_id=pid, email="payer@b.example")
    assert ack.payment_id == pid and ack.stream == "PAYMENTS" and not ack.duplicate
    assert len(ack.trace_id) == 32 and int(ack.trace_id, 16) > 0
    # The chain can be followed: the processor's log line of this payment
    # carries its trace id, and the log query finds it by that id.
    traced = []
    for _ in range(100):
        traced = await sy.logs.query(trace_id=ack.trace_id)
        if any(e.service == "payment-processor" for e in traced):
            break
        await asyncio.sleep(0.1)
    assert any(e.service == "payment-processor" and pid in json.dumps(e.fields) for e in traced), traced
    status = await sy.payments.wait(pid)
    assert (status.status, status.amount, status.currency, status.attempts, status.reason) == ("completed", "19.99", "USD", 1, None)
    again = await sy.payments.publish("user-py", "19.99", payment_id=pid)
    assert again.duplicate
    with pytest.raises(NeedsAdmin, match="needs the admin role"):
        await sy.payments.replay(pid)
    with pytest.raises(Conflict):
        await admin.payments.replay(pid)
    rejected = uid("py-rule")
    await sy.payments.publish("user-py", "-1", payment_id=rejected)
    failed = await sy.payments.wait(rejected)
    assert failed.status == "failed" and "greater than zero" in failed.reason
    with pytest.raises(NotFound):
        await sy.payments.status(uid("nope"))
    with pytest.raises(InvalidRequest):
        await sy.payments.status("bad.id")
    with pytest.raises(NotFound):
        await admin.payments.replay(uid("nope"))


async def test_logs(sy):
    service = uid("py-svc")
    for i in range(5):
        await sy.logs.publish(service, "warn" if i % 2 else "info", f"message {i}", n=i)
    for _ in range(100):
        entries = await sy.logs.query(service=service)
        if len(entries) == 5:
            break
        await asyncio.sleep(0.1)
    assert [e.message for e in entries] == [f"message {i}" for i in range(5)]
    assert all(e.seq > 0 for e in entries)
    warns = await sy.logs.query(service=service, level="warn", limit=1)
    assert [e.message for e in warns] == ["message 3"]
    # query reads the stream; stats count what the workers wrote (a batch later).
    for _ in range(100):
        stats = await sy.logs.stats()
        if stats.by_service.get(service) == 5:
            break
        await asyncio.sleep(0.1)
    assert stats.by_service.get(service) == 5 and stats.processed >= 5, stats
    with pytest.raises(InvalidRequest):
        await sy.logs.query(level="loud")
    with pytest.raises(ValueError):
        await sy.logs.publish(service, "loud", "x")


async def test_stocks(sy):
    symbols = await sy.stocks.symbols()
    assert "AAPL" in symbols
    seen = []
    async for tick in sy.stocks.ticks("AAPL"):
        seen.append(tick)
        if len(seen) == 3:
            break
    assert [t.seq for t in seen] == [seen[0].seq, seen[0].seq + 1, seen[0].seq + 2]
    # A core subscriber gets a tick when it is published, a moment before the
    # stream has stored it (an fsync on every node); the snapshot reads the
    # stream, so it reaches that tick once the store is done.
    for _ in range(50):
        snapshot = await sy.stocks.snapshot()
        if snapshot["AAPL"].seq >= seen[-1].seq:
            break
        await asyncio.sleep(0.1)
    assert snapshot["AAPL"].seq >= seen[-1].seq
    assert all("." in t.price for t in snapshot.values())


async def test_registry(sy):
    for _ in range(100):
        services = await sy.registry.list()
        if all(services.get(n, 0) >= 1 for n in ("math", "registry", "payment-processor", "email-notifier", "log-worker", "stock-ticker")):
            break
        await asyncio.sleep(0.2)
    assert all(services.get(n, 0) >= 1 for n in ("math", "registry", "payment-processor", "email-notifier", "log-worker", "stock-ticker")), services
    math = await sy.registry.lookup("math")
    assert math and math[0].healthy and "services.math.calculate" in math[0].endpoints
    assert await sy.registry.lookup(uid("nobody")) == []
    name, iid = uid("py"), uid("i")
    assert await sy.registry.register(name, iid, "1.0.0", ttl_s=30) == 30
    await sy.registry.heartbeat(name, iid)
    await sy.registry.deregister(name, iid)
    with pytest.raises(NotFound):
        await sy.registry.heartbeat(name, iid)
    with pytest.raises(InvalidRequest):
        await sy.registry.register("bad.name", iid, "1")


async def test_discovery_as_plain_json(sy):
    pings = await sy.discover("PING")
    names = {p["name"] for p in pings}
    assert {"math", "registry", "payment-processor", "email-notifier", "log-worker", "stock-ticker"} <= names
    assert all(p["type"] == "io.nats.micro.v1.ping_response" for p in pings)
    infos = await sy.discover("INFO", "math")
    assert infos and any(e["subject"] == "services.math.calculate" for e in infos[0]["endpoints"])
    await sy.math.add(1, 1)
    stats = await sy.discover("STATS", "math")
    assert sum(e["num_requests"] for s in stats for e in s["endpoints"]) >= 1
    services = await sy.services()
    assert any(s.name == "math" for s in services)


async def test_maintenance_mode(sy, admin):
    with pytest.raises(NeedsAdmin, match="needs the admin role"):
        await sy.set_maintenance(True)
    try:
        await admin.set_maintenance(True)
        for _ in range(40):
            try:
                await sy.math.add(1, 1)
            except Maintenance as e:
                assert e.status == 503
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no 503 within 2 s")
        assert any(p["name"] == "math" for p in await sy.discover("PING", "math")), "$SRV answers in maintenance"
    finally:
        await admin.set_maintenance(False)
    for _ in range(40):
        try:
            assert await sy.math.add(1, 1) == 2
            break
        except Maintenance:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("still in maintenance 2 s after turning it off")


def test_every_error_code_has_a_class():
    codes = json.loads((__import__("conftest").SCHEMAS / "error.json").read_text())
    enum = codes["$defs"]["ErrorCode"]
    listed = {v for one in enum.get("oneOf", []) for v in one.get("enum", [one.get("const")])} or set(enum.get("enum", []))
    assert listed and listed <= set(switchyard.BY_CODE), listed - set(switchyard.BY_CODE)
    assert issubclass(switchyard.Maintenance, ServiceError)


async def test_seed_001_client_library_on_a_plain_connection(stack):
    """Seed 001's library calls, on a plain nats-py connection."""
    import nats

    from switchyard import EmailClient, MathClient, PaymentClient, read_secrets

    password = read_secrets(stack.dir / ".env")["CLIENT_PASSWORD"]
    nc = await nats.connect(servers=stack.servers, user="client", password=password, inbox_prefix="_INBOX_client")
    try:
        math = MathClient(nc)
        result = await math.add(10, 5)
        assert result == 15 and isinstance(result, int)
        assert await math.divide(7, 2) == 3.5
        email = EmailClient(nc)
        accepted = await email.send_email("user@example.com", "Subject", "Body")
        assert accepted.accepted
        assert (await email.send_email("user@example.com", "Hello")).accepted  # no body
        payment = PaymentClient(nc)
        pid = uid("seed-pay")
        ack = await payment.submit_payment(pid, "user-123", "sub-monthly", 9.99)
        assert ack.payment_id == pid and not ack.duplicate
        status = {"status": None}
        for _ in range(100):
            try:
                status = await payment.get_status(pid)
            except NotFound:  # processing is asynchronous: not recorded yet
                pass
            if status["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "completed" and status["amount"] == "9.99" and status["currency"] == "USD"
        with pytest.raises(TypeError):
            MathClient("not a connection")
    finally:
        await nc.drain()


async def _logs_of_trace(sy, trace_id: str) -> list:
    """The stored log records of a trace, waiting up to 10 s for the first."""
    found = []
    for _ in range(100):
        found = await sy.logs.query(trace_id=trace_id)
        if found:
            break
        await asyncio.sleep(0.1)
    return found


async def test_a_request_s_trace_id_reaches_the_service_s_log_records(sy):
    """A request carrying a W3C traceparent: the log lines the service writes
    while handling it carry its trace id (the runtime's request span), so
    services.logs.query finds them by it."""
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    body = json.dumps({"to": "traced@b.example", "subject": "traced", "body": "b"}).encode()
    reply = await sy.request_raw("services.notification.email-send", body, headers=headers)
    assert json.loads(reply.data)["accepted"] is True
    assert reply.headers and reply.headers.get("traceparent") == headers["traceparent"]
    found = await _logs_of_trace(sy, trace_id)
    assert any(e.service == "email-notifier" and e.message == "mail accepted" for e in found), found


async def test_every_call_starts_a_trace_and_says_its_id(sy):
    """Without a traceparent of its own, each call starts a new trace;
    ``last_trace_id`` names it, and the service's log records carry it."""
    accepted = await sy.email.send("per-call@b.example", "per call", "b")
    first = sy.last_trace_id
    assert accepted.id and first and len(first) == 32 and int(first, 16) > 0
    assert await sy.math.add(1, 2) == 3
    assert sy.last_trace_id not in (None, first), "a new trace per call"
    found = await _logs_of_trace(sy, first)
    assert any(e.service == "email-notifier" and e.message == "mail accepted" for e in found), found
