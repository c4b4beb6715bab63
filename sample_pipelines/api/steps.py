"""Steps of the api sample: enrich customer records from an HTTP API, within its rate limit.

Each record is ``{"customer_id": "C-0042"}``; the one step, "fetch customer", calls
``GET {base_url}/customers/C-0042`` with httpx and returns the customer the API answers,
which lands in the data bag (``--include-data`` shows it in the result line).

What the API answers becomes what choreo can act on:

- 200: the customer (a dict) is the job's value;
- 404: ``CustomerNotFound``: the record fails with a message naming the customer;
- 429 Too Many Requests: the job waits the ``Retry-After`` the API sent (at most
  ``max_retry_after`` seconds), then raises ``RateLimited``; 502, 503 and 504 the same
  with ``ServiceUnavailable``. The pipeline's ``retry:`` names both, and httpx's
  network errors and timeouts, so each is tried again (after retry's own delay too);
- anything else: ``ApiError``, not retried.

The pipeline's ``limits:`` keep the calls under the API's rate, so a normal run sees
no 429 at all: the retries are for when something else uses up the API's quota.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx


class CustomerNotFound(LookupError):
    """HTTP 404: the API has no such customer. Not retried: the record fails."""


class RateLimited(Exception):
    """HTTP 429: the API wants fewer calls. Raised once its Retry-After has passed."""


class ServiceUnavailable(Exception):
    """HTTP 502, 503 or 504: the API may answer next time. Raised once its Retry-After has passed."""


class ApiError(Exception):
    """Any other answer that is not 200: not retried."""


class Api:
    """The ``api`` resource: an ``httpx.AsyncClient`` for one worker's event loop.

    An AsyncClient's pooled connections belong to the event loop they were opened on, and
    each choreo worker thread runs its own loop; the resource is worker-scoped (one client
    per worker) and refuses a call from any other loop rather than fail in httpx's depths.

    choreo closes a worker's event loop before it tears down the worker's resources, and
    an AsyncClient is closed with ``await``: on its first call, the client leaves a task
    on the loop that closes it when the loop winds down (a closing worker loop cancels the
    tasks left on it and lets them finish).
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.loop: asyncio.AbstractEventLoop | None = None
        self._closer: asyncio.Task[None] | None = None

    async def get(self, path: str) -> httpx.Response:
        """``GET path`` (relative to the base URL) on this worker's client."""
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
            self._closer = loop.create_task(self._close_with_loop())
        elif loop is not self.loop:
            raise RuntimeError(
                "the api resource's client is used on another event loop than its first "
                "call's: give the resource 'scope: worker' (one client per worker)"
            )
        return await self.client.get(path)

    async def _close_with_loop(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # until the loop winds down
        finally:
            await self.client.aclose()


def api_client(*, base_url: str, token: str = "", timeout: float = 10.0) -> Iterator[Api]:
    """Resource factory: the API's client, with ``Authorization: Bearer TOKEN`` when a
    token is given (``token: ${API_TOKEN:-}`` in the pipeline keeps it out of the file)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return serve(httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout))


def serve(client: httpx.AsyncClient) -> Iterator[Api]:
    """Yield ``client`` as the ``api`` resource; make sure it ends up closed."""
    api = Api(client)
    yield api
    # Used, the client was closed on its own loop (see Api). A worker that ran no record
    # never used it: it opened no connection, and closes on a loop of its own here.
    if api.loop is None and not client.is_closed and not _loop_running():
        asyncio.run(client.aclose())


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def fetch_customer(ctx: Any, record: dict[str, Any], *, max_retry_after: float = 10.0) -> Any:
    """Job of "fetch customer": the customer ``record["customer_id"]`` names, from the API."""
    customer_id = record.get("customer_id")
    if not isinstance(customer_id, str) or not customer_id:
        raise ValueError(f"customer_id must be a non-empty string, got {customer_id!r}")
    path = f"/customers/{quote(customer_id, safe='')}"
    response = await ctx.resources.api.get(path)
    status = response.status_code
    if status == 200:
        return response.json()
    answered = f"GET {path} answered {status} {response.reason_phrase}"
    if status == 404:
        raise CustomerNotFound(f"no customer {customer_id!r} ({answered})")
    if status in (429, 502, 503, 504):
        header = response.headers.get("Retry-After")
        wait = min(retry_after(header), max_retry_after)
        if wait > 0:
            answered += f"; waited {wait:g} s (Retry-After: {header})"
            await pause(ctx, wait)
        raise (RateLimited if status == 429 else ServiceUnavailable)(answered)
    raise ApiError(f"{answered}: {response.text[:200]}")


def retry_after(header: str | None) -> float:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date); 0
    when there is none or it cannot be read.

    >>> retry_after("3"), retry_after(None), retry_after("soon")
    (3.0, 0.0, 0.0)
    """
    if header is None:
        return 0.0
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


async def pause(ctx: Any, seconds: float) -> None:
    """Sleep ``seconds``, or less if the run is interrupted meanwhile: then the retry's own
    wait sees the interruption at once and the record is cancelled."""
    deadline = time.monotonic() + seconds
    while not ctx.cancelled:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.1))
