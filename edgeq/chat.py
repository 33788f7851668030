"""Chat templates: a model's own Jinja2 template, rendered in a sandbox.

    render(template, messages, add_generation_prompt=True, bos_token="", eos_token="",
           **variables) -> str

The environment is the one Hugging Face transformers renders chat templates with, so templates
written for it give the same text: jinja2.sandbox.ImmutableSandboxedEnvironment (templates
cannot reach Python internals or mutate the messages), trim_blocks and lstrip_blocks, the
loopcontrols extension, raise_exception(message), strftime_now(format) and a tojson filter
that keeps non-ASCII characters. Template variables: messages, add_generation_prompt,
bos_token, eos_token, and any extra keyword (e.g. tools).

messages: a list of {"role": str, "content": str, ...} dicts (extra keys are passed through).
Errors: a template that does not compile or fails while rendering is a FormatError; a template
that calls raise_exception gives a ChatTemplateError (a ValueError) with its message; bad
messages a ValueError.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgeq.errors import FormatError


class ChatTemplateError(ValueError):
    """Raised by a template's raise_exception(message): the messages break its rules."""


def _raise_exception(message):
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise FormatError(f"chat template does not compile: {e}") from None


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not hasattr(messages, "__iter__"):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    checked = list(messages)
    for i, m in enumerate(checked):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be a dict with str 'role' and 'content', got {m!r}")
    return checked


def render(template: str, messages, *, add_generation_prompt: bool = True, bos_token: str = "",
           eos_token: str = "", **variables) -> str:
    """The prompt text for `messages` (see the module docstring)."""
    if not isinstance(template, str):
        raise ValueError(f"chat template must be a str, got {type(template).__name__}")
    compiled = _compile(template)
    try:
        return compiled.render(messages=_check_messages(messages),
                               add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except (jinja2.TemplateError, TypeError) as e:
        raise FormatError(f"chat template failed: {type(e).__name__}: {e}") from None
