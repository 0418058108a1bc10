"""TLS options of Switchyard.connect: the CA file, from the argument or the
environment variable the Rust services read (no server needed)."""

import os
import ssl
import subprocess
import tempfile
from pathlib import Path

from switchyard.client import TLS_CA_FILE_ENV, tls_context

ROOT = Path(__file__).resolve().parents[3]
SWITCHYARD = ROOT / "target" / "debug" / "switchyard"


def _ca(tmp: str) -> str:
    subprocess.run([str(SWITCHYARD), "certs", "--dir", tmp], check=True, capture_output=True)
    return os.path.join(tmp, "ca.pem")


def test_no_ca_means_no_tls(monkeypatch):
    monkeypatch.delenv(TLS_CA_FILE_ENV, raising=False)
    assert tls_context() is None


def test_the_ca_file_from_the_argument_or_the_environment(monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        ca = _ca(tmp)
        monkeypatch.delenv(TLS_CA_FILE_ENV, raising=False)
        ctx = tls_context(ca)
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert any(c["subject"] for c in ctx.get_ca_certs())
        monkeypatch.setenv(TLS_CA_FILE_ENV, ca)
        assert tls_context() is not None
