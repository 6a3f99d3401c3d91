"""Credentials: read once, held in memory, never part of anything written.

Two ways a secret reaches the tool, one function each:

- :func:`read_key`: an API key from the environment variable the user names. It is
  registered with the redactor process-wide the moment it is read, so an error message built
  anywhere later (a 401 body quoting the ``Authorization`` header) is cleaned before the CLI
  prints it.
- :func:`split_url`: a base URL as typed. ``https://user:password@host/v1`` is a common way to
  reach a server behind a proxy with Basic auth: the credentials are moved out of the URL
  into an ``Authorization`` header (registered as secrets, the header's base64 included) and
  the URL that is stored, shown and recorded has none. A query string is refused: a key
  there (``?api_key=...``) would sit in every recorded request path, and httpx joins a base
  URL's query into the middle of each request path anyway.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from .errors import ConfigError
from .redact import register


def read_key(env_var: str | None, *, required: bool = False, why: str = "") -> str | None:
    """The API key in ``env_var`` (None when no variable is named or it is empty and not
    ``required``), registered as a secret before anything else can see it."""
    if not env_var:
        return None
    key = os.environ.get(env_var) or None
    if key is None and required:
        raise ConfigError(f"The environment variable {env_var} is empty or not set; export "
                          f"the API key there{why}.")
    register(key)
    return key


@dataclass(frozen=True)
class CleanURL:
    """A base URL without credentials, and the header that carries them instead."""

    url: str | None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def has_credentials(self) -> bool:
        return bool(self.headers)


def split_url(url: str | None, flag: str = "--base-url") -> CleanURL:
    """``url`` with any ``user:password@`` moved into a Basic ``Authorization`` header; a
    query string or fragment is refused with a message that never repeats it."""
    if not url:
        return CleanURL(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise ConfigError(f"{flag} is not a URL ({type(e).__name__}). Pass the endpoint's "
                          "base URL, e.g. http://127.0.0.1:8080/v1.") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"{flag} must be an http:// or https:// URL with a host, e.g. "
                          "http://127.0.0.1:8080/v1.")
    user, password = unquote(parsed.username or ""), unquote(parsed.password or "")
    register(password or user)  # a user name beside a password is not a secret
    if parsed.query or parsed.fragment:
        for part in parsed.query.decode("ascii", "replace").split("&"):
            register(part.partition("=")[2] or None)
        raise ConfigError(
            f"{flag} carries a query string, which would be stored in the run's manifest and in "
            "every recorded request path (and a key there, such as ?api_key=..., with it). Pass "
            "the address alone, and the key through an environment variable named by "
            "--api-key-env.")
    clean = str(parsed.copy_with(username=None, password=None))
    if not (user or password):
        return CleanURL(clean)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    register(token)
    return CleanURL(clean, (("Authorization", f"Basic {token}"),))


def request_headers(url_headers: tuple[tuple[str, str], ...], key: str | None,
                    sdk: bool = False) -> dict[str, str]:
    """The headers that authenticate every request of a run: the credentials from the URL,
    or the API key as a Bearer token (an SDK adapter sets its own key header). Both at once
    would fight over ``Authorization``: refused."""
    if url_headers and key:
        raise ConfigError("--base-url carries credentials (user:password@) and an API key is "
                          "set too; both would go in the Authorization header. Pass one.")
    if url_headers:
        if sdk:
            raise ConfigError("--base-url carries credentials (user:password@), which this "
                              "provider's SDK cannot send; pass the API key through an "
                              "environment variable named by --api-key-env.")
        return dict(url_headers)
    return {"Authorization": f"Bearer {key}"} if key and not sdk else {}
