"""The reference as a pool of replicas on a Ray cluster: one more engine of the Scorer contract.

When the reference outgrows one machine (a 70B model, or 60,000 rows on a deadline), the same
:class:`~blackbox_audit.reference.ReferenceModel` runs as Ray actors: each replica loads the
model once and scores whole batches of rows; the driver cuts the rows into length-sorted
batches and hands them to the replicas through Ray's own ``ActorPool`` (an idle replica takes
the next batch). Ray is the engine, we keep no scheduler of our own:

- a replica that dies (killed, out of memory, its node lost) is restarted by Ray
  (``max_restarts``) and the batch it held is resubmitted by Ray (``max_task_retries``); the
  driver sees one result per batch, so no row is lost and none is returned twice;
- results come back in input order, so ``score_run`` appends exactly what the local scorer
  would have, and alignment, scores and ranking never know which engine ran.

Each replica applies its own process settings (torch threads, library verbosity) with
:func:`blackbox_audit.runtime.apply`: it is an entry point of its own. The model must be
readable at the same path on every node (or be a hub id each node can download).

``ray`` is an optional dependency (the ``ray`` extra); importing this module does not import
it, and a missing ``ray`` is a :class:`~blackbox_audit.errors.ScorerError` that says how to
install it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from .errors import ScorerError
from .ray_address import check_reachable
from .reference import ReferenceSpec
from .scorer import Progress, check_spans

DEFAULT_BATCH_TOKENS = 4096   # padded tokens per batch: one replica's forward-pass budget


class Replica:
    """One scorer replica (a Ray actor): the local engine, loaded once, with its own threads.

    A plain class, wrapped by ``ray.remote`` when the pool starts, so this module imports
    without ``ray`` and the class is importable by name in every worker."""

    def __init__(self, spec: ReferenceSpec, device: str | None, threads: int,
                 token_budget: int):
        from .plan import ProcessSettings
        from .reference import ReferenceModel
        from .runtime import apply

        apply(ProcessSettings(torch_threads=threads))
        self.model = ReferenceModel(spec, device=device, token_budget=token_budget)

    def describe(self) -> dict[str, Any]:
        """What the driver needs to know before the first batch (and proof the model loaded)."""
        m = self.model
        return {"max_length": m.max_length, "device": m.device,
                "dtype": str(m.dtype).replace("torch.", ""), "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def score(self, batch: tuple[int, list[list[int]], list[int]]
              ) -> tuple[int, list[list[float]]]:
        index, sequences, starts = batch
        return index, self.model.score(sequences, starts)


def batches(sequences: Sequence[Sequence[int]], starts: Sequence[int], batch_tokens: int,
            batch_rows: int | None = None) -> list[list[int]]:
    """Row indices cut into batches by length (little padding): each batch's padded size
    (rows x its longest row) stays under ``batch_tokens`` and its row count under
    ``batch_rows``; a row longer than ``batch_tokens`` goes alone."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, len(sequences[i]))
        if cur and (w * (len(cur) + 1) > batch_tokens
                    or (batch_rows is not None and len(cur) >= batch_rows)):
            out.append(cur)
            cur, w = [], len(sequences[i])
        cur.append(i)
        width = w
    if cur:
        out.append(cur)
    return out


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ScorerError(
            "--scorer ray needs the ray package, which is not installed. Install it with "
            "pip install 'blackbox-audit[ray]' (or scripts/setup.sh, which installs the test "
            "extras), or score with the local scorer (--scorer local).") from e
    return ray


