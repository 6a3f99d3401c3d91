"""A small OpenAI-compatible server on 127.0.0.1 for tests, in a thread of the test process.

It answers /v1/models and /v1/completions with deterministic text derived from the prompt,
in either logprob shape, and counts every request it receives by its canonical body, so a
test can prove what was (not) sent. Behaviours are switched per instance: missing logprobs,
latency, a required API key. It is a stand-in for the *network peer*, not for any code under
test; the real-server integration test uses llama.cpp's own server.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
         "bright", "stars", "watch", "quietly", "from", "distant", "hills", "and", "rivers",
         "sing", "of", "ancient", "cities", "built", "by", "patient", "hands"]


def continuation(prompt: str, n: int) -> list[str]:
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return [" " + WORDS[(h >> (4 * i)) % len(WORDS)] for i in range(n)]


class FakeOpenAIServer:
    def __init__(self, *, model: str = "fake-model", logprobs: bool = True,
                 shape: str = "legacy", delay: float = 0.0, api_key: str | None = None,
                 n_tokens: int = 12, echo_auth: bool = False):
        self.model, self.with_logprobs, self.shape = model, logprobs, shape
        self.delay, self.api_key, self.n_tokens = delay, api_key, n_tokens
        self.echo_auth = echo_auth  # a careless server that reflects the key in its answers
        self.counts: Counter[str] = Counter()
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

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

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
