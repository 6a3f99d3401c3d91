#!/usr/bin/env python3
"""Generation client throughput: completions per second through our real client path.

A minimal OpenAI-compatible server (asyncio, in a separate process so its CPU is not ours)
answers every /v1/completions request after a fixed latency with a canned 100-token
completion carrying logprobs and top-5 logprobs. The client is the audit's own generation
stage, ``audit.generate`` (record/replay and retry transports, adaptive limiter, provider
parse, quality checks, fixture and completions.jsonl appends), held at a fixed window of
``--in-flight`` requests. With every request taking ``latency`` on the server, the ideal
rate is in_flight / latency (64 / 0.25 s = 256/s); the client is measured against it:

    ratio=<achieved / ideal>  cpu_ms_per_request=<client process CPU time / requests>

Two baselines run first in the same command against the same server, measured the same
way, and our CPU is printed as a multiple of each, so a busy machine shows in all three
rather than only in ours (``--no-baseline`` skips them):

- ``bare httpx``: one ``httpx.AsyncClient`` with a pool of ``--in-flight`` connections,
  ``client.post(json=...)`` and ``response.json()``, nothing else;
- ``httpx+shards``: the same over our ``ShardedTransport`` (the pool our client uses), parsed
  with msgspec as ours is: what httpx, httpcore, h11 and anyio cost on our path, the floor
  of everything we add on top (retries, record, provider, checks, rows).

achieved = rows / (last row - first row + latency), and the CPU per request is measured over
the same span, so the fixed costs of a run (GET /models, the preflight's probe and tokenizer
load) are left out of both; the CPU figure with them is printed alongside. Targets (issue
14): ratio >= 0.9 and at most 2 ms of client CPU per request; measured 2026-12-03 on a
quiet 2-core box with ``--repeat 3``: median ratio 0.951 at 1.18 ms (bare httpx 0.946 at
1.11 ms, httpx+shards 0.963 at 0.53 ms). ``--profile`` writes a cProfile of the client to
build/client.prof and prints its top functions (cProfile's per-call cost inflates small
comprehensions several-fold: a sampling profiler, py-spy ``--gil``, places time better).

    .venv/bin/python bench/client.py [--requests 2560] [--in-flight 64] [--latency 0.25]
                                     [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_TOKENS = 100
WORDS = [" the", " river", " ran", " north", " past", " old", " stone", " mills", " and",
         " quiet", " farms", ","]


def canned_completion(prompt: str, max_tokens: int) -> dict:
    """A legacy /v1/completions answer: greedy tokens, their logprobs and the top 5."""
    n = min(N_TOKENS, max_tokens)
    toks = [WORDS[i % len(WORDS)] for i in range(n)]
    lps = [-0.05 - 0.01 * (i % 13) for i in range(n)]
    offsets, pos = [], len(prompt)
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    tops = [{t: lp, " a": lp - 1.5, " of": lp - 2.0, " to": lp - 2.5, " in": lp - 3.0}
            for t, lp in zip(toks, lps, strict=True)]
    return {"id": "cmpl-bench", "object": "text_completion", "model": "bench-model",
            "choices": [{"index": 0, "text": "".join(toks), "finish_reason": "length",
                         "logprobs": {"tokens": toks, "token_logprobs": lps,
                                      "top_logprobs": tops, "text_offset": offsets}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}}


# -- the server (its own process) ----------------------------------------------------------
class _Http(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only: all our client sends."""

    latency = 0.25

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4: head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            method, path = head.split(" ", 2)[:2]
            self.loop.call_later(self.latency, self._answer, method, path, body)

    def _answer(self, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path.endswith("/models"):
            payload = {"object": "list", "data": [{"id": "bench-model", "object": "model",
                                                   "owned_by": "bench"}]}
        else:
            req = json.loads(body or b"{}")
            payload = canned_completion(req.get("prompt", ""), int(req.get("max_tokens", 16)))
        data = json.dumps(payload).encode()
        if self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(data)).encode() + b"\r\n\r\n" + data)


