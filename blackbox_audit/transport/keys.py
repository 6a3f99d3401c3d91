"""Canonical request keys: what identifies an exchange in a fixture.

The key is the method, the path relative to the base URL and the canonical JSON body (sorted
keys). Host, port and headers are not part of it, so fixtures recorded against one port
replay against another, and no credential can ever be part of a key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from .. import fastjson


def canonical_body(content: bytes) -> Any:
    """The request body as a JSON value (or text), independent of key order and spacing."""
    if not content:
        return None
    try:
        return fastjson.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


def request_key(method: str, path: str, body: Any) -> str:
    return json.dumps([method.upper(), path, body], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def relative_path(url: httpx.URL, base_path: str) -> str:
    """``url``'s path (and query) relative to the base URL's path."""
    path = url.path
    base = base_path.rstrip("/")
    if base and path.startswith(base):
        path = path[len(base):] or "/"
    if url.query:
        path += "?" + url.query.decode()
    return path
