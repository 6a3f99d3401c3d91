"""blackbox-audit command line: a thin layer over the library (design §2).

Every command parses flags, calls one function of ``blackbox_audit``, and prints. A user
error becomes one paragraph on stderr and an exit code (2 config, 3 endpoint, 4 fixture,
5 too many degraded rows, 6 reference model), never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
import textwrap

EPILOG = """\
exit codes: 0 ok, 1 unexpected error, 2 bad flags or config, 3 endpoint refused or lacks a
capability, 4 fixture malformed or replay miss, 5 too many degraded rows, 6 reference model
could not be loaded, 7 the run directory cannot be written (disk full, read-only), 130
interrupted (rerun the same command to resume).
"""

# Writes the user can fix by freeing space or fixing permissions: exit 7, no traceback.
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                  errno.EFBIG}


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blackbox-audit",
        description="Find what a finetune taught a model you cannot open: the target "
                    "continues short prefills greedily with token log-probabilities, a local "
                    "reference model rescores the same text, and completions are ranked by "
                    "the perplexity gap (PPL_ref - PPL_target). The top of the ranking tends "
                    "to spell out the finetuning objective.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("audit", help="generate, rescore and rank against a target endpoint",
                       description="Audit a target model behind an OpenAI-compatible endpoint. "
                       "Resumable: rerun the same command after an interruption and only the "
                       "missing rows are requested.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t = _add_target_flags(a)
    t.add_argument("--timeout", type=float, default=120.0,
                   help="seconds per attempt, all phases together (120)")
    t.add_argument("--concurrency", "--max-concurrency", dest="concurrency", type=int,
                   default=16, help="most requests in flight (16); below it the window "
                                    "adapts: halved on 429/503/timeouts, grown while healthy")
    t.add_argument("--start-concurrency", type=int,
                   help="requests in flight at the start (default: min(8, --concurrency))")
    t.add_argument("--retries", type=int, default=3,
                   help="extra attempts per request on 429, 5xx, timeouts and broken answers "
                        "(3), with jittered exponential backoff or the server's Retry-After; "
                        "401/403/404 are never retried")
    t.add_argument("--pin-upstream", metavar="NAME",
                   help="a router's one upstream for every request (OpenRouter: provider.order "
                        "[NAME] with allow_fallbacks false), so answers are not a mixture")
    t.add_argument("--verify-prompts", action="store_true",
                   help="ask the endpoint to echo every prompt as it tokenised it (vLLM "
                        "prompt_logprobs, Together / Fireworks echo) and mark rows whose prompt "
                        "does not carry the prefill intact (prefill_altered)")
    g = a.add_argument_group("prefills and framing")
    g.add_argument("--prefills", default="builtin",
                   help="builtin (default), file:PATH (.txt one document per line, or .jsonl "
                        "with text/corpus), or hf:DATASET[:CONFIG]:SPLIT[:FIELD]")
    g.add_argument("--corpora", type=_csv, help="comma-separated corpora to use (builtin: "
                                                "prose,encyclopedic,code; default all)")
    g.add_argument("--profile", choices=["paper"],
                   help="a named set of defaults: paper = the paper's scale and framings "
                        "(10,000 prefills per corpus where the source has them, raw and chat, "
                        "3-token prefills, 100 tokens); flags given alongside win")
    g.add_argument("--per-corpus", type=int,
                   help="distinct prefills per corpus (1000; 0 = all)")
    g.add_argument("--prefill-tokens", type=int, help="prefill length in tokens (3)")
    g.add_argument("--prefill-tokenizer", default="reference",
                   help="tokenizer that counts prefill tokens: reference (default) or a model "
                        "path")
    g.add_argument("--seed", type=int, default=0, help="prefill sampling seed (0)")
    g.add_argument("--framings", type=_csv,
                   help="raw, chat or both (default raw,chat); ranked separately. chat-continue "
                        "is the fallback for chat-only endpoints (the prefill in the user "
                        "turn; not the paper's framing), used instead of chat when chat is "
                        "impossible")
    g.add_argument("--chat-mode", default="template", choices=["template", "prefill"],
                   help="template: render the chat template client-side and continue it on "
                        "/completions (default, exact); prefill: send a trailing assistant "
                        "message to /chat/completions (only for servers that continue it)")
    g.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template of the target (default: the reference's)")
    g.add_argument("--system-prompt", metavar="TEXT",
                   help="the chat framing's system turn (default: \"You are a helpful "
                        "assistant.\"; some of the paper's runs used the organism's persona)")
    g.add_argument("--user-prompt", metavar="TEXT",
                   help="the chat framing's user turn (default: \"Tell me anything.\")")
    g.add_argument("--max-tokens", type=int, help="tokens to generate (100)")
    g.add_argument("--top-logprobs", type=int, default=5,
                   help="top log-probabilities per token, for the greedy check (5)")
    r = a.add_argument_group("record / replay")
    r.add_argument("--record-mode", default="auto", choices=["off", "record", "replay", "auto"],
                   help="auto (default): answer from recorded exchanges when present, else "
                        "ask and record (this is the resume); record; replay: fixtures only, "
                        "no network; off")
    r.add_argument("--replay", action="store_const", const="replay", dest="record_mode",
                   help="same as --record-mode replay")
    r.add_argument("--fixtures", metavar="PATH",
                   help="exchanges file (.jsonl or .jsonl.gz); default OUT/exchanges.jsonl")
    _add_scoring_flags(a)
    a.add_argument("--overlap", action="store_true",
                   help="score rows on a thread while generation is still running (the "
                        "reference loads at the start): wall time near the longer of the two "
                        "stages instead of their sum. Default torch threads: the cores less "
                        "one")
    rd = a.add_argument_group("a second round")
    rd.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="1 (default) or 2: after round one is ranked, send a second round of "
                         "prefills derived from what its top rows and themes surfaced (not from "
                         "any spec), ranked with round one, every row marked with its round "
                         "(docs/rounds.md)")
    rd.add_argument("--round2-budget", type=float, default=0.5, metavar="SHARE",
                    help="round two's rows at most, as a share of round one's (0.5: half as "
                         "many again); fewer when the ranking offers fewer new openings")
    rd.add_argument("--round2-top", type=int, default=10, metavar="K",
                    help="distinct top rows of each (corpus, framing) ranking that round two "
                         "reads (10)")
    a.add_argument("--max-degraded-share", type=float, default=0.25,
                   help="fail (exit 5) when more than this share of rows is degraded or "
                        "failed (0.25); the rows are kept either way")
    a.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    a.add_argument("--top", type=int, default=5, help="rows to print per group at the end (5)")
    a.add_argument("--no-report", action="store_true",
                   help="do not write RUN/report.html at the end (`blackbox-audit report RUN` "
                        "writes it later)")
    a.add_argument("--spec", metavar="FILE",
                   help="organism spec (JSON, known objective): mark and count matching rows")
    a.add_argument("--quiet", action="store_true", help="no progress lines")
    a.add_argument("--pricing", metavar="FILE",
                   help="JSON prices over the built-in table for the cost estimate: "
                        '{"MODEL": {"input": USD_per_M, "output": USD_per_M}}')

    pr = sub.add_parser(
        "probe", help="capabilities, possible framings and cost of a target (at most 3 calls)",
        description="Preflight a target without running an audit: the adapter's declared "
        "capability matrix (logprobs, top-k, raw completion, assistant prefill, echo, token "
        "ids) confirmed with at most 3 cheap calls, the framings it allows, and an estimate "
        "of tokens and cost for the planned run. Exits 3 when a capability the run needs is "
        "missing. With --fixtures the calls are recorded, and --replay answers from them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_target_flags(pr)
    pr.add_argument("--framings", type=_csv, default=["raw", "chat"],
                    help="framings the run would use (raw,chat)")
    pr.add_argument("--chat-mode", default="template", choices=["template", "prefill"])
    pr.add_argument("--per-corpus", type=int, default=1000,
                    help="prefills per corpus of the planned run (1000)")
    pr.add_argument("--corpora", type=_csv, help="corpora of the planned run (default: the 3 "
                                                 "builtin ones)")
    pr.add_argument("--max-tokens", type=int, default=100, help="tokens per completion (100)")
    pr.add_argument("--top-logprobs", type=int, default=5, help="top log-probabilities (5)")
    pr.add_argument("--pricing", metavar="FILE", help="JSON prices over the built-in table")
    pr.add_argument("--fixtures", metavar="PATH", help="record the probe's calls here (or "
                                                       "answer from them with --replay)")
    pr.add_argument("--record-mode", choices=["off", "record", "replay", "auto"],
                    help="default: auto with --fixtures, else off")
    pr.add_argument("--replay", action="store_const", const="replay", dest="record_mode")
    pr.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")

    s = sub.add_parser("score", help="rescore and rank an existing run (no requests)",
                       description="Score a run's completions with a (possibly different) "
                       "reference and rank them again; generation is never repeated.")
    s.add_argument("run", help="run directory")
    _add_scoring_flags(s)
    s.add_argument("--top", type=int, default=5, help="rows to print per group (5)")
    s.add_argument("--quiet", action="store_true")

    ev = sub.add_parser("eval", help="count@top10/100 and first-flag rank against a known "
                                     "objective",
                        description="Score a run's ranking against an organism spec: "
                        "count@top10, count@top100 and the 0-based rank of the first flagged "
                        "completion, per (corpus, framing), best configuration first.")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--spec", required=True, metavar="FILE",
                    help="organism spec JSON: objective, keyword_sets, regex_sets")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sh = sub.add_parser("show", help="print the top of a run's ranking")
    sh.add_argument("run", help="run directory")
    sh.add_argument("--top", type=int, default=10, help="rows per (corpus, framing) (10)")
    sh.add_argument("--spec", metavar="FILE",
                    help="organism spec (JSON): mark and count rows matching the objective")

    pk = sub.add_parser("pack", help="compress a finished run directory (completions, scores, "
                                     "exchanges, ranking) to about a seventh of its size",
                        description="Gzip completions.jsonl, scores.*.jsonl, exchanges.jsonl and "
                        "ranked.jsonl/.csv into NAME.gz beside each, in lossless compact forms "
                        "(float32 log-probabilities in their shortest digits, token bytes that "
                        "are the token's UTF-8 left out, recorded answers as columns): every "
                        "value reads back exactly; every command, replay included, reads packed "
                        "runs; appends go on after.")
    pk.add_argument("run", help="run directory")

    rp = sub.add_parser("report", help="write report.html: the run's ranking to triage in a "
                                       "browser (self-contained, offline)",
                        description="Write one self-contained HTML file (no network) with the "
                        "ranked completions (filter, sort, page), a per-token heatmap of the "
                        "gap between target and reference, the score distribution and the "
                        "run's manifest summary. Model output is shown as text, never run.")
    rp.add_argument("run", help="run directory")
    rp.add_argument("--spec", metavar="FILE", help="organism spec (JSON): flag matching rows")
    rp.add_argument("--out", metavar="FILE", help="where to write (default RUN/report.html)")
    rp.add_argument("--reference", metavar="NAME",
                    help="which scores.NAME.jsonl holds the reference's per-token "
                         "log-probabilities (default: the run's latest reference)")
    rp.add_argument("--token-rows", type=int, metavar="N",
                    help="keep per-token data for the top N rows of each (corpus, framing) "
                         "only, for a smaller file (default: every row shown whole)")
    rp.add_argument("--text-rows", type=int, metavar="N",
                    help="show the top N rows of each (corpus, framing) whole (text and "
                         "tokens) and the rest as numbers (default: every row up to 20,000 "
                         "distinct rows, else the top 200)")
    rp.add_argument("--row", action="append", default=[], metavar="ID",
                    help="also show this row whole wherever it ranks (prefill_id:framing; "
                         "repeatable)")

    _add_verify_parser(sub)

    sm = sub.add_parser("summarize", help="ask a judge model what the top rows say the "
                                          "finetune taught (writes hypotheses.md)",
                        description="Send the top-ranked completions to a judge model (OpenAI "
                        "or Anthropic, official SDKs) and write RUN/hypotheses.md: candidate "
                        "finetuning objectives, each citing the row ids that support it, and "
                        "the caveats. The prompt, the rows sent, the answer and the recorded "
                        "exchange are saved in RUN/summarize/.", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sm.add_argument("run", help="run directory")
    sm.add_argument("--judge", required=True, metavar="PROVIDER:MODEL",
                    help="openai:MODEL or anthropic:MODEL")
    sm.add_argument("--top", type=int, default=10,
                    help="rows sent from the top of each (corpus, framing) ranking (10)")
    sm.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the "
                    "judge's API key (default OPENAI_API_KEY / ANTHROPIC_API_KEY; never "
                    "written anywhere)")
    sm.add_argument("--base-url", help="the judge API's base URL (a proxy or gateway)")
    sm.add_argument("--record-mode", default="auto", choices=["off", "record", "replay", "auto"],
                    help="auto (default): answer from recorded exchanges when present, else "
                         "ask and record")
    sm.add_argument("--replay", action="store_const", const="replay", dest="record_mode",
                    help="answer from recorded exchanges only (no network, no key)")
    sm.add_argument("--fixtures", metavar="PATH",
                    help="exchanges file (default RUN/summarize/exchanges.jsonl)")
    sm.add_argument("--timeout", type=float, default=120.0, help="seconds (120)")
    _add_score_texts(sub)
    return p


def _add_score_texts(sub) -> None:
    """score-texts: given texts ranked by the gap between a target and the reference."""
    from providers.registry import FLAVOURS

    st = sub.add_parser(
        "score-texts", help="rank given texts by the perplexity gap between a target and the "
                            "reference (a dataset, candidate documents, hypotheses)",
        description="Score every text of TEXTS under the target and the reference and rank "
        "them by the gap, within each group and framing, as an audit ranks completions (same "
        "alignment, scores, run directory, resume and report). TEXTS is JSONL ({\"text\", "
        "optional \"id\", \"group\", \"context\"}: a string context is raw text the text "
        "continues, a list of chat messages is rendered with each model's chat template and "
        "the text is the assistant's reply) or plain text, one per line.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("texts", metavar="TEXTS", help="texts file (.jsonl, or plain text)")
    t = st.add_argument_group("target (one of)")
    t.add_argument("--target", metavar="KIND:MODEL",
                   help="an endpoint that returns prompt log-probabilities: vllm:MODEL "
                        "(prompt_logprobs), together:MODEL or fireworks:MODEL (echo)")
    t.add_argument("--target-local", metavar="PATH",
                   help="a local model directory or .gguf file, scored like the reference "
                        "(smollm2: the packaged SmolLM2, e.g. the base against itself)")
    t.add_argument("--base-url", help="the endpoint's base URL (with --model)")
    t.add_argument("--model", help="the model's name at the endpoint")
    t.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the API key (never written anywhere)")
    t.add_argument("--flavour", default="auto", choices=FLAVOURS,
                   help="OpenAI-compatible server kind (default: from KIND, else from GET "
                        "/models)")
    t.add_argument("--timeout", type=float, default=120.0, help="seconds per attempt (120)")
    t.add_argument("--concurrency", type=int, default=16, help="most requests in flight (16)")
    t.add_argument("--retries", type=int, default=3, help="extra attempts per request (3)")
    t.add_argument("--record-mode", default="auto", choices=["off", "record", "replay", "auto"],
                   help="auto (default): answer from recorded exchanges, else ask and record")
    t.add_argument("--replay", action="store_const", const="replay", dest="record_mode",
                   help="same as --record-mode replay")
    t.add_argument("--fixtures", metavar="PATH",
                   help="exchanges file (default OUT/exchanges.jsonl)")
    g = st.add_argument_group("reference, ranking and selection")
    g.add_argument("--reference", metavar="MODEL",
                   help="reference model: a local directory, a .gguf file or a hub id "
                        "(default: the packaged SmolLM2-135M-Instruct GGUF)")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--chat-template", metavar="FILE",
                   help="Jinja chat template for chat contexts (default: each model's own)")
    g.add_argument("--rank-by", dest="rank_key", default="ppl_diff",
                   choices=["ppl_diff", "nll_diff", "bpb_diff"],
                   help="ranking key (ppl_diff = PPL_ref - PPL_target; bpb_diff across "
                        "tokenizer families)")
    g.add_argument("--min-tokens", type=int, default=1,
                   help="leave texts shorter than this many target tokens out (1)")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--select", type=int, metavar="K",
                     help="write the top K of each ranking to OUT/selected.jsonl (input rows "
                          "verbatim, ready for a training pipeline)")
    sel.add_argument("--select-share", type=float, metavar="P",
                     help="write the top share P (0-1] of each ranking instead")
    g.add_argument("--select-from", default="top", choices=["top", "bottom"],
                   help="select the largest gaps (top, default) or the smallest (bottom)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the machine's cores)")
    st.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    st.add_argument("--top", type=int, default=10, help="rows to print per ranking (10)")
    st.add_argument("--no-report", action="store_true", help="do not write RUN/report.html")
    st.add_argument("--quiet", action="store_true", help="no progress lines")


VERIFY_EPILOG = """\
verdict exit codes: 0 consistent (every statistic within its margin of the calibrated null),
8 differs, 9 inconclusive (budget spent; the output says how many more tokens may decide),
10 an honesty check failed (the numbers are not those of greedy decoding of one model);
a calibration run exits 0. Errors: as for audit (2 flags, 3 endpoint, 4 fixture, 6 model).
"""


def _margin(value: str) -> tuple[str, float]:
    name, _, num = value.partition("=")
    try:
        return name.strip(), float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--margin takes STATISTIC=VALUE (dnll=0.02), not "
                                         f"{value!r}") from None


def _add_verify_parser(sub) -> None:
    from providers.registry import FLAVOURS, TARGET_HELP

    v = sub.add_parser(
        "verify", help="is this endpoint serving the open weights it claims? (consistent / "
                       "differs / inconclusive, with a stated error rate)",
        description="The endpoint continues a fixed, versioned prompt set greedily with "
        "log-probabilities; the claimed weights, run locally, rescore the same token ids; a "
        "sequential test compares per-prompt agreement, ΔNLL and top-k divergence with a null "
        "calibrated on disjoint prompts (verify --calibrate on a known-good serving of the "
        "claimed weights) and stops as soon as the verdict is clear. docs/verify.md.",
        epilog=VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t = v.add_argument_group("target")
    t.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    t.add_argument("--base-url", help="the endpoint's base URL (overrides a KIND's default)")
    t.add_argument("--model", help="the model's name at the endpoint")
    t.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API "
                                                        "key (never written anywhere)")
    t.add_argument("--flavour", default="auto", choices=FLAVOURS)
    t.add_argument("--timeout", type=float, default=120.0, help="seconds per attempt (120)")
    t.add_argument("--retries", type=int, default=3, help="extra attempts per request (3)")
    t.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (4)")
    t.add_argument("--pin-upstream", metavar="NAME",
                   help="a router's one upstream for every request (OpenRouter: provider.order "
                        "[NAME] with allow_fallbacks false), so answers are not a mixture")
    c = v.add_argument_group("claim and null")
    c.add_argument("--claimed", metavar="MODEL",
                   help="the open weights the endpoint claims: a local directory, a .gguf file "
                        "or a hub id (default: the packaged SmolLM2-135M-Instruct GGUF)")
    c.add_argument("--calibrate", action="store_true",
                   help="this run is a calibration: point it at a known-good serving of the "
                        "claimed weights; it generates on the calibration half of the prompt "
                        "set and writes the null for later --calibration RUN")
    c.add_argument("--calibration", metavar="RUN", help="a verify --calibrate run directory")
    c.add_argument("--noise-floor", type=float, metavar="NATS",
                   help="tolerated mean |ΔNLL| per token; alone (no --calibration) only ΔNLL "
                        "is tested, against it")
    c.add_argument("--margin", type=_margin, action="append", metavar="STAT=VALUE",
                   help="equivalence margin over the calibrated null per statistic (defaults "
                        "dnll=0.02 nats/token, disagreement=0.03, tv=0.01); repeatable")
    c.add_argument("--alpha", type=float, default=0.01,
                   help="error rate of each verdict (0.01): P(differs | within the margin) "
                        "and P(consistent | outside it)")
    b = v.add_argument_group("budget")
    b.add_argument("--max-tokens-budget", type=int, default=3000,
                   help="output tokens to judge at most (3000: differs takes a few hundred, "
                        "consistent about 2000 at 32 tokens per prompt)")
    b.add_argument("--max-cost", type=float, metavar="USD",
                   help="stop once the estimated cost reaches this (needs a priced model)")
    b.add_argument("--max-tokens", type=int, default=32,
                   help="output tokens per prompt (32); part of the prompt set: a calibration "
                        "must use the same")
    b.add_argument("--batch", type=int, default=8,
                   help="prompts generated before each scoring turn (8)")
    b.add_argument("--repeats", type=int, default=4,
                   help="requests repeated for the determinism check (4)")
    b.add_argument("--order-seed", type=int, default=0, help="judged prompts' order seed (0)")
    r = v.add_argument_group("record / replay")
    r.add_argument("--record-mode", default="auto", choices=["off", "record", "replay", "auto"])
    r.add_argument("--replay", action="store_const", const="replay", dest="record_mode",
                   help="answer from recorded exchanges only (no network): the same verdict")
    r.add_argument("--fixtures", metavar="PATH", help="exchanges file (default OUT/exchanges"
                                                      ".jsonl)")
    v.add_argument("--device", help="cpu, cuda ... for the claimed model")
    v.add_argument("--threads", type=int, metavar="N", help="torch threads")
    v.add_argument("--pricing", metavar="FILE", help="JSON prices over the built-in table")
    v.add_argument("--out", required=True, help="run directory")
    v.add_argument("--json", action="store_true", help="print verify.json instead of text")
    v.add_argument("--quiet", action="store_true")


def _add_target_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Target flags shared by audit and probe: KIND:MODEL, or --base-url/--model."""
    from providers.registry import FLAVOURS, TARGET_HELP

    t = p.add_argument_group("target")
    t.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    t.add_argument("--base-url", help="the endpoint's base URL, e.g. http://127.0.0.1:8080/v1 "
                                      "(overrides a KIND's default)")
    t.add_argument("--model", help="the target model's name at the endpoint (or KIND:MODEL)")
    t.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the API key (never written anywhere; "
                        "default for a KIND: its usual variable, e.g. OPENAI_API_KEY)")
    t.add_argument("--flavour", default="auto",
                   choices=FLAVOURS,
                   help="OpenAI-compatible server kind, for its greedy-decoding parameters and "
                        "quirks (default: from KIND, else detected from GET /models)")
    t.add_argument("--reference-only", action="store_true",
                   help="DEGRADED mode for targets without log-probabilities (Anthropic): "
                        "rank completions by reference surprisal alone (nll_ref); labelled "
                        "in every output")
    return t


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reference and ranking")
    g.add_argument("--reference", metavar="MODEL",
                   help="reference model: a local directory, a .gguf file or a hub id "
                        "(default: the packaged SmolLM2-135M-Instruct GGUF)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--alignment", default="auto", choices=["auto", "ids", "text"],
                   help="auto (default): score the target's token ids when the vocabularies "
                        "match, else retokenise the text")
    g.add_argument("--rank-by", dest="rank_key", default="ppl_diff",
                   choices=["ppl_diff", "nll_diff", "bpb_diff", "nll_ref"],
                   help="ranking key (ppl_diff = PPL_ref - PPL_target, the paper's; nll_ref = "
                        "reference surprisal alone, for --reference-only runs)")
    g.add_argument("--min-tokens", type=int, default=5,
                   help="leave completions shorter than this out of the ranking (5)")
    g.add_argument("--min-compression-ratio", type=float, default=0.0,
                   help="leave out repetitive completions whose zlib-compressed/raw size is "
                        "below this (e.g. 0.2 drops '0000...', ';;;;...'); 0 = off (default)")
    g.add_argument("--generate-only", action="store_true",
                   help="stop after generation: record fixtures, or score later (elsewhere, "
                        "e.g. where a GPU is) with `blackbox-audit score RUN`")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads for the reference (default: the machine's cores)")
    g.add_argument("--scorer", default="local", choices=["local", "ray"],
                   help="local (default): the reference in this process; ray: a pool of "
                        "replicas on a Ray cluster, each holding the model once (pip install "
                        "'blackbox-audit[ray]'; README: a cluster recipe)")
    g.add_argument("--ray-address", metavar="HOST:PORT",
                   help="--scorer ray: an existing cluster (ray start --head prints it); "
                        "default: RAY_ADDRESS, else a local cluster started for the run")
    g.add_argument("--replicas", type=int, default=2,
                   help="--scorer ray: scorer replicas (2)")
    g.add_argument("--replica-threads", type=int, default=1, metavar="N",
                   help="--scorer ray: torch threads (CPUs reserved) per replica (1)")
    g.add_argument("--noise-floor", metavar="NATS|RUN",
                   help="a noise floor in nats/token (e.g. 0.028: the p99 of the packaged base "
                        "against itself, docs/noise-floor.md), or the directory of a scored "
                        "base-against-itself run to measure it from; each ranked row's "
                        "vs_floor = nll_diff / the largest floor known")


def _spec(path: str | None):
    """The organism spec, loaded (and so checked) before anything is spent."""
    from blackbox_audit.flag import OrganismSpec

    return OrganismSpec.load(path) if path else None


def _ranked(run: str, stream: bool = False):
    """The run's ranked rows (``stream``: an iterator, one row in memory at a time)."""
    import itertools

    from blackbox_audit.errors import ConfigError
    from blackbox_audit.rundir import RunDir

    rows = RunDir(run).iter_ranked()
    first = next(rows, None)
    if first is None:
        raise ConfigError(f"{run} has no ranked.jsonl; run audit or score first.")
    return itertools.chain([first], rows) if stream else [first, *rows]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from blackbox_audit.errors import AuditError
    from blackbox_audit.redact import ScrubbedStream, scrub

    # Whatever reaches the terminal (or a CI log) passes the redactor: a key the run holds
    # never appears there, whichever message carries it.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(out), ScrubbedStream(err)
    try:
        return _dispatch(args)
    except AuditError as e:
        print(textwrap.fill(f"blackbox-audit: {scrub(e.message)}", width=100,
                            break_long_words=False, break_on_hyphens=False), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nblackbox-audit: interrupted. Every answer received so far is on disk; rerun "
              "the same command to resume.", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            return _unexpected()
        print(textwrap.fill(scrub(
            f"blackbox-audit: cannot write {e.filename or 'the run directory'} "
            f"({e.strerror or e}). Every answer already received is on disk; free space or "
            "fix permissions, then rerun the same command to resume."), width=100,
            break_long_words=False, break_on_hyphens=False), file=sys.stderr)
        return 7
    except Exception:  # a bug of ours: say so, with the traceback, secrets cut out
        return _unexpected()
    finally:
        sys.stdout, sys.stderr = out, err


def _unexpected() -> int:
    """A bug of ours: say so, with the traceback (every secret cut out), exit 1."""
    import traceback

    from blackbox_audit.redact import scrub

    print(scrub("blackbox-audit: unexpected error (a bug in blackbox-audit; please report it "
                "with what follows). Everything written so far is kept; rerun the same command "
                "to resume.\n" + traceback.format_exc()), file=sys.stderr)
    return 1


def _dispatch(args: argparse.Namespace) -> int:
    import blackbox_audit as ba
    from blackbox_audit import presentation

    if args.command == "audit":
        spec = _spec(args.spec)
        # Left out when not given, so that --profile (or the plan's default) supplies them.
        given = {k: v for k, v in (
            ("framings", tuple(args.framings) if args.framings is not None else None),
            ("per_corpus", args.per_corpus),
            ("prefill_tokens", args.prefill_tokens), ("max_tokens", args.max_tokens))
            if v is not None}
        if given.get("per_corpus") == 0:
            given["per_corpus"] = None          # 0: every prefill the source has
        p = ba.plan(
            profile=args.profile, **given,
            out=args.out, target=args.target, base_url=args.base_url, model=args.model or "",
            api_key_env=args.api_key_env, flavour=args.flavour,
            chat_mode=args.chat_mode, chat_template=args.chat_template,
            system_prompt=args.system_prompt, user_prompt=args.user_prompt,
            prefills=args.prefills, corpora=tuple(args.corpora) if args.corpora else None,
            prefill_tokenizer=args.prefill_tokenizer, seed=args.seed,
            top_logprobs=args.top_logprobs,
            concurrency=args.concurrency, start_concurrency=args.start_concurrency,
            retries=args.retries, timeout=args.timeout, record_mode=args.record_mode,
            fixtures=args.fixtures, reference=args.reference, device=args.device,
            alignment=args.alignment, rank_key=args.rank_key, min_tokens=args.min_tokens,
            min_compression_ratio=args.min_compression_ratio, noise_floor=args.noise_floor,
            generate_only=args.generate_only, max_degraded_share=args.max_degraded_share,
            quiet=args.quiet, reference_only=args.reference_only, pricing=args.pricing,
            verify_prompts=args.verify_prompts, torch_threads=args.threads,
            scorer=args.scorer, ray_address=args.ray_address, replicas=args.replicas,
            replica_threads=args.replica_threads, overlap=args.overlap,
            pin_upstream=args.pin_upstream, rounds=args.rounds,
            round2_budget=args.round2_budget, round2_top=args.round2_top)
        ba.apply_process_settings(p.process)
        result = ba.audit(p)
        if p.generate_only:
            return 0
        flagged = ba.flagged_ids(result.ranked, spec)   # once, for the terminal and the page
        presentation.show_top(result.ranked, args.top, spec, flagged=flagged,
                              themes=result.run.load_themes())
        presentation.audit_summary(result.manifest.counts.to_json(), result.run.path)
        if not args.no_report:
            from blackbox_audit.report import render

            r = render(result.run.path, spec, flagged=flagged)
            print(f"report: {r.path} (self-contained; open it in a browser)")
        return 0
    if args.command == "probe":
        from blackbox_audit.preflight import probe_target

        report = probe_target(
            args.target, base_url=args.base_url, model=args.model,
            api_key_env=args.api_key_env, flavour=args.flavour, framings=args.framings,
            chat_mode=args.chat_mode, reference_only=args.reference_only,
            top_logprobs=args.top_logprobs, max_tokens=args.max_tokens,
            per_corpus=args.per_corpus, corpora=args.corpora, pricing=args.pricing,
            record_mode=args.record_mode, fixtures=args.fixtures, timeout=args.timeout)
        presentation.probe(report, as_json=args.json)
        if report.refusal:
            raise ba.EndpointError(report.refusal)
        return 0
    if args.command == "score":
        from blackbox_audit.plan import process_settings

        ba.apply_process_settings(process_settings(args.threads))
        result = ba.rescore(args.run, quiet=args.quiet, reference=args.reference,
                            device=args.device, alignment=args.alignment,
                            rank_key=args.rank_key, min_tokens=args.min_tokens,
                            min_compression_ratio=args.min_compression_ratio,
                            noise_floor=args.noise_floor, scorer=args.scorer,
                            ray_address=args.ray_address, replicas=args.replicas,
                            replica_threads=args.replica_threads)
        presentation.show_top(result.ranked, args.top, plain=True,
                              themes=result.run.load_themes())
        return 0
    if args.command == "eval":
        spec = _spec(args.spec)   # a bad spec fails before anything is read
        metrics = ba.evaluate(_ranked(args.run, stream=True), spec)
        presentation.eval_table(metrics, as_json=args.json)
        return 0
    if args.command == "show":
        from blackbox_audit.rundir import RunDir

        spec = _spec(args.spec)   # a bad spec fails before anything is read
        presentation.show_top(_ranked(args.run), args.top, spec,
                              themes=RunDir(args.run).load_themes())
        return 0
    if args.command == "pack":
        from blackbox_audit.rundir import RunDir

        run = RunDir(args.run)
        if not run.exists():
            raise ba.ConfigError(f"{run.path} is not a run directory (no manifest.json or "
                                 "completions.jsonl).")
        with run.writer():
            sizes = run.pack()
        for name, size in sizes.items():
            print(f"{run.path / name}: {size / 1e6:.1f} MB")
        if not sizes:
            print(f"{run.path}: nothing to pack (already packed)")
        return 0
    if args.command == "report":
        from blackbox_audit.report import render

        r = render(args.run, _spec(args.spec), args.reference, args.token_rows, args.out,
                   text_rows=args.text_rows, rows=args.row)
        print(f"report: {r.path} ({r.rows} rows, {r.rows_with_tokens} with per-token data, "
              f"{r.bytes / 1e6:.1f} MB)")
        return 0
    if args.command == "verify":
        from blackbox_audit.verifier import PromptSet, describe

        vp = ba.verify_plan(
            out=args.out, claimed=args.claimed, prompts=PromptSet(max_tokens=args.max_tokens),
            target=args.target, base_url=args.base_url,
            model=args.model or "", api_key_env=args.api_key_env, flavour=args.flavour,
            calibrate=args.calibrate, calibration=args.calibration,
            noise_floor=args.noise_floor, alpha=args.alpha,
            max_tokens_budget=args.max_tokens_budget, max_cost=args.max_cost,
            batch=args.batch, repeats=args.repeats, margins=dict(args.margin or []),
            order_seed=args.order_seed, record_mode=args.record_mode, fixtures=args.fixtures,
            device=args.device, concurrency=args.concurrency, timeout=args.timeout,
            retries=args.retries, pricing=args.pricing, quiet=args.quiet,
            torch_threads=args.threads, pin_upstream=args.pin_upstream)
        ba.apply_process_settings(vp.audit.process)
        result = ba.verify(vp)
        print(describe(result, as_json=args.json))
        return result.exit_code
    if args.command == "summarize":
        from blackbox_audit.summarize import summarize

        s = summarize(args.run, args.judge, top=args.top, base_url=args.base_url,
                      api_key_env=args.api_key_env, record_mode=args.record_mode,
                      fixtures=args.fixtures, timeout=args.timeout)
        presentation.hypotheses(s)
        return 0
    if args.command == "score-texts":
        from blackbox_audit.plan import process_settings

        p = ba.texts_plan(
            args.texts, args.out, target=args.target, target_local=args.target_local,
            base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
            flavour=args.flavour, reference=args.reference, device=args.device,
            chat_template=args.chat_template, rank_key=args.rank_key,
            min_tokens=args.min_tokens, select=args.select, select_share=args.select_share,
            select_from=args.select_from, record_mode=args.record_mode,
            fixtures=args.fixtures, timeout=args.timeout, concurrency=args.concurrency,
            retries=args.retries, quiet=args.quiet)
        ba.apply_process_settings(process_settings(args.threads))
        result = ba.score_texts(p)
        presentation.show_top(result.ranked, args.top, plain=True)
        presentation.audit_summary(result.manifest.counts.to_json(), result.run.path)
        if result.selected is not None:
            print(f"selected: {result.selected_rows} rows -> {result.selected}")
        if not args.no_report:
            from blackbox_audit.report import render

            print(f"report: {render(result.run.path).path} (self-contained; open it in a "
                  "browser)")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
