"""The examples and the demo run as a user runs them: separate processes
against the locked-down stack, credentials from the .env `switchyard up`
made (the `client` role, `admin` for maintenance mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[1]

EXPECTED = {
    "hello.py": "received: hello, switchyard",
    "queue_group.py": "30 messages shared:",
    "rpc.py": "sum 1..10 = 55",
    "jetstream_orders.py": "published again: duplicate=True",
    "kv_flag.py": "after turning it off: 1 + 1 = 2",
}


def run(stack, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SWITCHYARD_SECRETS=str(stack.dir / ".env"))
    return subprocess.run([sys.executable, *args], cwd=CLIENT_DIR, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(stack, example):
    done = run(stack, f"examples/{example}", *stack.servers)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[example] in done.stdout, done.stdout


def test_demo_all(stack):
    done = run(stack, "demo.py", "--servers", ",".join(stack.servers))
    assert done.returncode == 0, done.stderr
    assert "status: completed" in done.stdout, done.stdout
