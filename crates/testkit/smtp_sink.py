"""A real SMTP server for the email-notifier tests (aiosmtpd).

Listens on 127.0.0.1 on a free port, prints that port on one line of
stdout, and writes every message it receives (the raw RFC 5322 bytes) to
`<dir>/<n>.eml`, atomically, *before* it answers the DATA command. Then it
waits `delay_ms` before its 250 reply: a slow relay that has already taken
the mail. The delay is `--delay-ms`, or the number in `<dir>/delay_ms`
when that file exists (read at each message, so a test can change it).

    python smtp_sink.py --dir /tmp/x [--delay-ms 2500]
"""

import argparse
import asyncio
import itertools
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, directory: str, delay_ms: int) -> None:
        self.directory = directory
        self.delay_ms = delay_ms
        self.counter = itertools.count(1)

    def delay(self) -> float:
        control = os.path.join(self.directory, "delay_ms")
        try:
            with open(control, encoding="ascii") as f:
                return int(f.read().strip() or "0") / 1000
        except FileNotFoundError:
            return self.delay_ms / 1000

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        n = next(self.counter)
        final = os.path.join(self.directory, f"{n}.eml")
        temp = os.path.join(self.directory, f".{n}.eml.tmp")
        with open(temp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, final)
        delay = self.delay()
        if delay > 0:
            await asyncio.sleep(delay)
        return "250 OK: queued"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    sink = Sink(args.dir, args.delay_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.test"), host="127.0.0.1", port=0
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
