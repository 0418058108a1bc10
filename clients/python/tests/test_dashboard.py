"""The registry's live dashboard (GET / next to /metrics), in a real browser.

Headless Chromium through Selenium, with Debian's `chromium` and
`chromium-driver` (`just setup` installs them): both paths are given, so
Selenium Manager never runs and nothing is downloaded. A missing browser
fails these tests; they never skip.

`SWITCHYARD_DASHBOARD_SCREENSHOT=<file.png>` makes the first test save
the page once it shows live data (`just screenshot` writes
docs/dashboard.png this way).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from switchyard import Maintenance
from switchyard.client import read_secrets

CHROMIUM = os.environ.get("SWITCHYARD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SWITCHYARD_CHROMEDRIVER", "/usr/bin/chromedriver")
SERVICES = ["email-notifier", "log-worker", "math", "payment-processor", "registry", "stock-ticker"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the dashboard is tested in headless Chromium; "
                    "install Debian's chromium and chromium-driver (`just setup` does: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"selenium is not installed ({e}): `just setup` (pip install -r requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def dashboard_url(stack) -> str:
    return f"http://127.0.0.1:{stack.metrics_port}/"


async def until(what: str, check, timeout: float = 20.0, every: float = 0.2):
    """Polls ``check()`` (a browser query) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # a node replaced while we read it: try again
            last = e
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what}: not true after {timeout}s (last: {last!r})")
        await asyncio.sleep(every)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


async def open_dashboard(driver, stack):
    driver.get(dashboard_url(stack))
    await until("the page loaded its state", lambda: driver.execute_script("return document.body.dataset.ready") == "true")
    await until("the event stream is live",
                lambda: css(driver, '#connection[data-state="live"]'))


async def test_dashboard_shows_services_payments_stocks_and_the_trace_s_logs(stack, sy, browser):
    driver = browser
    await open_dashboard(driver, stack)

    # All six services, each healthy (an instance heartbeating within its TTL).
    def healthy():
        return sorted(r.get_attribute("data-service") for r in css(driver, 'tr[data-service][data-health="healthy"]'))
    assert set(SERVICES) <= set(await until("six healthy services", lambda: set(SERVICES) <= set(healthy()) and healthy()))

    # A stock price changes while we watch.
    cards = await until("stock cards", lambda: css(driver, "#stocks [data-symbol]"))
    before = {c.get_attribute("data-symbol"): (c.get_attribute("data-seq"), c.get_attribute("data-price")) for c in cards}
    assert "AAPL" in before, before

    def moved():
        now = {c.get_attribute("data-symbol"): (c.get_attribute("data-seq"), c.get_attribute("data-price"))
               for c in css(driver, "#stocks [data-symbol]")}
        return [s for s in before if now.get(s, before[s])[1] != before[s][1]]
    assert await until("a price changed", moved)
    assert css(driver, '#stocks [data-symbol="AAPL"] svg polyline'), "AAPL has a chart"

    # A payment made now shows as completed, with the counter; a refused
    # currency shows as failed.
    completed_before = int(css(driver, "#payments-completed")[0].get_attribute("data-value") or 0)
    pid = uid("dash-pay")
    ack = await sy.payments.publish("user-dash", "42.00", payment_id=pid, email="dash@b.example")
    for i in range(3):
        await sy.payments.publish(f"user-{i}", f"{10 + i * 7}.50", payment_id=uid("dash-more"))
    failed_pid = uid("dash-fail")
    await sy.payments.publish("user-dash", "5.00", currency="XXX", payment_id=failed_pid)
    row = await until("the payment listed as completed",
                      lambda: css(driver, f'#payment-list li[data-payment-id="{pid}"][data-status="completed"]'))
    assert "42.00" in row[0].text
    assert row[0].get_attribute("data-trace-id") == ack.trace_id
    await until("the failed payment listed as failed",
                lambda: css(driver, f'#payment-list li[data-payment-id="{failed_pid}"][data-status="failed"]'))
    await until("the completed counter counted it",
                lambda: int(css(driver, "#payments-completed")[0].get_attribute("data-value") or 0) >= completed_before + 4)

    # The log tail has a line of this payment's trace (the processor's).
    await until("a log line of the payment's trace arrived",
                lambda: css(driver, f'#log-tail tr[data-trace-id="{ack.trace_id}"]'))
    shot = os.environ.get("SWITCHYARD_DASHBOARD_SCREENSHOT")
    if shot:
        await screenshot(driver, sy, shot)
    box = css(driver, "#log-trace")[0]
    box.clear()
    box.send_keys(ack.trace_id)

    def traced_rows():
        visible = [r for r in css(driver, "#log-tail tr") if r.is_displayed()]
        return visible if visible and all(r.get_attribute("data-trace-id") == ack.trace_id for r in visible) else None
    rows = await until("only the trace's lines shown", traced_rows)
    assert any(r.get_attribute("data-service") == "payment-processor" for r in rows), [r.text for r in rows]
    assert any(pid in (r.get_attribute("title") or "") + r.text for r in rows), [r.text for r in rows]
    box.clear()
    box.send_keys("0" * 32)
    await until("a trace with no lines shows none",
                lambda: not any(r.is_displayed() for r in css(driver, "#log-tail tr")) or None)
    box.clear()


