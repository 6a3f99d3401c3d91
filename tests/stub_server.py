"""A raw HTTP stub on 127.0.0.1 whose every answer a test writes byte for byte.

``tests/fake_server.py`` plays a well-behaved OpenAI-compatible peer with injected faults;
this one plays whatever a test needs a careless or hostile endpoint to do: answers of the
wrong shape, non-JSON numbers, keys echoed back in any encoding. The test's ``answer``
function gets each request and returns (status, headers, body bytes). Every request is
kept (method, path, headers, parsed body) so a test can check what was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loopback import ServedInThread


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""          # the body's bytes as they arrived


Answer = tuple[int, dict[str, str], bytes]


def json_answer(payload: Any, status: int = 200, headers: dict[str, str] | None = None,
                ) -> Answer:
    return status, {"content-type": "application/json", **(headers or {})}, \
        json.dumps(payload).encode()


@dataclass
class StubServer(ServedInThread):
    answer: Callable[[Seen], Answer]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                declared = int(self.headers.get("content-length", 0) or 0)
                raw = self.rfile.read(declared)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                req = Seen(self.command, self.path, {k.lower(): v for k, v in
                                                     self.headers.items()}, body, raw)
                with stub._lock:
                    stub.seen.append(req)
                if len(raw) < declared:
                    # The client died between its headers and the end of its body (a test
                    # killed it): no whole request arrived, so there is nobody to answer.
                    self.close_connection = True
                    return
                status, headers, data = stub.answer(req)
                self.send_response(status)
                headers = {k.lower(): v for k, v in headers.items()}
                headers.setdefault("content-type", "application/json")
                headers.setdefault("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = _serve  # noqa: N815

        self._lock = threading.Lock()
        self._serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    def generations(self) -> list[Seen]:
        """The requests for completions (the preflight's 2-token probe excluded)."""
        return [s for s in self.seen if s.method == "POST" and isinstance(s.body, dict)
                and int(s.body.get("max_tokens", 0)) > 2]


def legacy_choice(tokens: list[str], lps: list[Any] | None = None, text: str | None = None,
                  finish: str = "length") -> dict[str, Any]:
    """An OpenAI legacy /completions choice for these tokens (top-2 per token, greedy)."""
    lps = lps if lps is not None else [-0.1 - 0.01 * i for i in range(len(tokens))]
    return {"index": 0, "text": "".join(tokens) if text is None else text,
            "finish_reason": finish,
            "logprobs": {"tokens": tokens, "token_logprobs": lps,
                         "top_logprobs": [{t: lp, " zz": -5.0}
                                          for t, lp in zip(tokens, lps, strict=False)],
                         "text_offset": list(range(len(tokens)))}}


def completion(choice: dict[str, Any], model: str = "stub-model", **extra: Any
               ) -> dict[str, Any]:
    return {"id": "cmpl-stub", "object": "text_completion", "model": model,
            "choices": [choice], "usage": {"prompt_tokens": 4, "completion_tokens": 2},
            **extra}


FILLER = [" the", " quiet", " river", " runs", " past", " old", " stone", " walls",
          " into", " the", " night", " sea"]


def models(model: str = "stub-model", *extra: str) -> Answer:
    return json_answer({"object": "list", "data": [{"id": m, "object": "model",
                                                    "owned_by": "stub"}
                                                   for m in (model, *extra)]})
