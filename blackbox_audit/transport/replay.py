"""Record and replay at the httpx transport: the store answers, or the network does and the
store keeps the answer.

Modes:
- ``off``: straight to the network, nothing written.
- ``record``: to the network, every exchange appended to the store.
- ``replay``: answers only from the store; a miss raises, naming the nearest recorded key.
- ``auto``: answers from the store when it has the key, else the network, recording it.
  This is the response cache and the resume: a paid answer that reached disk is never asked
  for again.

Every answer is cleaned of secrets once, here, before anyone reads it: the caller gets the
same cleaned answer the fixture holds, so a live row and its replay are the same row.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from .. import fastjson
from ..errors import FixtureError
from ..redact import Redactor, might_hold_key
from .keys import canonical_body, relative_path, request_key
from .retry import JSON_EXTENSION
from .stats import TransportStats, UsageReader
from .store import Exchange, FixtureStore

MODES = ("off", "record", "replay", "auto")


class RecordReplayTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport | None, mode: str,
                 store: FixtureStore | None, base_path: str = "",
                 stats: TransportStats | None = None, usage: UsageReader | None = None):
        if mode not in MODES:
            raise ValueError(f"record mode must be one of {MODES}, not {mode!r}")
        if mode != "off" and store is None:
            raise ValueError(f"record mode {mode!r} needs a fixture store")
        if mode != "replay" and inner is None:
            raise ValueError(f"record mode {mode!r} needs a network transport")
        self.inner, self.mode, self.store = inner, mode, store
        self.redactor = store.redactor if store is not None else Redactor()
        self.base_path = base_path
        self.stats = stats or TransportStats()
        self.usage = usage

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = canonical_body(await request.aread())
        path = relative_path(request.url, self.base_path)
        key = request_key(request.method, path, body)
        if self.mode in ("replay", "auto"):
            assert self.store is not None
            rec = self.store.get(key)
            if rec is None:  # recorded with a credential redacted out of the request?
                redacted = self.store.redactor.obj(body)
                if redacted != body:
                    rec = self.store.get(request_key(request.method, path, redacted))
            if rec is not None:
                self.stats.replayed += 1
                if request.method != "GET":
                    self._count(rec["response"], replayed=True)
                return _response_from_record(rec, request)
            if self.mode == "replay":
                near = self.store.nearest(key)
                raise FixtureError(
                    f"Replay has no recorded answer for {request.method} {path} "
                    f"(fixture {self.store.path}, {len(self.store)} exchanges). "
                    + (f"Nearest recorded request: {near[:400]}" if near else
                       "The fixture is empty.")
                    + " Replay needs the same prefills, framings and generation settings as "
                    "the recording; rerun with the recording's flags or record again.")
        assert self.inner is not None
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if 200 <= response.status_code < 300:
            payload, ctype = _payload(response, content)
            if payload is not _BROKEN:
                clean = self._withheld(payload, content)
                if clean is not payload:
                    # What was cut is cut for everyone: the provider parses the same clean
                    # answer a replay of the record gives, so both make the same row.
                    response = _answer_with(response, clean, request)
                    payload, content = clean, None
                if request.method != "GET":  # listings and probes of state carry no usage
                    self._count(payload, replayed=False)
                if self.mode in ("record", "auto"):
                    assert self.store is not None
                    self.store.add(Exchange(request.method, path, body, response.status_code,
                                            payload, ctype,
                                            content if ctype == "application/json" else None),
                                   key)
        # Handed up as it is: read (its content is there to read again), closed, headers as
        # received. A copy built from the decoded content kept the Content-Encoding header,
        # so a gzip answer failed to decode twice (DecodingError).
        return response

    def _count(self, payload: Any, replayed: bool) -> None:
        """Tokens as the endpoint's adapter reads them (the transport knows no API's fields)."""
        tokens = self.usage(payload) if self.usage is not None else None
        self.stats.count_usage(tokens, replayed)

    def _withheld(self, payload: Any, content: bytes) -> Any:
        """The answer as it may be kept: ``payload`` itself, or a copy with this run's secrets
        (in any encoding, split over tokens) and key-shaped strings cut out. The walk is paid
        only when the run holds a secret or the bytes could hold a key shape."""
        if self.redactor.knows_secrets or might_hold_key(content):
            return self.redactor.obj(payload)
        return payload

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
        if self.store is not None:
            self.store.close()


_BROKEN = object()


def _answer_with(response: httpx.Response, payload: Any,
                 request: httpx.Request) -> httpx.Response:
    """``response`` with ``payload`` as its JSON body (the original encoding and length
    headers dropped: the new body is plain JSON)."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "content-type")]
    clean = httpx.Response(response.status_code, headers=headers, json=payload,
                           request=request)
    clean.extensions[JSON_EXTENSION] = payload
    return clean


def _payload(response: httpx.Response, content: bytes) -> tuple[Any, str]:
    """A 2xx body as recorded: parsed JSON (reusing the retry layer's parse), else text. A
    body that claims to be JSON and does not parse (cut off) is _BROKEN: never recorded,
    so a resumed run asks for it again instead of replaying the damage."""
    ctype = response.headers.get("content-type", "application/json")
    if JSON_EXTENSION in response.extensions:
        return response.extensions[JSON_EXTENSION], "application/json"
    if not content and "json" in ctype:
        return _BROKEN, ctype
    try:
        return fastjson.loads(content), "application/json"
    except ValueError:
        if "json" in ctype:
            return _BROKEN, ctype
        return content.decode("utf-8", errors="replace"), ctype


def _response_from_record(rec: dict[str, Any], request: httpx.Request) -> httpx.Response:
    payload = rec["response"]
    if isinstance(payload, str) and rec.get("content_type") != "application/json":
        content = payload.encode()
    else:
        content = json.dumps(payload).encode()
    return httpx.Response(rec["status"], content=content, request=request,
                          headers={"content-type": rec.get("content_type", "application/json"),
                                   "x-blackbox-audit-replayed": "1"})
