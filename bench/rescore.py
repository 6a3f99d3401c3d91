#!/usr/bin/env python3
"""Rescoring throughput against plain forward passes of the same tokens, same process.

Prints, for the packaged reference on this machine's device:
- scorer:      ReferenceModel.score (length-bucketed batches, LM head only at scored positions)
- full_logits: the same batches through the whole model (LM head at every position), then
               log-softmax and gather: what a naive scorer does
- body_only:   the same batches through the decoder without any LM head: a floor no scorer
               can beat
as tokens/s, and ratios time(scorer)/time(full_logits) and time(scorer)/time(body_only).
Runs are interleaved (A B C A B C ...) and the median is kept: these machines are noisy.

    .venv/bin/python bench/rescore.py [--rows 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from blackbox_audit.prefills import builtin_documents
from blackbox_audit.reference import ReferenceModel, packaged_smollm2


def workload(tok, rows: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Rows shaped like an audit: a short context, then ~100 continuation tokens."""
    texts = [t for _, t in builtin_documents()]
    rng = random.Random(seed)
    seqs, starts = [], []
    for _ in range(rows):
        ids: list[int] = []
        target = rng.randint(60, 130)
        while len(ids) < target:
            ids += tok(" " + rng.choice(texts), add_special_tokens=False).input_ids
        ids = ids[:target]
        seqs.append(ids)
        starts.append(rng.randint(3, 28))
    return seqs, starts


def batches(model: ReferenceModel, seqs):
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out, cur = [], []
    for i in order:
        width = max([len(seqs[j]) for j in cur] + [len(seqs[i])])
        if cur and width * (len(cur) + 1) > model.token_budget:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def padded(seqs, batch):
    width = max(len(seqs[i]) for i in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(batch):
        ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
        mask[r, : len(seqs[i])] = 1
    return ids, mask


def full_logits(model: ReferenceModel, seqs, starts):
    with torch.inference_mode():
        for batch in batches(model, seqs):
            ids, mask = padded(seqs, batch)
            logits = model.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, -1)
            for r, i in enumerate(batch):
                t = torch.arange(starts[i], len(seqs[i]))
                logp[r, t - 1, ids[r, t]].tolist()


def body_only(model: ReferenceModel, seqs, starts):
    with torch.inference_mode():
        for batch in batches(model, seqs):
            ids, mask = padded(seqs, batch)
            model.body(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = ReferenceModel(packaged_smollm2())
    seqs, starts = workload(model.tokenizer, args.rows)
    n_tokens = sum(len(s) for s in seqs)
    n_scored = sum(len(s) - st for s, st in zip(seqs, starts, strict=True))
    variants = {
        "scorer": lambda: model.score(seqs, starts),
        "full_logits": lambda: full_logits(model, seqs, starts),
        "body_only": lambda: body_only(model, seqs, starts),
    }
    model.score(seqs[:4], starts[:4])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device={model.device} threads={torch.get_num_threads()} rows={args.rows} "
          f"tokens={n_tokens} scored={n_scored} budget={model.token_budget}")
    for k, v in med.items():
        print(f"{k:12s} {n_tokens / v:8.0f} tokens/s  ({v:.2f} s, median of {args.repeats})")
    print(f"ratio scorer/full_logits={med['scorer'] / med['full_logits']:.3f} "
          f"scorer/body_only={med['scorer'] / med['body_only']:.3f}")


if __name__ == "__main__":
    main()
