"""The client's subjects and error classes come from _generated.py, which the
Rust protocol crate writes (`just codegen`) and a Rust test keeps current."""

from __future__ import annotations

import switchyard
from switchyard import _generated, errors


def test_one_error_class_per_protocol_code():
    assert set(errors.BY_CODE) == set(_generated.ERROR_STATUS)
    for code, status in _generated.ERROR_STATUS.items():
        cls = errors.BY_CODE[code]
        assert (cls.code, cls.status) == (code, status)
        assert getattr(switchyard, cls.__name__) is cls
    assert switchyard.DivisionByZero.status == 422


def test_from_reply_uses_the_generated_headers():
    err = errors.from_reply(
        {_generated.HEADER_SERVICE_ERROR_CODE: "404", _generated.HEADER_SERVICE_ERROR: "gone"},
        b'{"error": {"code": "not_found", "message": "no such payment"}}',
    )
    assert isinstance(err, switchyard.NotFound) and err.message == "no such payment"
    assert errors.from_reply({}, b"{}") is None
