"""Framings: how a prefill is put in front of the target (design §1).

- ``raw``: the prefill as plain text to continue.
- ``chat``: system "You are a helpful assistant.", user "Tell me anything.", and the prefill
  as the start of the assistant turn. Sent either as the chat template rendered client-side
  followed by the prefill, to a raw completion endpoint (exact, and safe with servers that do
  not honour a trailing assistant message), or as messages to a server known to continue a
  trailing assistant message.

The same renderer gives the reference its context, so both models see the same framing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError

SYSTEM = "You are a helpful assistant."
USER = "Tell me anything."
FRAMINGS = ("raw", "chat")


def chat_messages(prefill: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    if prefill is not None:
        msgs.append({"role": "assistant", "content": prefill})
    return msgs


class ChatTemplate:
    """Renders the chat framing's header (everything before the assistant's first word)."""

    def __init__(self, render: Callable[[list[dict[str, str]]], str], source: str):
        self._render = render
        self.source = source
        self.header = render(chat_messages())

    @classmethod
    def from_tokenizer(cls, tokenizer, source: str) -> ChatTemplate:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"The tokenizer of {source} has no chat template, so the chat framing cannot "
                "be rendered. Pass --chat-template FILE (a Jinja template) or use "
                "--framings raw.")

        def render(msgs: list[dict[str, str]]) -> str:
            return tokenizer.apply_chat_template(msgs, tokenize=False,
                                                 add_generation_prompt=True)
        return cls(render, source)

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        import jinja2

        try:
            text = Path(path).read_text(encoding="utf-8")
            template = jinja2.Environment(autoescape=False).from_string(text)  # noqa: S701
        except (OSError, jinja2.TemplateError) as e:
            raise ConfigError(f"Cannot use chat template {path}: {e}") from e

        def render(msgs: list[dict[str, str]]) -> str:
            return template.render(messages=msgs, add_generation_prompt=True,
                                   bos_token="", eos_token="")
        return cls(render, str(path))


def render_prompt(framing: str, prefill: str, template: ChatTemplate | None) -> str:
    """The exact text a raw completion endpoint is sent for this framing."""
    if framing == "raw":
        return prefill
    if framing == "chat":
        if template is None:
            raise ConfigError("The chat framing needs a chat template.")
        return template.header + prefill
    raise ConfigError(f"Unknown framing {framing!r}; choose from {', '.join(FRAMINGS)}.")
