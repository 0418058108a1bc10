"""Typed errors built from the contract's error replies.

A failed request carries the headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code`` and the body ``{"error": {"code", "message"}}``.
Each code has its own exception class, all subclasses of ServiceError.
"""

from __future__ import annotations

import json
from typing import Optional


class SwitchyardError(Exception):
    """Anything that went wrong talking to Switchyard."""


class ServiceError(SwitchyardError):
    """A service answered with an error reply."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


def _error(name: str, code: str, status: int) -> type:
    return type(name, (ServiceError,), {"code": code, "status": status, "__doc__": f"``{code}`` ({status})"})


InvalidRequest = _error("InvalidRequest", "invalid_request", 400)
UnknownOperation = _error("UnknownOperation", "unknown_operation", 400)
InvalidAddress = _error("InvalidAddress", "invalid_address", 400)
NotFound = _error("NotFound", "not_found", 404)
Conflict = _error("Conflict", "conflict", 409)
TooLarge = _error("TooLarge", "too_large", 413)
DivisionByZero = _error("DivisionByZero", "division_by_zero", 422)
Overflow = _error("Overflow", "overflow", 422)
DomainError = _error("DomainError", "domain_error", 422)
Rejected = _error("Rejected", "rejected", 422)
Internal = _error("Internal", "internal", 500)
Maintenance = _error("Maintenance", "maintenance", 503)
Unavailable = _error("Unavailable", "unavailable", 503)

BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidRequest, UnknownOperation, InvalidAddress, NotFound, Conflict, TooLarge, DivisionByZero,
        Overflow, DomainError, Rejected, Internal, Maintenance, Unavailable,
    )
}


class NoResponders(SwitchyardError):
    """Nobody listens on the subject: is the service running?"""


class Timeout(SwitchyardError):
    """No reply in time."""


def from_reply(headers: Optional[dict], payload: bytes) -> Optional[ServiceError]:
    """The error a reply carries, or None for a successful reply."""
    headers = headers or {}
    status = headers.get("Nats-Service-Error-Code")
    if status is None:
        return None
    code, message = None, headers.get("Nats-Service-Error", "")
    try:
        body = json.loads(payload)
        code = body["error"]["code"]
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    try:
        status_int = int(status)
    except ValueError:
        status_int = 500
    cls = BY_CODE.get(code or "", ServiceError)
    return cls(message, code=code or cls.code, status=status_int)
