"""Typed errors built from the contract's error replies.

A failed request carries the headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code`` and the body ``{"error": {"code", "message"}}``.
Each code has its own exception class, all subclasses of ServiceError.
"""

from __future__ import annotations

import json
from typing import Optional

from ._generated import ERROR_STATUS, HEADER_SERVICE_ERROR, HEADER_SERVICE_ERROR_CODE


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


def _class_name(code: str) -> str:
    return "".join(part.title() for part in code.split("_"))


# One class per code of the Rust protocol crate's ErrorCode (see _generated.py):
# InvalidRequest, UnknownOperation, InvalidAddress, NotFound, Conflict, TooLarge, DivisionByZero,
# Overflow, DomainError, Rejected, Maintenance, Unavailable, Internal.
BY_CODE: dict = {code: _error(_class_name(code), code, status) for code, status in ERROR_STATUS.items()}
globals().update({cls.__name__: cls for cls in BY_CODE.values()})


class NeedsAdmin(SwitchyardError):
    """The call is an operation (maintenance mode, replays) and this connection is the ``client`` role."""


class NoResponders(SwitchyardError):
    """Nobody listens on the subject: is the service running?"""


class Timeout(SwitchyardError):
    """No reply in time."""


def from_reply(headers: Optional[dict], payload: bytes) -> Optional[ServiceError]:
    """The error a reply carries, or None for a successful reply."""
    headers = headers or {}
    status = headers.get(HEADER_SERVICE_ERROR_CODE)
    if status is None:
        return None
    code, message = None, headers.get(HEADER_SERVICE_ERROR, "")
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
