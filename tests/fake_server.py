"""A small OpenAI-compatible server on 127.0.0.1 for tests, in a thread of the test process.

It answers /v1/models and /v1/completions with deterministic text derived from the prompt,
in either logprob shape, and counts every request it receives by its canonical body, so a
test can prove what was (not) sent. Behaviours are switched per instance: missing logprobs,
latency, a required API key, and injected faults (``faults``: per prompt, what its 1st, 2nd,
... generation attempt gets instead of a normal answer; see :data:`FAULTS`). It is a stand-in
for the *network peer*, not for any code under test; the real-server integration test uses
llama.cpp's own server.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import ServedInThread

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
         "bright", "stars", "watch", "quietly", "from", "distant", "hills", "and", "rivers",
         "sing", "of", "ancient", "cities", "built", "by", "patient", "hands"]


# What a fault does to one attempt. Requests for at most 2 tokens (the preflight's probe)
# are never faulted, so a run always gets past its first cheap call.
FAULTS = {
    "429": "HTTP 429 with Retry-After: 1 (seconds)",
    "429ms": "HTTP 429 with retry-after-ms: 150",
    "429date": "HTTP 429 with Retry-After as an HTTP date one second ahead",
    "500": "HTTP 500",
    "503": "HTTP 503",
    "timeout": "no answer for `stall` seconds (past the client's timeout), then a late one",
    "truncated": "HTTP 200 whose JSON body is cut in half (a complete HTTP message)",
    "cut": "HTTP 200 whose connection closes half-way through the declared body",
    "nologprobs": "HTTP 200 without logprobs",
}


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when a client opens many at
    # once; the SYN retry a second later looks like a slow server to a 0.5 s timeout.
    request_queue_size = 128


def continuation(prompt: str, n: int) -> list[str]:
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return [" " + WORDS[(h >> (4 * i)) % len(WORDS)] for i in range(n)]


class FakeOpenAIServer(ServedInThread):
    def __init__(self, *, model: str = "fake-model", logprobs: bool = True,
                 shape: str = "legacy", delay: float = 0.0, api_key: str | None = None,
                 n_tokens: int = 12, echo_auth: bool = False,
                 faults: dict[str, list[str]] | None = None, stall: float = 1.0):
        self.model, self.with_logprobs, self.shape = model, logprobs, shape
        self.delay, self.api_key, self.n_tokens = delay, api_key, n_tokens
        self.echo_auth = echo_auth  # a careless server that reflects the key in its answers
        self.faults = faults or {}
        self.stall = stall
        self.attempts: Counter[str] = Counter()        # generation attempts per prompt
        self.spans: dict[str, list[float]] = {}        # prompt -> [first, last] arrival
        self.counts: Counter[str] = Counter()
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._serve(_Server(("127.0.0.1", 0), self._handler()))

    def fault_for(self, body: dict) -> str | None:
        """The fault this attempt gets (None: a normal answer), counting the attempt."""
        if int(body.get("max_tokens", 16)) <= 2:
            return None
        prompt = body.get("prompt", "")
        with self._lock:
            n = self.attempts[prompt]
            self.attempts[prompt] += 1
            now = time.monotonic()
            self.spans.setdefault(prompt, [now, now])[1] = now
        plan = self.faults.get(prompt, [])
        return plan[n] if n < len(plan) else None

    def completion(self, body: dict) -> dict:
        prompt = body.get("prompt", "")
        toks = continuation(prompt, min(self.n_tokens, int(body.get("max_tokens", 16))))
        text = "".join(toks)
        lps = [-0.05 - 0.1 * (i % 7) for i in range(len(toks))]
        choice: dict = {"index": 0, "text": text, "finish_reason": "length"}
        if self.with_logprobs and body.get("logprobs"):
            if self.shape == "legacy":
                offsets, pos = [], len(prompt)
                for t in toks:
                    offsets.append(pos)
                    pos += len(t)
                choice["logprobs"] = {
                    "tokens": toks, "token_logprobs": lps, "text_offset": offsets,
                    "top_logprobs": [{t: lp, " else": lp - 2.0}
                                     for t, lp in zip(toks, lps, strict=True)]}
            else:
                choice["logprobs"] = {"content": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode()),
                     "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())},
                                      {"token": " else", "logprob": lp - 2.0,
                                       "bytes": list(b" else")}]}
                    for t, lp in zip(toks, lps, strict=True)]}
        return {"id": "cmpl-fake", "object": "text_completion", "model": self.model,
                "choices": [choice],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(toks)}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None,
                      cut: str | None = None) -> None:
                data = json.dumps(payload).encode()
                length = len(data)
                if cut == "truncated":  # a whole message whose JSON stops half-way
                    data = data[: len(data) // 2]
                    length = len(data)
                elif cut == "cut":  # declares the whole body, sends half, hangs up
                    data = data[: len(data) // 2]
                    self.close_connection = True
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up on us (a timeout fault): expected
                    self.close_connection = True

            def _fault(self, fault: str, body: dict) -> bool:
                """Act out ``fault``; True when the attempt has been answered."""
                if fault == "429":
                    self._send(429, {"error": {"message": "rate limited"}}, {"retry-after": "1"})
                elif fault == "429ms":
                    self._send(429, {"error": {"message": "rate limited"}},
                               {"retry-after-ms": "150"})
                elif fault == "429date":
                    when = email.utils.formatdate(time.time() + 1, usegmt=True)
                    self._send(429, {"error": {"message": "rate limited"}},
                               {"retry-after": when})
                elif fault in ("500", "503"):
                    self._send(int(fault), {"error": {"message": f"injected {fault}"}})
                elif fault == "timeout":
                    time.sleep(server.stall)
                    return False
                elif fault in ("truncated", "cut"):
                    self._send(200, server.completion(body), cut=fault)
                elif fault == "nologprobs":
                    answer = server.completion(body)
                    answer["choices"][0].pop("logprobs", None)
                    self._send(200, answer)
                else:
                    raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
                return True

            def _authorised(self) -> bool:
                auth = self.headers.get("authorization")
                with server._lock:
                    server.auth_headers.append(auth)
                if server.api_key and auth != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided: "
                                                          f"{auth}"}})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "owned_by": "fake"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.counts[json.dumps(body, sort_keys=True)] += 1
                if not self._authorised():
                    return
                if server.delay:
                    time.sleep(server.delay)
                fault = server.fault_for(body) if self.path == "/v1/completions" else None
                if fault is not None and self._fault(fault, body):
                    return
                if self.path != "/v1/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif body.get("model") != server.model:
                    self._send(404, {"error": {"message": f"model {body.get('model')} "
                                                          "does not exist"}})
                else:
                    answer = server.completion(body)
                    if server.echo_auth:
                        answer["system_fingerprint"] = self.headers.get("authorization")
                    self._send(200, answer)

        return Handler
