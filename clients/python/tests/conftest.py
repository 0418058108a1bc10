"""One real Switchyard stack per test session: the built `switchyard up`
(3 nats-server nodes + every service binary) on free ports in a temp dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "docs" / "schemas"


def _free(base: int) -> bool:
    for port in range(base, base + 3):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_bases() -> tuple[int, int, int, int]:
    seed = os.getpid() % 500
    for attempt in range(300):
        base = 21_000 + ((seed + attempt * 53) % 900) * 40
        if all(_free(base + i * 10) for i in range(4)):
            return base, base + 10, base + 20, base + 30
    raise RuntimeError("no free ports")


@dataclass
class Stack:
    servers: list[str]
    dir: Path
    metrics_port: int

    @property
    def outbox(self) -> Path:
        return self.dir / "state" / "outbox"  # `switchyard up --dir <dir>/state`


@pytest.fixture(scope="session")
def stack():
    binary = Path(os.environ.get("SWITCHYARD_BIN", ROOT / "target" / "debug" / "switchyard"))
    if not binary.is_file():
        pytest.fail(f"{binary} not found: run `cargo build --workspace` first (`just test` does)")
    port, cluster, http, metrics = _free_bases()
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-pytest-"))
    env = dict(os.environ)
    env.update({
        "SWITCHYARD__STOCKS__INTERVAL_MS": "100",
        "SWITCHYARD__EMAIL__BACKOFF_MS": "200,400",
        "SWITCHYARD__SERVICE__REGISTRY__TTL_S": "5",
    })
    proc = subprocess.Popen(
        [str(binary), "up", "--dir", str(workdir / "state"), "--port", str(port), "--cluster-port", str(cluster),
         "--http-port", str(http), "--metrics-port", str(metrics)],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    ready = []
    done = threading.Event()

    def read():
        for line in proc.stdout:
            if line.startswith("switchyard ready"):
                ready.append(line)
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not done.wait(180) or not ready:
            pytest.fail(f"switchyard up did not report ready (exit code {proc.poll()})")
        print(ready[0], file=sys.stderr)
        yield Stack(servers=[f"nats://127.0.0.1:{port + i}" for i in range(3)], dir=workdir, metrics_port=metrics)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def sy(stack):
    from switchyard import Switchyard

    # As an app: the `client` role, its password from the .env `switchyard up` made.
    client = await Switchyard.connect(servers=stack.servers, secrets=stack.dir / ".env")
    yield client
    await client.close()


@pytest.fixture
async def admin(stack):
    from switchyard import Switchyard

    client = await Switchyard.connect(servers=stack.servers, role="admin", secrets=stack.dir / ".env")
    yield client
    await client.close()


def wait_for(check, timeout: float = 10.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False
