"""A stand-in for the customer API in the api sample's tests (pipeline.test.yaml).

``fake_api`` is a resource factory like ``steps:api_client``, but its httpx client
answers from a mapping through ``httpx.MockTransport``: no server, no network, and the
real ``fetch_customer`` job runs against it, Retry-After and all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from steps import Api, serve


def fake_api(
    *,
    customers: Mapping[str, Mapping[str, Any]],
    busy: Mapping[str, int] | None = None,
    retry_after: str = "0",
) -> Iterator[Api]:
    """The ``api`` resource, answering ``GET /customers/ID`` from ``customers`` (404 for
    any other id). An id in ``busy`` is first answered with its status (429, 503: with
    ``Retry-After: retry_after``), once; the next call for it gets the customer."""
    pending = dict(busy or {})

    def answer(request: httpx.Request) -> httpx.Response:
        customer_id = request.url.path.rpartition("/")[2]
        status = pending.pop(customer_id, None)
        if status is not None:
            return httpx.Response(status, headers={"Retry-After": retry_after}, json={})
        if customer_id in customers:
            return httpx.Response(200, json={"id": customer_id, **customers[customer_id]})
        return httpx.Response(404, json={"error": f"no customer {customer_id}"})

    transport = httpx.MockTransport(answer)
    return serve(httpx.AsyncClient(base_url="http://api.test", transport=transport))
