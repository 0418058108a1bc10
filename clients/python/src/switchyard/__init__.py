"""Python client for Switchyard, NATS microservices in Rust."""

from .client import (
    new_trace,
    ADMIN_ROLE, CLIENT_ROLE, ROLES, EmailClient, LogClient, MathClient, PaymentClient, RegistryClient, StocksClient,
    Switchyard, read_secrets,
)
from .errors import (
    BY_CODE, Conflict, DivisionByZero, DomainError, Internal, InvalidAddress, InvalidRequest, Maintenance,
    NeedsAdmin, NoResponders, NotFound, Overflow, Rejected, ServiceError, SwitchyardError, Timeout, TooLarge, Unavailable,
    UnknownOperation,
)
from .models import (
    EmailAccepted, Instance, LogEntry, LogStats, PaymentAck, PaymentStatus, Replay, ServiceInfo, Tick,
)

__all__ = [
    "Switchyard", "MathClient", "EmailClient", "PaymentClient", "LogClient", "StocksClient", "RegistryClient",
    "ROLES", "CLIENT_ROLE", "ADMIN_ROLE", "read_secrets", "NeedsAdmin",
    "ServiceError", "SwitchyardError", "NoResponders", "Timeout", "BY_CODE",
    "InvalidRequest", "UnknownOperation", "InvalidAddress", "NotFound", "Conflict", "TooLarge",
    "DivisionByZero", "Overflow", "DomainError", "Rejected", "Internal", "Maintenance", "Unavailable",
    "EmailAccepted", "PaymentAck", "PaymentStatus", "Replay", "LogStats", "LogEntry", "Tick", "Instance",
    "ServiceInfo", "new_trace",
]
