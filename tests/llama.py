"""Real llama.cpp servers for the integration tests: the build scripts' products and a server
process on 127.0.0.1, started by the test and always stopped.

Where a build or a server fails, the test cannot run: ``conftest.unavailable`` makes that a
failure under ``CI=true`` and a skip that says why elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import unavailable

ROOT = Path(__file__).resolve().parent.parent


def cannot_run(what: str, reason: str):
    print(f"\n{what} unavailable: {reason}", file=sys.stderr)
    unavailable(f"the {what} cannot run: {reason}")


def built(script: str, *args: str, timeout: int, what: str,
          override_env: str | None = None) -> str:
    """The stdout of ``scripts/SCRIPT ARGS`` (it builds, caches and prints what it made), or
    the path in ``override_env`` when set."""
    given = os.environ.get(override_env) if override_env else None
    if given:
        return given
    try:
        r = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        cannot_run(what, f"scripts/{script} took over {timeout} s")
    if r.returncode != 0:
        cannot_run(what, f"scripts/{script} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def llama_server_binary(what: str) -> str:
    out = built("build_llama_server.sh", timeout=2000, what=what,
                override_env="BLACKBOX_AUDIT_LLAMA_SERVER")
    return out.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``llama-server -m MODEL`` on a free loopback port, healthy before the constructor
    returns. ``threads`` 1 on this 2-core box: its threads spin-wait, and a second busy
    process (torch scoring) would collapse its throughput."""

    def __init__(self, binary: str, model: str, log: Path, *, what: str, alias: str,
                 threads: int = 1, context: int = 2048, parallel: int | None = None,
                 extra: tuple[str, ...] = (), ready_within: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-c",
               str(context), "-t", str(threads), "--alias", alias]
        if parallel is not None:
            cmd += ["-np", str(parallel)]
        cmd += list(extra)
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                cannot_run(what, f"llama-server exited with {self.proc.returncode}: "
                                 f"{log.read_text()[-500:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        cannot_run(what, f"llama-server did not become healthy within {ready_within:g} s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
