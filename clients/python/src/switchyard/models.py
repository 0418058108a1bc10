"""Typed results. Field names follow the contract (snake_case JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional


def _build(cls, data: dict):
    """A dataclass from a JSON object, ignoring fields it does not know."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class EmailAccepted:
    accepted: bool
    id: str
    scheduled_for: Optional[str]


@dataclass(frozen=True)
class PaymentAck:
    """The PAYMENTS stream stored the payment (or already had it)."""
    payment_id: str
    stream: str
    seq: int
    duplicate: bool
    #: The W3C trace id the payment was published with; its event, receipt
    #: and the receipt's event continue that trace.
    trace_id: str = ""


@dataclass(frozen=True)
class PaymentStatus:
    payment_id: str
    status: str
    amount: str
    currency: str
    attempts: int
    updated_at: str
    reason: Optional[str] = None
    user_id: Optional[str] = None
    replays: int = 0

    @property
    def final(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(frozen=True)
class Replay:
    payment_id: str
    status: str
    replay: int


@dataclass(frozen=True)
class LogStats:
    processed: int
    by_level: dict
    by_service: dict
    rejected: int = 0


@dataclass(frozen=True)
class LogEntry:
    ts: str
    service: str
    level: str
    message: str
    seq: int
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Tick:
    symbol: str
    price: str
    change: str
    ts: str
    seq: int


@dataclass(frozen=True)
class Instance:
    instance_id: str
    version: str
    healthy: bool
    last_seen: str
    endpoints: list
    metadata: dict


@dataclass(frozen=True)
class ServiceInfo:
    """One `$SRV.PING` reply."""
    name: str
    id: str
    version: str
    metadata: dict

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServiceInfo":
        return cls(name=data["name"], id=data["id"], version=data["version"], metadata=data.get("metadata") or {})
