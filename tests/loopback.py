"""An ``http.server`` on 127.0.0.1, served from a daemon thread for the length of a
``with`` block: the part the tests' fake endpoints (fake_server.py, stub_server.py) share."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class ServedInThread:
    """Mixed into a test server that calls :meth:`_serve` with its ``http.server``."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    def _serve(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
