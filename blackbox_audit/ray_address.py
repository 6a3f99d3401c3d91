"""A Ray cluster's address, checked before ``ray.init`` is given it.

``ray.init(address=...)`` on an address where nothing listens waits for the cluster's control
store for a minute or more before it gives up, with a message about GCS. A user who mistyped a
port deserves an answer in seconds: so the address is parsed when the plan is built (a
malformed one is a ConfigError) and its port is tried with a plain TCP connection, bounded in
time, just before Ray is asked to join (nothing listening is a ScorerError naming the
address). Ray's own connection logic stays Ray's; this only refuses the hopeless case early.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

from .errors import ConfigError, ScorerError

FORMS = "HOST:PORT (as `ray start --head` prints it), ray://HOST:PORT, or auto"


class RayAddress(NamedTuple):
    host: str
    port: int


def parse_ray_address(address: str) -> RayAddress | None:
    """The host and port of ``address``; None for ``auto`` (Ray finds the cluster itself)."""
    text = address.strip()
    if text == "auto":
        return None
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")   # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ConfigError(f"--ray-address {address!r} is not a Ray cluster address; give "
                          f"{FORMS}.")
    return RayAddress(host, int(port))


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse early when nothing accepts a connection at the port of ``address`` (None: the
    RAY_ADDRESS environment variable, which ``ray.init()`` would follow; neither: a local
    cluster will be started, nothing to check)."""
    address = address or os.environ.get("RAY_ADDRESS")
    where = parse_ray_address(address) if address else None
    if where is None:
        return
    try:
        with socket.create_connection((where.host, where.port), timeout=timeout):
            pass
    except OSError as e:
        raise ScorerError(
            f"No Ray cluster answers at {address} ({type(e).__name__}: {e}). Start one with "
            "`ray start --head` on that machine and pass the address it prints with "
            "--ray-address, or leave --ray-address out to start a local cluster for this "
            "run.") from e


__all__ = ["RayAddress", "check_reachable", "parse_ray_address"]
