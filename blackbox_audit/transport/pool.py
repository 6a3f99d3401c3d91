"""The connection pool: several small httpx pools, each request to the least busy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools in place of one big one, each request to the least
    busy.

    httpcore's pool walks every connection, with a ``poll`` syscall each, whenever a request
    is queued or a response closed: per request, its cost grows with the pool size. At 64
    connections that walk was most of the client's CPU (bench/client.py); shards of
    ``per_shard`` connections keep it flat. Routing to the shard with the fewest requests in
    progress means a shard never queues while another has a free connection, as long as
    the requests in flight do not exceed ``max_connections`` (the limiter's cap).
    """

    def __init__(self, max_connections: int, per_shard: int = 8,
                 factory: Callable[[int], httpx.AsyncBaseTransport] | None = None):
        n = max(1, -(-max_connections // per_shard))
        size = -(-max_connections // n)
        if factory is None:
            ssl = httpx.create_ssl_context()  # one for all shards: loading CA certs costs

            def factory(size: int) -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(verify=ssl, limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size))

        self.shards = [factory(size) for _ in range(n)]
        self.load = [0] * n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[i] += 1
        try:
            response = await self.shards[i].handle_async_request(request)
        except BaseException:
            self.load[i] -= 1
            raise
        if response.is_closed:  # read already (an in-memory answer): nothing to wait for
            self.load[i] -= 1
            return response
        # The same answer, its body wrapped (a new response: httpx's own objects unchanged).
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Released(response.stream, self.load, i),
                              extensions=response.extensions, request=request)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when closed (read to the end or
    abandoned)."""

    def __init__(self, stream: Any, load: list[int], i: int):
        self.stream, self.load, self.i, self.open = stream, load, i, True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if self.open:
                self.open = False
                self.load[self.i] -= 1
