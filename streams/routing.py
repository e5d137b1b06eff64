"""Forwarding ``GET /objects/<id>`` to the worker that owns the object's partition, with an answer in bounded time.

Faust's router forwards with the HTTP client's defaults: a peer killed before the group noticed made every such
request a 500 with a traceback in the log, a peer stopped or blocked held the client for up to five minutes, and two
workers that briefly disagree on an owner (a rebalance) could pass a request back and forth. A worker joining the
group answered 500 too (no partition metadata yet), and one recovering its tables 404 for objects it was still
reading back. Here any of these is a ``503``: the client asks again once the group has settled.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from faust.app.router import Router
from faust.exceptions import SameNode
from faust.types.core import K
from faust.types.web import Request, Response, Web
from faust.web.exceptions import ServiceUnavailable
from yarl import URL

log = logging.getLogger(__name__)

#: Seconds the owner gets to answer a forwarded request (it answers from its table: milliseconds).
FORWARD_TIMEOUT = 5.0

#: Marks a request a worker forwarded: the receiver never forwards it again.
FORWARDED = "X-Hookstream-Forwarded"


def worker_ready(app: Any) -> bool:
    """The worker has its partitions and their table state is recovered (no rebalance under way): what its
    ``/readyz`` says, and when it may say where an object lives and what its state is."""
    recovered = app.tables.recovery.completed.is_set()
    return bool(recovered and not app.rebalancing and not app.in_recovery)


class ForwardingRouter(Router):
    """Faust's router (``app.router``), answering only when ready, its forwarding bounded: a deadline, one hop, a 503
    when the owner cannot answer."""

    async def route_req(self, table_name: str, key: K, web: Web, request: Request) -> Response:
        if not worker_ready(self.app):  # no assignment yet, or one being replaced, or this state half read back
            raise ServiceUnavailable("this worker is joining the group or recovering its tables: ask again")
        return await super().route_req(table_name, key, web, request)

    async def _route_req(self, dest_url: URL, web: Web, request: Request) -> Response:
        host, port = self._urlident(dest_url)
        if (host, port) == self._urlident(self.app.conf.canonical_url):
            raise SameNode()
        if FORWARDED in request.headers:  # the worker that sent it takes this one for the owner: they disagree
            raise ServiceUnavailable("the workers are rebalancing: ask again in a moment")
        url = request.url.with_host(host).with_port(int(port))
        headers = {**request.headers, FORWARDED: "1"}
        try:
            async with self.app.http_client.request(
                method=request.method,
                headers=headers,
                url=url,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
            ) as response:
                return web.text(await response.text(), content_type=response.content_type, status=response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("the owner of %s, %s:%s, did not answer: %r", request.url.path, host, port, exc)
            raise ServiceUnavailable(f"the worker owning this object ({host}:{port}) did not answer") from exc
