"""A small customer API for the api sample: JSON over HTTP, with a rate limit of its own.

``GET /customers/C-0042`` answers the customer as JSON (404 for an id it does not know).
Past its rate (a token bucket: ``--rate`` requests a second, ``--burst`` at once) it
answers 429 Too Many Requests with a ``Retry-After`` header, as real APIs do.
``GET /stats`` answers what it has seen so far; so does the line it prints to stdout when
it stops (Ctrl-C or SIGTERM).

    python server.py                  # http://127.0.0.1:8765 (or --port / $API_PORT)
    python server.py --port 0         # any free port: the first line printed is the URL
    python server.py --rate 5 --burst 1 --token secret

Standard library only: ``http.server``'s ThreadingHTTPServer, one thread per connection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

CUSTOMERS = 1000  # C-0001 .. C-1000 exist; any other id is unknown (404)
FIRST_NAMES = ["Ada", "Grace", "Linus", "Barbara", "Edsger", "Frances", "Alan", "Margaret"]
LAST_NAMES = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Dijkstra", "Allen", "Kay"]
COUNTRIES = ["CH", "DE", "FR", "GB", "IT", "NL", "SE", "US"]
TIERS = ["bronze", "silver", "gold"]


def customer(customer_id: str) -> dict[str, Any] | None:
    """The customer the API answers for ``customer_id``, or None (404). Derived from the
    id's number alone, so a test can say what a run must have fetched.

    >>> customer("C-0001")["name"]
    'Grace Hopper'
    >>> customer("C-1001") is None
    True
    """
    prefix, _, digits = customer_id.partition("-")
    if prefix != "C" or len(digits) != 4 or not digits.isdigit():
        return None
    number = int(digits)
    if not 1 <= number <= CUSTOMERS:
        return None
    first = FIRST_NAMES[number % len(FIRST_NAMES)]
    last = LAST_NAMES[number % len(LAST_NAMES)]
    return {
        "id": customer_id,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}.{number}@example.com",
        "country": COUNTRIES[number * 7 % len(COUNTRIES)],
        "tier": TIERS[number * 5 % len(TIERS)],
    }


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a token if there is one."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


@dataclass
class Stats:
    """What the server has answered, by status code (``/stats`` itself not counted)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, status: int) -> None:
        with self.lock:
            self.requests += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "rate_limited": self.by_status.get(429, 0),
                "not_found": self.by_status.get(404, 0),
                "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            }

    def line(self) -> str:
        stats = self.as_dict()
        return (
            f"api server: {stats['requests']} requests, "
            f"{stats['rate_limited']} answered 429 (rate limited), "
            f"{stats['not_found']} answered 404"
        )


@dataclass(frozen=True)
class Settings:
    rate: float = 25.0
    burst: int = 20
    retry_after: int = 1  # seconds, in the 429's Retry-After header
    latency: float = 0.02  # seconds each customer lookup takes
    token: str | None = None  # when set, requests need "Authorization: Bearer <token>"


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True  # a connection kept alive by a client does not hold up exit

    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        super().__init__(address, Handler)
        self.settings = settings
        self.bucket = TokenBucket(settings.rate, settings.burst)
        self.stats = Stats()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's connection pool is reused
    server: ApiServer

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._send(200, self.server.stats.as_dict(), counted=False)
            return
        settings = self.server.settings
        if settings.token is not None and (
            self.headers.get("Authorization") != f"Bearer {settings.token}"
        ):
            self._send(401, {"error": "missing or wrong bearer token"})
            return
        if not self.server.bucket.take():
            self._send(
                429,
                {"error": f"more than {settings.rate:g} requests a second"},
                headers={"Retry-After": str(settings.retry_after)},
            )
            return
        prefix = "/customers/"
        if not self.path.startswith(prefix):
            self._send(404, {"error": f"no route {self.path}"})
            return
        time.sleep(settings.latency)
        found = customer(self.path[len(prefix) :])
        if found is None:
            self._send(404, {"error": f"no customer {self.path[len(prefix) :]}"})
        else:
            self._send(200, found)

    def _send(
        self,
        status: int,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        counted: bool = True,
    ) -> None:
        if counted:
            self.server.stats.count(status)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the counts printed at the end


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # leaves serve_forever in the main thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("API_PORT", "8765")),
        help="port to listen on (default $API_PORT or 8765; 0: any free port)",
    )
    parser.add_argument("--rate", type=float, default=Settings.rate, help="requests a second")
    parser.add_argument("--burst", type=int, default=Settings.burst, help="requests at once")
    parser.add_argument(
        "--retry-after", type=int, default=Settings.retry_after, help="seconds, sent with 429"
    )
    parser.add_argument(
        "--latency", type=float, default=Settings.latency, help="seconds per lookup"
    )
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    args = parser.parse_args(argv)
    settings = Settings(args.rate, args.burst, args.retry_after, args.latency, args.token)

    server = ApiServer((args.host, args.port), settings)
    signal.signal(signal.SIGTERM, _stop)
    print(f"serving {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(server.stats.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