class RayScorer:
    """The Scorer contract over a pool of :class:`Replica` actors on a Ray cluster.

    ``address`` None: ``ray.init()`` (a running cluster named by RAY_ADDRESS, else a new
    local one sized for the replicas); else the address of an existing cluster
    (``HOST:6379`` from ``ray start --head``, or ``ray://HOST:10001``). ``replicas`` actors
    of ``threads_per_replica`` CPUs each (``num_gpus=1`` each when ``device`` is cuda).
    ``batch_rows`` caps the rows of one batch (more, smaller batches: finer load balance
    and less work redone when a replica dies)."""

    def __init__(self, spec: ReferenceSpec, *, address: str | None = None, replicas: int = 2,
                 threads_per_replica: int = 1, device: str | None = None,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_rows: int | None = None,
                 max_restarts: int = 4, load_timeout: float = 600.0):
        if replicas < 1 or threads_per_replica < 1:
            raise ScorerError("--replicas and --threads must be at least 1.")
        ray = _ray()
        self.spec = spec
        self.name = spec.name
        self.batch_tokens = batch_tokens
        self.batch_rows = batch_rows
        self.started_ray = False
        if not ray.is_initialized():
            check_reachable(address)   # seconds, where ray.init would wait a minute
            try:
                if address:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(num_cpus=replicas * threads_per_replica, include_dashboard=False,
                             logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise ScorerError(f"Cannot connect to {where} ({type(e).__name__}: "
                                  f"{str(e)[:300]}). Start one with `ray start --head` and pass "
                                  "its address with --ray-address HOST:6379.") from e
            self.started_ray = True
        gpu = bool(device and device.startswith("cuda"))
        actor = ray.remote(Replica).options(
            num_cpus=threads_per_replica, num_gpus=1 if gpu else 0,
            max_restarts=max_restarts, max_task_retries=max_restarts,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        self.replicas: list[Any] = []
        self.replicas = [actor.remote(spec, device, threads_per_replica, batch_tokens)
                         for _ in range(replicas)]
        try:
            infos = ray.get([r.describe.remote() for r in self.replicas], timeout=load_timeout)
        except Exception as e:  # noqa: BLE001 - Ray wraps the replica's error in its own types
            self.close()
            raise ScorerError(
                f"The scorer replicas could not load {spec.name} ({type(e).__name__}: "
                f"{str(e)[-400:]}). The model must be at {spec.path} on every node of the "
                "cluster, and the cluster must have "
                f"{replicas} x {threads_per_replica} CPUs free.") from e
        self.max_length = min(i["max_length"] for i in infos)
        self.device = infos[0]["device"]
        self.dtype = infos[0]["dtype"]

    def pids(self) -> list[int]:
        """The replicas' current process ids (after a restart, the new ones)."""
        ray = _ray()
        return ray.get([r.pid.remote() for r in self.replicas])

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
              progress: Progress | None = None) -> list[list[float]]:
        """The contract's ``score``: batches go to whichever replica is idle (Ray's
        ActorPool); results are put back in input order. A replica lost mid-batch is
        restarted and the batch run again by Ray; only if it keeps dying past
        ``max_restarts`` does this raise (ScorerError)."""
        from ray.util import ActorPool

        ray = _ray()
        check_spans(sequences, starts, self.max_length)
        groups = batches(sequences, starts, self.batch_tokens, self.batch_rows)
        work = [(b, [list(sequences[i]) for i in g], [int(starts[i]) for i in g])
                for b, g in enumerate(groups)]
        out: list[list[float] | None] = [None] * len(sequences)
        total = sum(len(s) for s in sequences)
        done = 0
        pool = ActorPool(self.replicas)
        try:
            for index, values in pool.map_unordered(lambda a, w: a.score.remote(w), work):
                for i, v in zip(groups[index], values, strict=True):
                    out[i] = v
                done += sum(len(sequences[i]) for i in groups[index])
                if progress:
                    progress(done, total)
        except ray.exceptions.RayError as e:
            raise ScorerError(f"The Ray scorer pool failed ({type(e).__name__}: "
                              f"{str(e)[-400:]}); rows scored so far are on disk, rerun "
                              "the same command to score the rest.") from e
        return [o if o is not None else [] for o in out]

    def close(self) -> None:
        """Stop the replicas (and the local cluster, when this scorer started it)."""
        ray = _ray()
        for r in self.replicas:
            with contextlib.suppress(Exception):   # already gone is fine
                ray.kill(r, no_restart=True)
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RayScorer", "Replica", "batches"]
