"""Hand our httpx client to the official SDKs, whatever HTTP package they are built on.

The openai and anthropic SDKs (3.x / 2.x) run on ``httpx2``, a fork of httpx with its own
classes; anthropic's constructor refuses an ``httpx.AsyncClient`` outright. Our record /
replay / retry layers (:mod:`blackbox_audit.transport`) and respx, which the tests use, live on
plain ``httpx``. Rather than fork the transport stack, the SDK gets its own documented HTTP
client class, ``DefaultAsyncHttpxClient`` (exported by both SDKs for ``http_client=``), built
with a transport that forwards every request to *our* httpx client and hands the answer back.
So an SDK call is keyed, recorded, replayed, retried and mocked exactly like a raw httpx call.

Which HTTP package that class belongs to (httpx2, or httpx for openai 1.x, which then takes
our client as it is) is read from the class itself: the ``AsyncClient`` it derives from.

Both SDK adapters send through :func:`sdk_send`: the SDK's raw-response call, its error
classes mapped back to the shared status handling (``Provider.raise_for_status``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from types import ModuleType
from typing import Any

import httpx

from blackbox_audit.errors import AuditError


def http_package(sdk: ModuleType) -> ModuleType:
    """The HTTP package the SDK's documented client class (``DefaultAsyncHttpxClient``) is
    built on: the package of the ``AsyncClient`` it is or derives from."""
    for cls in sdk.DefaultAsyncHttpxClient.__mro__:
        if cls.__name__ == "AsyncClient":
            return importlib.import_module(cls.__module__.partition(".")[0])
    return httpx


def sdk_http_client(client: httpx.AsyncClient, sdk: ModuleType) -> Any:
    """An HTTP client for ``sdk`` (the openai or anthropic module) that sends everything
    through ``client``."""
    http = http_package(sdk)
    if http is httpx:
        return client

    class _Bridge(http.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Forwards the SDK's request to our client; returns its answer in SDK types."""

        async def handle_async_request(self, request: Any) -> Any:
            content = await request.aread()
            headers = [(k, v) for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")]
            ours = client.build_request(request.method, str(request.url), headers=headers,
                                        content=content)
            response = await client.send(ours)
            body = await response.aread()
            keep = [(k, v) for k, v in response.headers.items()
                    if k.lower() not in ("content-encoding", "content-length",
                                         "transfer-encoding")]
            return http.Response(response.status_code, headers=keep, content=body,
                                 request=request)

    return sdk.DefaultAsyncHttpxClient(transport=_Bridge(),
                                       timeout=client.timeout.read or 120.0)


def sdk_client(sdk_class: Any, sdk: ModuleType, client: httpx.AsyncClient,
               api_key: str | None, base_url: str) -> Any:
    """An official SDK client that sends through ``client`` with its own retries off.

    A placeholder key keeps the SDK quiet in replay, where nothing reaches the vendor; the
    real key, when given, only ever lives in the SDK object and the request header."""
    return sdk_class(api_key=api_key or "replay-no-key", base_url=base_url, max_retries=0,
                     http_client=sdk_http_client(client, sdk),
                     timeout=client.timeout.read or 120.0)


async def sdk_send(sdk: ModuleType, resource: Any, body: dict[str, Any]) -> httpx.Response:
    """``resource.create`` (an SDK resource: chat.completions, completions, messages) with
    ``body`` as its JSON: the raw HTTP answer, errors included, as a plain httpx.Response for
    the shared status handling. Parameters the SDK version does not type go as
    ``extra_body``, so the JSON sent is ``body`` either way."""
    typed, extra = split_params(resource.create, body)
    try:
        raw = await resource.with_raw_response.create(
            **typed, **({"extra_body": extra} if extra else {}))
    except sdk.APIStatusError as e:
        return as_httpx_response(e.response)
    except sdk.APIConnectionError as e:
        raise unwrap_connection_error(e) from e
    return as_httpx_response(raw.http_response)


def unwrap_connection_error(e: Exception) -> Exception:
    """The SDK wraps whatever our transport raised in APIConnectionError: give back our own
    error (a replay miss must stay a FixtureError) or the httpx error the loop maps."""
    cause = e.__cause__ or e.__context__
    while cause is not None and not isinstance(cause, AuditError | httpx.TransportError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause
    return httpx.ConnectError(str(e))


def as_httpx_response(sdk_response: Any) -> httpx.Response:
    """An SDK-side response (httpx2 or httpx) as a plain httpx.Response, for the shared
    status handling in :meth:`providers.base.Provider.raise_for_status`."""
    if isinstance(sdk_response, httpx.Response):
        return sdk_response
    req = sdk_response.request
    ours = httpx.Request(req.method, str(req.url))
    return httpx.Response(sdk_response.status_code, content=sdk_response.content,
                          headers=[(k, v) for k, v in sdk_response.headers.items()
                                   if k.lower() not in ("content-encoding", "content-length")],
                          request=ours)


def split_params(create: Any, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the SDK method's own keyword parameters, the rest for ``extra_body``). SDK versions
    add and drop typed parameters (anthropic 2.x no longer types ``temperature``); what the
    wire needs goes out either way, and the JSON body is the same."""
    params = _parameters(getattr(create, "__func__", create))
    if params is None:
        return dict(body), {}
    typed = {k: v for k, v in body.items() if k in params and k != "extra_body"}
    extra = {k: v for k, v in body.items() if k not in typed}
    return typed, extra


@functools.lru_cache(maxsize=32)
def _parameters(func: Any) -> frozenset[str] | None:
    """A method's keyword names, computed once (inspect.signature costs ~0.2 ms a call)."""
    try:
        return frozenset(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
