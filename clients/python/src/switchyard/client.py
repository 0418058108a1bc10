"""The Switchyard client: one connection, one sub-client per service."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import random
import ssl
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Optional, Union
from urllib.parse import urlparse

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from . import errors as _errors
from ._generated import (  # Subjects of the contract (docs/CONTRACT.md), generated from the Rust protocol crate.
    BUCKET_CONFIG, EMAIL_SEND, HEADER_MSG_ID, KEY_SITE_MAINTENANCE, LOG_LEVELS, LOGS_PREFIX, LOGS_QUERY, LOGS_STATS,
    MATH_CALCULATE, MATH_OPERATIONS, MATH_PREFIX, PAYMENT_PROCESS, PAYMENT_REPLAY, PAYMENT_STATUS, REGISTRY_DEREGISTER,
    REGISTRY_HEARTBEAT, REGISTRY_LIST, REGISTRY_LOOKUP_PREFIX, REGISTRY_REGISTER, SRV_PREFIX, STOCKS_ALL, STOCKS_PREFIX,
    STOCKS_SNAPSHOT, STOCKS_SYMBOLS, USER_INBOX_PREFIX,
)
from .errors import NoResponders, Timeout
from .models import (
    EmailAccepted, Instance, LogEntry, LogStats, PaymentAck, PaymentStatus, Replay, ServiceInfo, Tick, _build,
)

DEFAULT_SERVERS = ["nats://127.0.0.1:4222"]
#: The roles of the locked-down deployments: apps, and operators.
CLIENT_ROLE, ADMIN_ROLE = "client", "admin"
ROLES = (CLIENT_ROLE, ADMIN_ROLE)


def read_secrets(path: Union[str, os.PathLike, None] = None) -> dict:
    """``KEY=VALUE`` lines of the secrets file (``path``, else ``$SWITCHYARD_SECRETS``,
    else ``./.env``); empty when there is none."""
    path = Path(path or os.environ.get("SWITCHYARD_SECRETS") or ".env")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[key.strip()] = value
    return out


def inbox_prefix(user: Optional[str]) -> Optional[str]:
    """The inbox prefix of a connection as NATS user ``user``: ``_INBOX_<user>``.

    In the locked-down deployments each user may read only its own inboxes
    (``_INBOX_<user>.>``), so replies to a connection as ``client`` must come
    there; without a user it is None (nats-py's default ``_INBOX``).
    """
    return f"{USER_INBOX_PREFIX}{user}" if user else None


def _user_of(servers: Iterable[str], options: dict) -> Optional[str]:
    """The user a connection authenticates as: ``user=`` or a URL's ``user:pass@``."""
    if options.get("user"):
        return options["user"]
    for server in servers:
        user = urlparse(server).username
        if user:
            return user
    return None



TLS_CA_FILE_ENV = "SWITCHYARD__NATS__TLS_CA_FILE"


def tls_context(ca_file: Optional[str] = None) -> Optional[ssl.SSLContext]:
    """A TLS context trusting ``ca_file`` (the ``ca.pem`` of ``switchyard certs``),
    or the file named by ``SWITCHYARD__NATS__TLS_CA_FILE`` (the setting the Rust
    services and CLI read); None when neither is set."""
    ca_file = ca_file or os.environ.get(TLS_CA_FILE_ENV) or None
    if not ca_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _rfc3339(value: Union[str, _dt.datetime, None]) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("send_at must be timezone-aware")
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def new_trace() -> tuple[str, str]:
    """A new W3C trace: ``(trace_id, traceparent)`` (sampled)."""
    trace_id = f"{random.getrandbits(128) or 1:032x}"
    return trace_id, f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-01"


def _trace_id_of(traceparent: Optional[str]) -> Optional[str]:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class Switchyard:
    """A connection to Switchyard. Use ``await Switchyard.connect(...)``.

    Every call starts a W3C trace (a ``traceparent`` header the services
    continue: their spans, the messages they publish because of it and
    their log records carry it); ``last_trace_id`` is the id of the most
    recent call's, for ``logs.query(trace_id=...)`` or a tracing UI."""

    def __init__(self, nc, timeout: float, user: Optional[str] = None):
        self.nc = nc
        #: The trace id of the most recent call (``None`` before the first).
        self.last_trace_id: Optional[str] = None
        #: The NATS user this connection authenticated as (None: no accounts).
        self.user = user
        self.js = nc.jetstream()
        self.timeout = timeout
        self.math = MathClient(self)
        self.email = EmailClient(self)
        self.payments = PaymentClient(self)
        self.logs = LogClient(self)
        self.stocks = StocksClient(self)
        self.registry = RegistryClient(self)

    @classmethod
    async def connect(cls, servers: Optional[Iterable[str]] = None, *, timeout: float = 5.0, role: str = "client",
                      secrets: Union[str, os.PathLike, None] = None, tls_ca_file: Optional[str] = None,
                      **options: Any) -> "Switchyard":
        """Connects to the given servers (a list: pass every cluster node).

        Credentials: ``user=``/``password=`` (or ``user:pass@`` in a URL) are
        used as given. Otherwise ``role`` (``"client"`` for apps, ``"admin"``
        for operations: maintenance mode, replays) takes its password
        (``CLIENT_PASSWORD`` / ``ADMIN_PASSWORD``) from the env file that
        ``switchyard secrets`` / ``switchyard up`` / ``just docker-up`` write:
        ``secrets=``, else ``$SWITCHYARD_SECRETS``, else ``./.env``. With no
        such file, no credentials (a cluster without accounts).

        ``tls_ca_file`` (default: ``$SWITCHYARD__NATS__TLS_CA_FILE``) makes the
        connection TLS, trusting that CA (the compose stack requires TLS); a
        ``tls=`` SSLContext passed through ``options`` wins."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if "tls" not in options:
            ctx = tls_context(tls_ca_file)
            if ctx is not None:
                options["tls"] = ctx
        options.setdefault("name", "switchyard-python")
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.25)
        servers = list(servers or DEFAULT_SERVERS)
        if not _user_of(servers, options):
            password = read_secrets(secrets).get(f"{role.upper()}_PASSWORD")
            if password:
                options["user"], options["password"] = role, password
        user = _user_of(servers, options)
        prefix = inbox_prefix(user)
        if prefix:
            options.setdefault("inbox_prefix", prefix)
        nc = await nats.connect(servers=servers, **options)
        return cls(nc, timeout, user)

    def _needs_admin(self, what: str) -> None:
        """Raises NeedsAdmin when this connection is the ``client`` role."""
        if self.user == CLIENT_ROLE:
            raise _errors.NeedsAdmin(
                f"{what} needs the admin role: connect with Switchyard.connect(role='admin') "
                f"(its password is ADMIN_PASSWORD in the secrets file)")

    async def close(self) -> None:
        await self.nc.drain()

    async def __aenter__(self) -> "Switchyard":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def request_raw(self, subject: str, payload: bytes = b"", *, timeout: Optional[float] = None, headers: Optional[dict] = None):
        """A request; returns the reply message as it came (errors included).
        It carries ``headers``' ``traceparent``, else a new trace's
        (``last_trace_id``)."""
        headers = self.traced(headers)
        try:
            return await self.nc.request(subject, payload, timeout=timeout or self.timeout, headers=headers)
        except NoRespondersError as e:
            raise NoResponders(f"no service is listening on {subject}") from e
        except NatsTimeout as e:
            raise Timeout(f"no reply on {subject} within {timeout or self.timeout}s") from e

    def traced(self, headers: Optional[dict] = None) -> dict:
        """``headers`` with a ``traceparent``: theirs, else a new trace's;
        either way its trace id becomes ``last_trace_id``."""
        headers = dict(headers or {})
        if _trace_id_of(headers.get("traceparent")) is None:
            _, headers["traceparent"] = new_trace()
        self.last_trace_id = _trace_id_of(headers["traceparent"])
        return headers

    async def request(self, subject: str, body: Optional[dict] = None, *, timeout: Optional[float] = None) -> dict:
        """A JSON request; an error reply raises its ServiceError subclass."""
        payload = b"" if body is None else json.dumps(body).encode()
        msg = await self.request_raw(subject, payload, timeout=timeout)
        error = _errors.from_reply(msg.headers, msg.data)
        if error is not None:
            raise error
        return json.loads(msg.data)

    async def discover(self, verb: str = "PING", name: Optional[str] = None, wait: float = 0.5) -> list[dict]:
        """Every reply to ``$SRV.<verb>[.<name>]`` within ``wait`` seconds, as plain JSON."""
        subject = f"{SRV_PREFIX}.{verb}" + (f".{name}" if name else "")
        inbox = self.nc.new_inbox()
        replies: list[dict] = []

        async def collect(msg):
            try:
                replies.append(json.loads(msg.data))
            except ValueError:
                pass

        sub = await self.nc.subscribe(inbox, cb=collect)
        await self.nc.publish(subject, b"", reply=inbox)
        await self.nc.flush()
        await asyncio.sleep(wait)
        await sub.unsubscribe()
        return replies

    async def services(self, wait: float = 0.5) -> list[ServiceInfo]:
        return [ServiceInfo.from_json(r) for r in await self.discover("PING", wait=wait)]

    async def set_maintenance(self, on: bool) -> None:
        """Site-wide maintenance mode (KV config/site_maintenance). Needs the admin role."""
        self._needs_admin("set_maintenance")
        try:
            kv = await self.js.key_value(BUCKET_CONFIG)
        except Exception:
            kv = await self.js.create_key_value(bucket=BUCKET_CONFIG, history=5)
        await kv.put(KEY_SITE_MAINTENANCE, b"true" if on else b"false")


def _switchyard_of(conn: Any, timeout: float = 5.0) -> "Switchyard":
    """A Switchyard over ``conn``: itself, or a plain nats-py connection
    (``await nats.connect(...)``, as seed 001 passes it) wrapped."""
    if isinstance(conn, Switchyard):
        return conn
    if hasattr(conn, "request") and hasattr(conn, "jetstream"):
        options = getattr(conn, "options", None) or {}
        return Switchyard(conn, timeout, options.get("user") if isinstance(options, dict) else None)
    raise TypeError(f"expected a Switchyard or a nats-py connection, not {type(conn).__name__}")


class MathClient:
    """``services.math.*``. Build it from a Switchyard or a plain nats-py
    connection: ``MathClient(nc)``; ``await MathClient(nc).add(10, 5)`` is ``15``."""

    OPERATIONS = MATH_OPERATIONS

    def __init__(self, conn: Any):
        self._sy = _switchyard_of(conn)

    @staticmethod
    def calculate_request(operation: str, a: float, b: Optional[float] = None) -> dict:
        body = {"operation": operation, "a": a}
        if b is not None:
            body["b"] = b
        return body

    async def calculate(self, operation: str, a: float, b: Optional[float] = None) -> Union[int, float]:
        """The result as the service wrote it: an int when whole (``15``), else a float."""
        reply = await self._sy.request(MATH_CALCULATE, self.calculate_request(operation, a, b))
        return reply["result"]

    async def _op(self, op: str, a: float, b: Optional[float] = None) -> Union[int, float]:
        body = {"a": a} if b is None else {"a": a, "b": b}
        return (await self._sy.request(f"{MATH_PREFIX}.{op}", body))["result"]

    async def add(self, a, b): return await self._op("add", a, b)
    async def subtract(self, a, b): return await self._op("subtract", a, b)
    async def multiply(self, a, b): return await self._op("multiply", a, b)
    async def divide(self, a, b): return await self._op("divide", a, b)
    async def power(self, a, b): return await self._op("power", a, b)
    async def mod(self, a, b): return await self._op("mod", a, b)
    async def sqrt(self, a): return await self._op("sqrt", a)


class EmailClient:
    """``services.notification.email-send``, from a Switchyard or a plain
    nats-py connection (``EmailClient(nc)``)."""

    def __init__(self, conn: Any):
        self._sy = _switchyard_of(conn)

    @staticmethod
    def send_request(to: str, subject: str, body: str = "", send_at=None, idempotency_key: Optional[str] = None) -> dict:
        req = {"to": to, "subject": subject, "body": body}
        if send_at is not None:
            req["send_at"] = _rfc3339(send_at)
        if idempotency_key is not None:
            req["idempotency_key"] = idempotency_key
        return req

    async def send_email(self, to: str, subject: str, body: str = "") -> EmailAccepted:
        """Seed 001's call. The mail is made durable before this returns
        (a request, so a bad address raises instead of vanishing); it is
        sent asynchronously."""
        return await self.send(to, subject, body)

    async def send(self, to: str, subject: str, body: str = "", *, send_at=None, idempotency_key: Optional[str] = None) -> EmailAccepted:
        """Queues a mail durably; returns its id (and when it will go)."""
        reply = await self._sy.request(EMAIL_SEND, self.send_request(to, subject, body, send_at, idempotency_key))
        return _build(EmailAccepted, reply)

    async def publish(self, to: str, subject: str, body: str = "", *, send_at=None, idempotency_key: Optional[str] = None) -> None:
        """Fire and forget: no answer, no error."""
        req = self.send_request(to, subject, body, send_at, idempotency_key)
        await self._sy.nc.publish(EMAIL_SEND, json.dumps(req).encode(), headers=self._sy.traced())


class PaymentClient:
    """Payments, from a Switchyard or a plain nats-py connection
    (``PaymentClient(nc)``)."""

    def __init__(self, conn: Any):
        self._sy = _switchyard_of(conn)

    async def submit_payment(self, payment_id: str, user_id: Optional[str] = None,
                             subscription_id: Optional[str] = None, amount=None, *,
                             currency: Optional[str] = None, email: Optional[str] = None) -> PaymentAck:
        """Seed 001's call: JetStream-publishes the payment (``Nats-Msg-Id``
        = ``payment_id``) and returns once the stream stored it. Processing
        is asynchronous: right after this, ``get_status`` may say
        ``pending`` or not know the payment yet. A ``payment_id`` that
        already exists is ignored (the contract): use a fresh one per
        payment. ``amount`` may be a float (``9.99``: sent as that JSON
        number, taken exactly) or a decimal string; ``currency`` defaults
        to the processor's (USD)."""
        if amount is None:
            raise ValueError("amount is required")
        return await self.publish(user_id, amount, currency, payment_id=payment_id, email=email,
                                  subscription_id=subscription_id)

    async def get_status(self, payment_id: str) -> dict:
        """Seed 001's call: the status reply as a dict (``{"status": "completed", ...}``);
        raises NotFound when no payment has that id (yet)."""
        return await self._sy.request(PAYMENT_STATUS, {"payment_id": payment_id})

    @staticmethod
    def payment_request(user_id: Optional[str], amount, currency: Optional[str] = "USD",
                        payment_id: Optional[str] = None, email: Optional[str] = None,
                        subscription_id: Optional[str] = None) -> dict:
        """The payment's JSON. A float amount is sent as its shortest exact
        decimal text (``9.99`` → ``"9.99"``, via ``repr``, never rounded);
        ``None`` user or currency is left out (the processor's defaults)."""
        req = {
            "payment_id": payment_id or f"pay-{uuid.uuid4().hex[:20]}",
            "amount": str(Decimal(str(amount))) if not isinstance(amount, str) else amount,
        }
        if user_id is not None:
            req["user_id"] = user_id
        if currency is not None:
            req["currency"] = currency
        if email is not None:
            req["email"] = email
        if subscription_id is not None:
            req["subscription_id"] = subscription_id
        return req

    async def publish(self, user_id: Optional[str], amount, currency: Optional[str] = "USD", *,
                      payment_id: Optional[str] = None,
                      email: Optional[str] = None, subscription_id: Optional[str] = None,
                      retry_for: float = 30.0) -> PaymentAck:
        """JetStream-publishes a payment with ``Nats-Msg-Id: <payment_id>``.

        Without an ack (a leader election, a lost reply) it publishes again with
        the same id until acked or ``retry_for`` seconds pass: the stream drops
        the repeat as a duplicate, so the payment has one effect.
        """
        req = self.payment_request(user_id, amount, currency, payment_id, email, subscription_id)
        payload = json.dumps(req).encode()
        # A new trace per payment (W3C traceparent): the processor's event,
        # the receipt and its event continue it.
        headers = self._sy.traced({HEADER_MSG_ID: req["payment_id"]})
        trace_id = self._sy.last_trace_id
        deadline = asyncio.get_running_loop().time() + retry_for
        delay = 0.05
        while True:
            try:
                ack = await self._sy.js.publish(PAYMENT_PROCESS, payload, timeout=2.0, headers=headers)
                return PaymentAck(payment_id=req["payment_id"], stream=ack.stream, seq=ack.seq,
                                  duplicate=bool(ack.duplicate), trace_id=trace_id)
            except (NatsTimeout, NoRespondersError, NoStreamResponseError, APIError) as e:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise Timeout(f"payment {req['payment_id']} not acknowledged within {retry_for}s: {e!r}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def status(self, payment_id: str) -> PaymentStatus:
        return _build(PaymentStatus, await self._sy.request(PAYMENT_STATUS, {"payment_id": payment_id}))

    async def replay(self, payment_id: str) -> Replay:
        """Queues a failed payment again (an operation: needs the admin role)."""
        self._sy._needs_admin("payments.replay")
        return _build(Replay, await self._sy.request(PAYMENT_REPLAY, {"payment_id": payment_id}))

    async def wait(self, payment_id: str, timeout: float = 15.0) -> PaymentStatus:
        """Polls the status until it is completed or failed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                status = await self.status(payment_id)
                if status.final:
                    return status
            except _errors.NotFound:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise Timeout(f"payment {payment_id} not final within {timeout}s")
            await asyncio.sleep(0.05)


class LogClient:
    def __init__(self, sy: Switchyard):
        self._sy = sy

    async def publish(self, service: str, level: str, message: str, **fields: Any) -> None:
        """Publishes a record on logs.<service>.<level> (stored by the LOGS stream)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {LOG_LEVELS}")
        record = {
            "ts": _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z"),
            "service": service, "level": level, "message": message, "fields": fields,
        }
        await self._sy.js.publish(f"{LOGS_PREFIX}.{service}.{level}", json.dumps(record).encode())

    async def stats(self) -> LogStats:
        return _build(LogStats, await self._sy.request(LOGS_STATS, {}))

    async def query(self, *, service: Optional[str] = None, level: Optional[str] = None,
                    since: Optional[str] = None, limit: Optional[int] = None,
                    trace_id: Optional[str] = None) -> list[LogEntry]:
        """Stored records, oldest first; ``trace_id`` (e.g. a ``PaymentAck.trace_id``)
        keeps those of one trace."""
        body = {k: v for k, v in {"service": service, "level": level, "since": since, "limit": limit,
                                  "trace_id": trace_id}.items() if v is not None}
        reply = await self._sy.request(LOGS_QUERY, body)
        return [_build(LogEntry, e) for e in reply["entries"]]


class StocksClient:
    def __init__(self, sy: Switchyard):
        self._sy = sy

    async def symbols(self) -> list[str]:
        return (await self._sy.request(STOCKS_SYMBOLS, {}))["symbols"]

    async def snapshot(self) -> dict[str, Tick]:
        prices = (await self._sy.request(STOCKS_SNAPSHOT, {}))["prices"]
        return {symbol: _build(Tick, tick) for symbol, tick in prices.items()}

    async def ticks(self, symbol: Optional[str] = None) -> AsyncIterator[Tick]:
        """Live ticks of one symbol (or all)."""
        sub = await self._sy.nc.subscribe(f"{STOCKS_PREFIX}.{symbol}" if symbol else STOCKS_ALL)
        try:
            async for msg in sub.messages:
                yield _build(Tick, json.loads(msg.data))
        finally:
            await sub.unsubscribe()


class RegistryClient:
    def __init__(self, sy: Switchyard):
        self._sy = sy

    async def register(self, name: str, instance_id: str, version: str, *, endpoints=(), metadata=None,
                       ttl_s: Optional[int] = None) -> int:
        body = {"name": name, "instance_id": instance_id, "version": version,
                "endpoints": list(endpoints), "metadata": metadata or {}}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return (await self._sy.request(REGISTRY_REGISTER, body))["ttl_s"]

    async def heartbeat(self, name: str, instance_id: str) -> None:
        await self._sy.request(REGISTRY_HEARTBEAT, {"name": name, "instance_id": instance_id})

    async def deregister(self, name: str, instance_id: str) -> None:
        await self._sy.request(REGISTRY_DEREGISTER, {"name": name, "instance_id": instance_id})

    async def lookup(self, name: str) -> list[Instance]:
        reply = await self._sy.request(f"{REGISTRY_LOOKUP_PREFIX}.{name}", {})
        return [_build(Instance, i) for i in reply["instances"]]

    async def list(self) -> dict[str, int]:
        return (await self._sy.request(REGISTRY_LIST, {}))["services"]