async def _serve(latency: float) -> None:
    _Http.latency = latency
    server = await asyncio.get_running_loop().create_server(_Http, "127.0.0.1", 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- the baseline: bare httpx (this process) -----------------------------------------------
def run_baseline(port: int, n: int, in_flight: int, latency: float, sharded: bool) -> dict:
    """The same requests through bare httpx (``sharded``: over our ShardedTransport, parsed
    with msgspec): the floor our client is measured against."""
    import httpx
    import msgspec

    from blackbox_audit.transport import ShardedTransport

    parse = msgspec.json.Decoder().decode if sharded else None

    async def go() -> tuple[list[float], list[float], float, float]:
        arrivals: list[float] = []
        cpu_at: list[float] = []
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        kw = {"transport": ShardedTransport(in_flight)} if sharded else {"limits": limits}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", **kw) as client:
            it = iter(range(n))

            async def worker() -> None:
                for i in it:
                    r = await client.post("/completions", json={
                        "model": "bench-model", "prompt": f"Document {i} begins",
                        "max_tokens": N_TOKENS, "logprobs": 5, "temperature": 0.0})
                    r.json() if parse is None else parse(r.content)
                    arrivals.append(time.perf_counter())
                    cpu_at.append(time.process_time())

            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return arrivals, cpu_at, time.process_time() - cpu0, time.perf_counter() - t0

    arrivals, cpu_at, cpu, wall = asyncio.run(go())
    span = arrivals[-1] - arrivals[0] + latency
    return {"rows": len(arrivals), "achieved": n / span, "ideal": in_flight / latency,
            "cpu_ms": 1000 * cpu / n, "wall": wall,
            "steady_cpu_ms": 1000 * (cpu_at[-1] - cpu_at[0]) / max(1, n - 1)}


# -- the client (this process) -------------------------------------------------------------
def run_client(port: int, n: int, in_flight: int, latency: float, profile: bool) -> dict:
    from blackbox_audit import plan
    from blackbox_audit.audit import send
    from blackbox_audit.records import GenerationRequest, Prefill
    from blackbox_audit.rundir import RunDir
    from blackbox_audit.transport import TransportStats

    with tempfile.TemporaryDirectory() as tmp:
        p = plan(out=tmp, base_url=f"http://127.0.0.1:{port}/v1", model="bench-model",
                 framings=["raw"], concurrency=in_flight, start_concurrency=in_flight,
                 max_tokens=N_TOKENS, top_logprobs=5, quiet=True)
        todo = [GenerationRequest(Prefill.make("bench", f"Document {i} begins"), "raw",
                                  N_TOKENS, 5, prompt=f"Document {i} begins") for i in range(n)]
        run = RunDir(tmp)
        arrivals: list[float] = []
        append = run.append_completion

        cpu_at: list[float] = []

        def timed_append(c) -> None:
            append(c)
            arrivals.append(time.perf_counter())
            cpu_at.append(time.process_time())

        run.append_completion = timed_append  # type: ignore[method-assign]
        stats = TransportStats()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        cpu0, t0 = time.process_time(), time.perf_counter()
        info = asyncio.run(send(p.endpoint, p.generation, todo, run, stats))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        if prof is not None:
            prof.disable()
            (ROOT / "build").mkdir(exist_ok=True)
            prof.dump_stats(ROOT / "build" / "client.prof")
        run.close()
        rows = [json.loads(x) for x in (Path(tmp) / "completions.jsonl").read_text().splitlines()]
    usable = sum(1 for r in rows if not r["error"] and not r["degraded"])
    span = arrivals[-1] - arrivals[0] + latency
    return {"rows": len(rows), "usable": usable, "achieved": n / span,
            "ideal": in_flight / latency, "cpu_ms": 1000 * cpu / n, "wall": wall,
            "steady_cpu_ms": 1000 * (cpu_at[-1] - cpu_at[0]) / max(1, n - 1),
            "retried": stats.retried, "window": info.get("concurrency")}


def _median_run(runs: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The run (ours with the baselines measured beside it) whose client CPU is the median."""
    ranked = sorted(runs, key=lambda run: run[0]["steady_cpu_ms"])
    return ranked[len(ranked) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2560)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--profile", action="store_true", help="cProfile the client")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run baselines and client this many times, interleaved, and report "
                         "the run with the median client CPU (a noisy box shows in the spread)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare httpx baseline")
    ap.add_argument("--default-gc", action="store_true",
                    help="leave the collector at CPython's pace (no process settings applied)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.latency))
        return 0
    if not args.default_gc:
        # As the CLI does: an entry point applies the plan's process settings (runtime.apply),
        # the collector's pace among them; the baselines below run under them too.
        from blackbox_audit import apply_process_settings
        from blackbox_audit.plan import process_settings

        apply_process_settings(process_settings(1))
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency",
                               str(args.latency)], stdout=subprocess.PIPE, text=True)
    runs: list[tuple[dict, dict]] = []
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        for i in range(args.repeat):
            bases = {} if args.no_baseline else {
                name: run_baseline(port, args.requests, args.in_flight, args.latency, sharded)
                for name, sharded in (("bare httpx", False), ("httpx+shards", True))}
            r = run_client(port, args.requests, args.in_flight, args.latency, args.profile)
            runs.append((r, bases))
            if args.repeat > 1:
                print(f"run {i + 1}/{args.repeat}: ratio={r['achieved'] / r['ideal']:.3f} "
                      f"cpu_ms_per_request={r['steady_cpu_ms']:.3f}" + "".join(
                          f"  {name}: ratio={b['achieved'] / b['ideal']:.3f} "
                          f"cpu_ms={b['steady_cpu_ms']:.3f}" for name, b in bases.items()),
                      flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    r, bases = _median_run(runs)
    ratio = r["achieved"] / r["ideal"]
    print(f"requests={args.requests} in_flight={args.in_flight} latency={args.latency}s "
          f"rows={r['rows']} usable={r['usable']} retried={r['retried']}")
    print(f"achieved={r['achieved']:.1f}/s ideal={r['ideal']:.1f}/s wall={r['wall']:.2f}s "
          f"cpus={os.cpu_count()}")
    print(f"ratio={ratio:.3f} cpu_ms_per_request={r['steady_cpu_ms']:.3f} "
          f"(steady state, first row to last; {r['cpu_ms']:.3f} with the run's fixed costs: "
          f"preflight, tokenizer load, GET /models)")
    for name, base in bases.items():
        print(f"baseline {name} (same server, same command): "
              f"ratio={base['achieved'] / base['ideal']:.3f} "
              f"cpu_ms_per_request={base['steady_cpu_ms']:.3f} "
              f"ours/baseline cpu={r['steady_cpu_ms'] / base['steady_cpu_ms']:.2f}x")
    if args.profile:
        import pstats

        pstats.Stats(str(ROOT / "build" / "client.prof")).sort_stats("tottime").print_stats(25)
    return 0 if r["rows"] == args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