async def screenshot(driver, sy, path: str):
    """Some traffic for a few seconds (rates, charts), then the page as a
    1280x900 PNG."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    loop = asyncio.get_running_loop()
    end = loop.time() + 4
    n = 0
    while loop.time() < end:
        await sy.math.add(n, 1)
        if n % 10 == 0:
            await sy.payments.publish(f"user-{n}", f"{20 + n}.00", payment_id=uid("demo"))
        n += 1
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.2)  # the next state push shows the rates
    assert driver.save_screenshot(path), path
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


async def toggle_in_page(driver, password: str) -> tuple[str, str]:
    field = css(driver, "#admin-password")[0]
    field.clear()
    if password:
        field.send_keys(password)
    message = css(driver, "#maintenance-message")[0]
    driver.execute_script("arguments[0].dataset.outcome = ''; arguments[0].textContent = ''", message)
    css(driver, "#maintenance-toggle")[0].click()
    outcome = await until("the toggle answered",
                          lambda: message.get_attribute("data-outcome") in ("ok", "error") and message.get_attribute("data-outcome"))
    return outcome, message.text


async def test_dashboard_maintenance_toggle_needs_the_admin_password(stack, sy, admin, browser):
    driver = browser
    await open_dashboard(driver, stack)
    flag = lambda: css(driver, "#maintenance")[0].get_attribute("data-state")  # noqa: E731
    assert await until("the flag is shown", lambda: flag() in ("on", "off") and flag()) == "off"
    password = read_secrets(stack.dir / ".env")["ADMIN_PASSWORD"]
    try:
        # No password: the page asks for it, nothing is sent.
        outcome, text = await toggle_in_page(driver, "")
        assert outcome == "error" and "admin password" in text, text
        # A wrong one: NATS refuses the admin login, 403, the flag stays off.
        outcome, text = await toggle_in_page(driver, "not-" + password)
        assert outcome == "error" and text.startswith("403") and "refused the admin password" in text, text
        assert flag() == "off"
        await asyncio.sleep(0.5)
        assert await sy.math.add(1, 1) == 2
        # The right one: on, and the services answer 503.
        outcome, text = await toggle_in_page(driver, password)
        assert outcome == "ok" and "set as admin" in text, text
        assert flag() == "on"
        for _ in range(40):
            try:
                await sy.math.add(1, 1)
            except Maintenance as e:
                assert e.status == 503
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("maintenance turned on in the page, but math still answers")
        # The password field was cleared; it takes the password again to turn it off.
        assert css(driver, "#admin-password")[0].get_attribute("value") == ""
        outcome, text = await toggle_in_page(driver, password)
        assert outcome == "ok", text
        await until("the page shows it off", lambda: flag() == "off")
    finally:
        await admin.set_maintenance(False)
    for _ in range(40):
        try:
            assert await sy.math.add(1, 1) == 2
            break
        except Maintenance:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("still in maintenance 2 s after turning it off")


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def test_dashboard_refuses_forged_toggles(stack, admin):
    base = dashboard_url(stack)
    with urllib.request.urlopen(base, timeout=10) as response:
        page = response.read().decode()
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page).group(1)
    url = base + "dashboard/maintenance"
    password = read_secrets(stack.dir / ".env")["ADMIN_PASSWORD"]
    body = json.dumps({"on": True, "password": password}).encode()
    same_origin = base.rstrip("/")
    try:
        # Without the page's token (what another site's form or script sends).
        status, reply = post(url, body, {"Content-Type": "application/json", "Origin": same_origin})
        assert (status, reply["error"]["code"]) == (403, "csrf"), reply
        status, reply = post(url, body, {"Content-Type": "application/json", "X-CSRF-Token": "0" * 64})
        assert (status, reply["error"]["code"]) == (403, "csrf"), reply
        # With the token but from another origin.
        status, reply = post(url, body, {"Content-Type": "application/json", "X-CSRF-Token": token,
                                         "Origin": "http://evil.example"})
        assert (status, reply["error"]["code"]) == (403, "cross_origin"), reply
        # Not JSON (a plain HTML form post).
        status, reply = post(url, b"on=true", {"Content-Type": "application/x-www-form-urlencoded",
                                               "X-CSRF-Token": token, "Origin": same_origin})
        assert status == 415, reply
        # Bad JSON: a clear 400, no crash.
        for bad in (b"{not json", b'{"on": "yes"}', b"[]", b"", b'{"on": true, "extra": 1}'):
            status, reply = post(url, bad, {"Content-Type": "application/json", "X-CSRF-Token": token,
                                            "Origin": same_origin})
            assert status == 400 and reply["error"]["code"] == "invalid_request", (bad, status, reply)
            assert password not in json.dumps(reply)
        # A GET changes nothing.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 405
        # Nothing of the above turned maintenance on.
        with urllib.request.urlopen(base + "dashboard/state", timeout=10) as response:
            assert json.loads(response.read())["maintenance"] is False
        # The same request with the token and the page's origin is accepted.
        status, reply = post(url, body, {"Content-Type": "application/json; charset=utf-8", "X-CSRF-Token": token,
                                         "Origin": same_origin})
        assert (status, reply) == (200, {"maintenance": True, "as": "admin"}), reply
        status, reply = post(url, json.dumps({"on": False, "password": password}).encode(),
                             {"Content-Type": "application/json", "X-CSRF-Token": token})
        assert (status, reply["maintenance"]) == (200, False), reply
    finally:
        await admin.set_maintenance(False)
    # The registry's log never carries the password.
    logs = stack.dir / "state" / "logs" / "registry.log"
    assert logs.is_file(), logs
    assert password not in logs.read_text(errors="replace")
