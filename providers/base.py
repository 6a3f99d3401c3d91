"""The provider contract: build a payload, send it, parse the answer into a Completion.

An adapter declares what its endpoint can do (:class:`Capabilities`) and implements two
small pure functions, :meth:`Provider.build` and :meth:`Provider.parse`. The loop that sends
requests, maps HTTP failures to errors a user can act on, and applies the quality checks is
shared here, so adapters stay short (the shape of inspect_ai's ModelAPI and lm-eval's
TemplateAPI). Providers know nothing of the reference model.

Everything else known about a provider is its adapter's too, as class-level members that
need no instance (the preflight asks them before any call; nothing outside ``providers/``
branches on a provider's name): its ``kinds`` (``KIND:MODEL`` names with their default base
URL and key variable), ``declared`` capabilities, the ``framings`` it allows and the chat mode
it needs, models it refuses, how to read ``usage`` from an answer, its ``retry_hints``, its
list ``prices``, a model-list ``discover`` call. The registry only lists the adapter classes.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import httpx

from blackbox_audit.errors import EndpointError
from blackbox_audit.quality import assess, placeholders, withhold_secrets
from blackbox_audit.records import Completion, GenerationRequest
from blackbox_audit.redact import Redactor
from blackbox_audit.transport import JSON_EXTENSION, OversizedBody, RetryHints

from .protocol import MalformedAnswer, PromptEcho, TokenColumns


@dataclass
class Capabilities:
    """What an endpoint offers, as declared by its adapter (and later confirmed by a probe)."""

    logprobs: bool = True
    top_logprobs: int = 5            # the largest k the endpoint accepts
    raw_completion: bool = True      # a text-completion endpoint (raw framing, client-side chat)
    assistant_prefill: bool = False  # continues a trailing assistant message
    echo: bool = False               # prompt log-probabilities
    token_ids: bool = False          # returns token ids with logprobs
    max_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WireRequest:
    method: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class RequestOptions:
    """How a run asks, beyond each request: fixed when the adapter is built.

    ``reference_only``: rows are kept without target log-probabilities, labelled as such.
    ``echo_prompts``: ask for the prompt back as the server tokenised it (echo / prompt
    log-probabilities), to check that it carries the prefill (the probe; --verify-prompts).
    ``ask_token_ids``: ask for token ids where the endpoint names tokens by id only on request
    (``Provider.ids_on_request``; --alignment ids).
    ``upstream``: the one upstream a router must serve every request from (--pin-upstream;
    ``Provider.pins_upstream``), so answers are not a mixture of providers.
    """

    reference_only: bool = False
    echo_prompts: bool = False
    ask_token_ids: bool = False
    upstream: str | None = None


DEFAULT_OPTIONS = RequestOptions()


class RequestFailed(Exception):
    """This one request got no usable answer (after retries); the run goes on."""


@dataclass(frozen=True)
class Kind:
    """One ``KIND`` of ``KIND:MODEL``: where its endpoint is unless --base-url says otherwise,
    which environment variable holds its key, and (adapters with server flavours) its
    flavour."""

    base_url: str | None
    key_env: str | None
    flavour: str = ""


PAPER_FALLBACK = "fallback: the prefill in the user turn (not the paper's framing)"


class Provider(ABC):
    # -- what the adapter knows before any call (class level: no instance, no I/O) --------
    family: ClassVar[str] = "provider"      # the adapter's name (manifest "adapter")
    kinds: ClassVar[dict[str, Kind]] = {}   # its KIND:MODEL names
    flavours: ClassVar[tuple[str, ...]] = ()  # server flavours (--flavour), if it has any
    uses_sdk: ClassVar[bool] = False        # an official SDK sends (and sets its own auth)
    retry_hints: ClassVar[RetryHints] = RetryHints()
    prices: ClassVar[dict[str, tuple[float, float]]] = {}  # USD per M tokens (in, out)
    logprobs_absent: ClassVar[str | None] = None  # why the API returns none, if it never does
    # A chat API a judge can ask (blackbox_audit.summarize): a class built on (client, key,
    # base_url) with ``async chat(body) -> httpx.Response``, ``text(payload) -> str`` and
    # ``judge_body(model, system, user, max_tokens) -> dict`` (static).
    api: ClassVar[Any] = None

    @classmethod
    @abstractmethod
    def declared(cls, model: str, flavour: str = "") -> Capabilities:
        """What this adapter declares for ``model`` before any call (``flavour``: the
        server flavour, where the adapter has flavours)."""

    @classmethod
    @abstractmethod
    def framings(cls, caps: Capabilities, chat_mode: str) -> dict[str, str]:
        """Each framing -> why it is possible ("ok: ...", "fallback: ...") or not
        ("no: ...") with these capabilities."""

    @classmethod
    def chat_mode(cls, caps: Capabilities, asked: str) -> str:
        """The chat mode a run uses when ``asked`` for one (template | prefill)."""
        return asked

    @classmethod
    def pins_upstream(cls, flavour: str) -> bool:
        """Can a request say which upstream must serve it (a router's pin)?"""
        return False

    @classmethod
    def server_prefill(cls, chat_mode: str) -> bool:
        """Does the chat framing put the prefill in a trailing assistant message?"""
        return chat_mode == "prefill"

    @classmethod
    def refuse_model(cls, model: str) -> None:
        """Raise EndpointError for a model this API can never audit (before any call)."""
        return None

    @classmethod
    def no_logprobs_refusal(cls, model: str) -> str | None:
        """Why an audit of ``model`` needs --reference-only, when the API has no logprobs."""
        return None

    @classmethod
    def tokenizer_model(cls, model: str) -> str | None:
        """The model name tiktoken knows this model's encoding by, if it knows it."""
        return None

    @classmethod
    async def discover(cls, client: httpx.AsyncClient, model: str) -> tuple[str, str] | None:
        """One call that lists the endpoint's models, where the API has one: (the server
        flavour it shows, whether ``model`` is listed, in words). None: no such call."""
        return None

    @classmethod
    @abstractmethod
    def create(cls, client: httpx.AsyncClient, model: str, api_key: str | None, *,
               base_url: str | None, flavour: str, chat_mode: str,
               options: RequestOptions) -> Provider:
        """The adapter for ``model`` on ``client``, asking as ``options`` say."""

    @staticmethod
    def usage(payload: Any) -> tuple[Any, Any] | None:
        """An answer's (prompt, completion) tokens as the API reports them; None when it
        reports none (the transport counts them: transport.UsageReader)."""
        return None

    @property
    def missing_logprobs_note(self) -> str:
        """What to add when an answer came without logprobs although they were asked for."""
        return ""

    # -- one adapter object: a model on a client -------------------------------------------
    def __init__(self, client: httpx.AsyncClient, model: str, capabilities: Capabilities,
                 options: RequestOptions = DEFAULT_OPTIONS):
        self.client = client
        self.model = model
        self.capabilities = capabilities
        self.options = options
        self._urls: dict[str, httpx.URL] = {}   # a memo of send(): path -> absolute URL

    @property
    def reference_only(self) -> bool:
        return self.options.reference_only

    @property
    def echo_prompts(self) -> bool:
        return self.options.echo_prompts

    @property
    def ask_token_ids(self) -> bool:
        return self.options.ask_token_ids

    def with_options(self, **changes: bool | str | None) -> Provider:
        """The same adapter (same client, same SDK) asking differently: a new object, this
        one unchanged (the probe confirms echo in its own calls this way)."""
        other = copy.copy(self)
        other.options = replace(self.options, **changes)
        return other

    @property
    def ids_on_request(self) -> bool:
        """Does this endpoint name tokens by id only when asked (``ask_token_ids``)?"""
        return False

    async def server_slots(self) -> int | None:
        """How many requests the server computes at once, where it says (None: unknown).

        A request beyond them waits in the server's queue, and that wait would count against
        the attempt timeout: on a busy machine such requests time out and are retried while
        the server still computes the abandoned ones. The run keeps its window at or under
        this number, so the queue is on our side, where it costs no timeout."""
        return None

    @abstractmethod
    def build(self, req: GenerationRequest) -> WireRequest:
        """The HTTP request for one generation. Pure: no I/O."""

    @abstractmethod
    def parse(self, req: GenerationRequest, payload: dict[str, Any]) -> Completion:
        """Turn a 2xx JSON answer into a Completion. Pure: no I/O. The one conversion point."""

    async def send(self, wire: WireRequest) -> httpx.Response:
        """Put one request on the wire. SDK-based adapters override this to call their SDK
        (which still sends through ``self.client``); status handling stays shared."""
        return await self.client.request(wire.method, self._url(wire.path), json=wire.body)

    def _url(self, path: str) -> httpx.URL:
        """``path`` joined to the client's base URL, as httpx joins it, once per path: an
        absolute URL spares httpx two URL parses per request (~70 us of the ~600 our
        client spends on an answer; bench/client.py)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self.client.build_request("GET", path).url
        return url

    async def generate(self, req: GenerationRequest) -> Completion:
        wire = self.build(req)
        try:
            response = await self.send(wire)
        except httpx.TimeoutException as e:
            raise RequestFailed(f"timed out after retries ({type(e).__name__})") from e
        except OversizedBody as e:
            raise RequestFailed(str(e)) from e
        except httpx.TransportError as e:
            raise RequestFailed(f"connection failed after retries: {e}") from e
        if response.status_code >= 400:
            self.raise_for_status(response)
        # The retry transport parsed a 2xx JSON body already (JSON_EXTENSION); taken off the
        # answer, the parsed tree is freed with this call, not with httpx's response (which
        # waits for the cyclic collector: it and its stream refer to each other).
        try:
            payload = response.extensions.pop(JSON_EXTENSION, None) or response.json()
        except ValueError as e:
            raise RequestFailed(f"HTTP {response.status_code} with a body that is not JSON: "
                                f"{response.text[:200]!r}") from e
        if not isinstance(payload, dict):
            return Completion.malformed(req, f"the answer is a JSON {type(payload).__name__}, "
                                             f"not an object: {str(payload)[:200]}")
        try:
            completion = self.parse(req, payload)
            if self.reference_only:
                completion.mode = "reference-only"
                completion.degraded = [r for r in completion.degraded if r != "no_logprobs"]
            reasons = assess(completion, req.max_tokens)
        except MalformedAnswer as e:
            return Completion.malformed(req, str(e))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            # The same answer replays the same way from the fixture: a row, never a crash.
            return Completion.malformed(req, f"{type(e).__name__}: {e}")
        completion.degraded = sorted(set(completion.degraded) | set(reasons))
        # The transport cut any secret out of the answer before we saw it (live and replayed
        # alike); a row whose content shows a cut is withheld, not scored.
        return withhold_secrets(completion, Redactor())

    def raise_for_status(self, response: httpx.Response) -> None:
        """Fatal statuses stop the run with a clear message; others fail this one row."""
        status = response.status_code
        detail = error_detail(response)
        url = f"{self.client.base_url}"
        if status in (401, 403):
            raise EndpointError(
                f"The endpoint {url} refused the credentials (HTTP {status}: {detail}). "
                "Check the API key (set it in the environment variable named by --api-key-env) "
                "and that it may use this model.")
        if status == 404:
            raise EndpointError(
                f"The endpoint {url} answered HTTP 404 for {response.request.url.path} "
                f"({detail}). Check --base-url (it usually ends in /v1) and --model "
                f"({self.model!r}).")
        if status in (400, 422) and "model" in detail.lower():
            raise EndpointError(
                f"The endpoint {url} does not accept model {self.model!r} (HTTP {status}: "
                f"{detail}). List its models or check --model.")
        raise RequestFailed(f"HTTP {status}: {detail}")


def error_detail(response: httpx.Response) -> str:
    """What an error answer says, in a few words (its ``error.message`` where it has one)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(body)[:300]


def first_choice(payload: dict[str, Any], who: str) -> dict[str, Any]:
    """The first choice of an OpenAI-style answer; an answer without one is a malformed
    answer (the row is marked; the probe refuses the run before it spends)."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswer(f"{who} answered without a list of choices: "
                              f"{str(payload)[:300]}")
    return choices[0]


def completion_from_columns(req: GenerationRequest, *, text: str, cols: TokenColumns | None,
                            finish_reason: str | None, prompt_tokens: int | None,
                            model: str | None) -> Completion:
    """Build the internal record from one choice's token columns.

    An end-of-turn token reported with empty text at the end of a stopped completion is moved
    to ``end_token``: it is not part of the continuation's text, the reference does not
    score it, so the target's side must not either.
    """
    p = req.prefill
    c = Completion(prefill_id=p.id, corpus=p.corpus, prefill=p.text, framing=req.framing,
                   text=text, finish_reason=finish_reason, prompt=req.prompt,
                   prompt_tokens=prompt_tokens, model=model, chat_prompts=req.chat_prompts)
    if cols is None:
        if text:
            c.degraded.append("no_logprobs")
        return c
    # Outer lists copied (the end token may be popped off), inner ones shared: nothing
    # changes a token's bytes or its top list after this point.
    tokens, lps = list(cols.tokens), list(cols.logprobs)
    ids = list(cols.ids) if cols.ids is not None else None
    tbytes = list(cols.token_bytes) if cols.token_bytes is not None else None
    top = list(cols.top) if cols.top is not None else None
    if tokens and tokens[-1] == "" and (tbytes is None or tbytes[-1] == []) \
            and finish_reason == "stop" and len(tokens) == len(lps):
        c.end_token = {"token": tokens.pop(), "logprob": lps.pop(),
                       "id": ids.pop() if ids else None}
        if tbytes is not None:
            tbytes.pop()
        if top is not None:
            top.pop()
    c.tokens, c.logprobs, c.token_ids, c.token_bytes, c.top_logprobs = tokens, lps, ids, \
        tbytes, top
    return c


def attach_echo(c: Completion, echo: PromptEcho | None, prefill: str,
                in_user_turn: bool = False) -> None:
    """Record what the server's echo of the prompt shows, and mark the row when the prompt
    the model saw does not carry the prefill intact: for the raw and chat framings it must
    end with the prefill (a server that closed the assistant turn, wrapped the text in a
    template or dropped characters fails); for ``chat-continue`` (``in_user_turn``: the
    prefill inside the user's message, a new assistant turn after it) it must hold it.

    ``prompt_echo`` on the row: ``tokens`` (the server's prompt length), ``logprobs``
    (``real``, ``none``, ``missing`` for gaps after the first token, or ``placeholder``),
    ``prefill_intact`` (None when the echo cannot tell: split characters shown as U+FFFD),
    and ``tail``, the end of the server's prompt, when it is not.
    """
    if echo is None:
        c.prompt_echo = {"tokens": 0, "logprobs": "none", "prefill_intact": None}
        return
    rest = echo.logprobs[1:]
    vals = [x for x in rest if x is not None]
    if not vals:
        quality = "none"
    elif placeholders(vals):
        quality = "placeholder"
    elif len(vals) < len(rest):
        quality = "missing"
    else:
        quality = "real"
    seen = echo.text
    if in_user_turn:
        intact: bool | None = prefill in seen
    else:
        intact = seen.endswith(prefill) or (echo.first_unknown and bool(seen)
                                            and prefill.endswith(seen))
    if not intact and ("\ufffd" in seen or not seen):
        intact = None
    c.prompt_echo = {"tokens": len(echo.tokens), "logprobs": quality,
                     "prefill_intact": intact}
    if intact is False:
        c.prompt_echo["tail"] = seen[-60:]
        c.degraded.append("prefill_altered")
