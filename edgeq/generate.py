"""Text generation: prompt -> token ids -> sampled continuation -> text.

    generate(model, prompt, max_tokens=64, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
             repetition_penalty=1.0, repeat_last_n=64, seed=None, stop=()) -> str
    stream(model, prompt, **same) -> iterator of str;  "".join(stream(...)) == generate(...)
    chat(model, messages, **same) -> str;  chat_stream(model, messages, **same)
    generate_tokens(model, prompt_ids, max_tokens, params, eog) -> iterator of token ids

`model` is anything with .tokenizer, .new_cache(), .prefill(ids, cache) and
.forward(ids, cache) (edgeq.models.llama.LlamaModel). Sampling options are those of
edgeq.sampling.SamplingParams (temperature 0 is greedy).

Rules:
- A str prompt is encoded with the tokenizer's defaults (BOS when the model adds one) and with
  special-token texts parsed, as llama.cpp does; a list of ids is used as it is. The prompt
  takes part in the repetition penalty.
- Generation ends after max_tokens tokens, at an end-of-generation token (not emitted), at a
  stop string (the text is cut before it), or when the context is full (logged).
- Text comes out in whole UTF-8 characters: a token's bytes are decoded incrementally and the
  bytes of an unfinished character wait for the next token (invalid bytes become U+FFFD).
  Control tokens that do not end generation produce no text.
- chat renders the model's own chat template (edgeq.chat) with add_generation_prompt and
  generates from it; BOS is not added twice when the template writes it.
"""

from __future__ import annotations

import codecs
import logging
from typing import Iterator, Sequence

from edgeq.chat import render
from edgeq.errors import UnsupportedError
from edgeq.sampling import Sampler, SamplingParams, StopChecker

log = logging.getLogger(__name__)


def generate_tokens(model, prompt_ids: Sequence[int], max_tokens: int, params: SamplingParams,
                    eog: frozenset[int] = frozenset()) -> Iterator[int]:
    """Sampled token ids after prompt_ids, ending before an EOG id (see module rules)."""
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
    if max_tokens == 0:
        return
    cache = model.new_cache()
    logits = model.prefill(prompt_ids, cache)
    sampler = Sampler(params)
    history = [int(i) for i in prompt_ids]
    for n in range(max_tokens):
        token = sampler.sample(logits, history)
        if token in eog:
            return
        yield token
        history.append(token)
        if n + 1 == max_tokens:
            return
        if cache.length == cache.capacity:
            log.warning("generation stopped: the context of %d positions is full", cache.capacity)
            return
        logits = model.forward([token], cache)


def _tokenizer(model):
    if model.tokenizer is None:
        raise UnsupportedError("this model file has no tokenizer: pass token ids to logits()")
    return model.tokenizer


def _prompt_ids(tokenizer, prompt, add_special: bool | None = None) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special=add_special, parse_special=True)
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        if tokenizer.bos_id is None:
            raise ValueError("the prompt is empty and the model has no BOS token to start from")
        ids = [tokenizer.bos_id]
    return ids


def _stream_ids(model, ids: list[int], max_tokens: int, stop: Sequence[str] | None,
                sampling: dict) -> Iterator[str]:
    """Validate everything now, then return the lazy text generator."""
    tokenizer = _tokenizer(model)
    params = SamplingParams(**sampling)
    checker = StopChecker(stop or ())
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
    return _pieces(generate_tokens(model, ids, max_tokens, params, tokenizer.eog_ids), tokenizer, checker)


def _pieces(tokens: Iterator[int], tokenizer, checker: StopChecker) -> Iterator[str]:
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    for token in tokens:
        text = checker.feed(utf8.decode(tokenizer.decode_piece(token, special=False)))
        if text:
            yield text
        if checker.stopped:
            return
    text = checker.feed(utf8.decode(b"", final=True))
    text += "" if checker.stopped else checker.finish()
    if text:
        yield text


def stream(model, prompt, *, max_tokens: int = 64, stop: Sequence[str] | None = (),
           **sampling) -> Iterator[str]:
    """Text pieces continuing `prompt` (str or token ids); see the module rules."""
    return _stream_ids(model, _prompt_ids(_tokenizer(model), prompt), max_tokens, stop, sampling)


def generate(model, prompt, *, max_tokens: int = 64, stop: Sequence[str] | None = (), **sampling) -> str:
    """The text continuing `prompt`: "".join(stream(...))."""
    return "".join(stream(model, prompt, max_tokens=max_tokens, stop=stop, **sampling))


def chat_prompt_ids(model, messages) -> list[int]:
    """Token ids of `messages` rendered with the model's chat template and a generation prompt."""
    tokenizer = _tokenizer(model)
    if not tokenizer.chat_template:
        raise UnsupportedError("this model has no chat template; build the prompt yourself and "
                               "call generate()")
    def text_of(token_id):
        return "" if token_id is None else tokenizer.decode_piece(token_id).decode("utf-8", "replace")

    bos, eos = text_of(tokenizer.bos_id), text_of(tokenizer.eos_id)
    text = render(tokenizer.chat_template, messages, add_generation_prompt=True,
                  bos_token=bos, eos_token=eos)
    writes_bos = bool(bos) and text.startswith(bos)
    return _prompt_ids(tokenizer, text, add_special=False if writes_bos else None)


def chat_stream(model, messages, *, max_tokens: int = 64, stop: Sequence[str] | None = (),
                **sampling) -> Iterator[str]:
    """The assistant's reply to `messages`, in text pieces."""
    return _stream_ids(model, chat_prompt_ids(model, messages), max_tokens, stop, sampling)


def chat(model, messages, *, max_tokens: int = 64, stop: Sequence[str] | None = (), **sampling) -> str:
    """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...])."""
    return "".join(chat_stream(model, messages, max_tokens=max_tokens, stop=stop, **sampling))
