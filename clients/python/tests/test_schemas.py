"""What the Python client sends and receives matches the JSON Schemas the
Rust protocol crate exports, so the two cannot drift apart silently."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import SCHEMAS
from switchyard import EmailClient, MathClient, PaymentClient


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def valid(name: str, value) -> None:
    jsonschema.validate(value, schema(name))


def test_requests_the_client_builds():
    valid("math.calculate.request", MathClient.calculate_request("add", 2, 3))
    valid("math.calculate.request", MathClient.calculate_request("sqrt", 9))
    valid("email.request", EmailClient.send_request("a@b.example", "s", "b", "2026-12-01T09:00:00Z", "k"))
    valid("payment.request", PaymentClient.payment_request("u", "9.99", email="a@b.example", subscription_id="s"))
    valid("payment.request", {"payment_id": "pay-001", "amount": 99.99})  # seed 001, as written
    valid("payment.request", PaymentClient.payment_request(None, 9.99, None, "pay-002"))
    for bad in ({"payment_id": "p"}, {"payment_id": "p", "amount": True}, {"amount": "1"}):
        with pytest.raises(jsonschema.ValidationError):
            valid("payment.request", bad)


async def test_replies_the_services_send(sy):
    valid("math.reply", await sy.request("services.math.add", {"a": 1, "b": 2}))
    msg = await sy.request_raw("services.math.divide", json.dumps({"a": 1, "b": 0}).encode())
    valid("error", json.loads(msg.data))
    valid("email.accepted", await sy.request("services.notification.email-send", {"to": "a@b.example", "subject": "s", "body": "b"}))
    ack = await sy.payments.publish("user-schema", "1.00")
    await sy.payments.wait(ack.payment_id)
    valid("payment.status.reply", await sy.request("services.payment.status", {"payment_id": ack.payment_id}))
    valid("logs.stats.reply", await sy.request("services.logs.stats", {}))
    valid("logs.query.reply", await sy.request("services.logs.query", {"limit": 5}))
    valid("stocks.symbols.reply", await sy.request("services.stocks.symbols", {}))
    valid("stocks.snapshot.reply", await sy.request("services.stocks.snapshot", {}))
    valid("registry.list.reply", await sy.request("services.registry.list", {}))
    valid("registry.lookup.reply", await sy.request("services.registry.lookup.math", {}))
    for verb, name in [("PING", "micro.ping"), ("INFO", "micro.info"), ("STATS", "micro.stats")]:
        for reply in await sy.discover(verb, "math"):
            valid(name, reply)
