"""Seed 001's snippets, verbatim (the project's own copy of them: the tests
never read the seed files), against the real stack as a new user runs them:
no credentials (a local `switchyard up` maps them to the `guest` user), the
default inbox, raw nats-py. The only change is the server URL: the test
stack runs on free ports, not 4222."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nats
import pytest

# ---- seed 001, "RequestReplyService (math.calculate)" ----
MATH_SNIPPET = '''
# Python client
response = await nc.request("services.math.calculate",
    json.dumps({"operation": "add", "a": 10, "b": 5}).encode())
result = json.loads(response.data)  # {"result": 15}
'''

# ---- seed 001, "QueueGroupService (notification.email-send)" ----
EMAIL_SNIPPET = '''
# Python client - no response expected
await nc.publish("services.notification.email-send",
    json.dumps({"to": "user@example.com", "subject": "Hello"}).encode())
'''

# ---- seed 001, "StreamConsumerService (payment.payment-process)" ----
PAYMENT_SNIPPET = '''
# Python client - publish to JetStream
js = nc.jetstream()
await js.publish("services.payment.payment-process",
    json.dumps({"payment_id": "pay-001", "amount": 99.99}).encode())
'''

# ---- seed 001, "Using the Python Client Library" ----
LIBRARY_SNIPPET = '''
import asyncio
import nats
from client import MathClient, EmailClient, PaymentClient

async def main():
    nc = await nats.connect("nats://localhost:4222")

    # RequestReplyService - synchronous math
    math = MathClient(nc)
    result = await math.add(10, 5)  # Returns 15

    # QueueGroupService - fire-and-forget email
    email = EmailClient(nc)
    await email.send_email("user@example.com", "Subject", "Body")

    # StreamConsumerService - durable payment
    payment = PaymentClient(nc)
    await payment.submit_payment("pay-001", "user-123", "sub-monthly", 9.99)
    status = await payment.get_status("pay-001")  # {"status": "completed"}

    await nc.drain()

asyncio.run(main())
'''


async def run_snippet(snippet: str, nc) -> dict:
    """Runs a snippet's statements as the body of an async function with
    ``nc`` and ``json`` in scope; returns its local variables."""
    source = "async def _snippet(nc, json):\n" + textwrap.indent(snippet, "    ") + "\n    return locals()\n"
    scope: dict = {}
    exec(compile(source, "<seed 001>", "exec"), scope)  # noqa: S102 - the project's own copy of the seed
    return await scope["_snippet"](nc, json)


def mails_to(outbox: Path, to: str, subject: str) -> list[Path]:
    found = []
    for path in outbox.glob("*.eml"):
        text = path.read_text(errors="replace")
        if f"To: {to}" in text and f"Subject: {subject}\n" in text.replace("\r\n", "\n"):
            found.append(path)
    return found


async def wait_until(check, timeout: float = 15.0):
    """Polls ``check`` without blocking the event loop (nats-py flushes
    publishes from it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    return None


async def status_of(nc, payment_id: str) -> dict:
    reply = await nc.request("services.payment.status", json.dumps({"payment_id": payment_id}).encode(), timeout=5)
    return json.loads(reply.data)


async def test_seed_001_as_written(stack, tmp_path):
    nc = await nats.connect(stack.servers[0])  # no credentials, as the seed
    try:
        # Math: {"result": 15}, an integer as the seed shows.
        result = (await run_snippet(MATH_SNIPPET, nc))["result"]
        assert result == {"result": 15} and isinstance(result["result"], int), result

        # Email: fire-and-forget, no body: the mail goes out (empty body).
        await run_snippet(EMAIL_SNIPPET, nc)
        assert await wait_until(lambda: mails_to(stack.outbox, "user@example.com", "Hello")), "no mail for the seed's publish"

        # Payment: a JSON number amount, no user, no currency → 99.99 USD, completed.
        await run_snippet(PAYMENT_SNIPPET, nc)
        status = {}
        for _ in range(150):
            status = await status_of(nc, "pay-001")
            if status.get("status") == "completed":
                break
            await asyncio.sleep(0.1)
        assert (status.get("status"), status.get("amount"), status.get("currency")) == ("completed", "99.99", "USD"), status

        # The client library program, as written, in its own process. The
        # seed imports `client` from its own folder: here that folder holds
        # one line pointing at this package.
        (tmp_path / "client").mkdir()
        (tmp_path / "client" / "__init__.py").write_text("from switchyard import MathClient, EmailClient, PaymentClient\n")
        program = LIBRARY_SNIPPET.replace("nats://localhost:4222", stack.servers[0])
        (tmp_path / "seed_library.py").write_text(program)
        env = dict(os.environ, PYTHONPATH=str(tmp_path))
        env.pop("SWITCHYARD_SECRETS", None)
        done = subprocess.run([sys.executable, "seed_library.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # Its mail went out; its pay-001 (9.99) reused an existing id, so the
        # contract ignored it: pay-001 is still the 99.99 payment, completed.
        assert await wait_until(lambda: mails_to(stack.outbox, "user@example.com", "Subject")), "no mail from the library"
        status = await status_of(nc, "pay-001")
        assert (status["status"], status["amount"]) == ("completed", "99.99"), status
    finally:
        await nc.drain()


@pytest.mark.parametrize("flag", ["--math-only", "--email-only", "--payment-only"])
def test_seed_001_demo_flags(stack, flag):
    client_dir = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "demo.py", flag, "--servers", ",".join(stack.servers)], cwd=client_dir,
                          env=dict(os.environ, SWITCHYARD_SECRETS=str(stack.dir / ".env")), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the demo printed nothing"


async def test_seed_000_plain_text_logs_are_found(stack):
    """Seed 000's publisher: 30 plain-text messages on logs.process (its own
    queue-group workers may listen there too); the log-worker files them as
    service `process`, and `services.logs.query` finds all 30."""
    nc = await nats.connect(stack.servers[0])  # no credentials, as the seed
    try:
        got = []

        async def worker(msg):
            got.append(msg.data)

        await nc.subscribe("logs.process", queue="log_workers", cb=worker)
        marker = f"seed000-{time.time_ns()}"
        for i in range(30):
            await nc.publish("logs.process", f"{marker} Log message {i}".encode())
        await nc.flush()

        async def found():
            reply = await nc.request("services.logs.query", json.dumps({"service": "process", "limit": 1000}).encode(),
                                     timeout=5)
            entries = json.loads(reply.data)["entries"]
            return [e for e in entries if e["message"].startswith(marker)]

        entries = []
        for _ in range(100):
            entries = await found()
            if len(entries) >= 30:
                break
            await asyncio.sleep(0.1)
        assert sorted(e["message"] for e in entries) == sorted(f"{marker} Log message {i}" for i in range(30))
        assert all(e["level"] == "info" and e["service"] == "process" for e in entries)
        assert len(got) == 30, "the seed's own queue-group worker got every message"
    finally:
        await nc.drain()
