"""Prompt + response -> token ids and the response span, through the tokenizer's chat template.

With a chat template, the prompt (optionally after a system message, which is how a reward is
conditioned on a domain) is rendered with `add_generation_prompt=True`, and the full exchange with
the response as the assistant turn. The response span starts at the first token past the rendered
prompt and ends with the template's end-of-turn token (the first special token after the
response text); anything the template writes after it (a newline) is dropped.

Without a template: [BOS] + prompt tokens, then response tokens + [EOS]; a system prompt is
placed before the prompt, separated by a blank line.

Templates with no system role (Gemma 2's raises on one; some drop it silently; Mistral Nemo's
drops it from the exchange once the assistant has answered) get the system prompt at the start of
the first user turn, separated by a blank line, as those models' own
guides do; this is logged once. Templates are rendered with `date_string` fixed to
"26 Jul 2024" (Llama 3.x writes today's date into its system header otherwise), so the same
prompt always encodes to the same ids.

Over-length policy (`max_length`): the response is kept whole when it can be. The prompt is cut
from the left, down to max(max_length − response, min(prompt, max_length // 2)) tokens; then the
response is cut from the right to fill `max_length` (losing its end-of-turn token).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

log = logging.getLogger(__name__)
DATE_STRING = "26 Jul 2024"  # what Llama 3.1's own template writes when given no date
_PROBE = "grm-jax system probe"

Messages = list[dict]


class PromptError(ValueError):
    """A prompt or response that cannot be encoded (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + response; the response is ids[start:end] and end == len(ids)."""

    ids: list[int]
    start: int
    truncated: bool = False

    @property
    def end(self) -> int:
        return len(self.ids)


def check_unicode(value, field: str) -> None:
    """PromptError naming `field` when a string in `value` (a string, or messages) is not valid
    Unicode: JSON can carry a lone surrogate ("\\ud800") that no tokenizer accepts."""
    texts = [value] if isinstance(value, str) else [m.get("content") for m in value if isinstance(m, dict)] \
        if isinstance(value, (list, tuple)) else []
    for text in texts:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PromptError(f"field {field!r} is not valid Unicode: {e.reason} "
                              f"(U+{ord(text[e.start]):04X} at character {e.start})") from None


def _as_messages(prompt: str | Messages, system: str | None, system_role: bool = True) -> Messages:
    """The messages to render: `system` before the prompt's own system message, and both folded
    into the first user turn when the template has no system role."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        if not messages or any(not isinstance(m.get("content"), str) or "role" not in m for m in messages):
            raise PromptError("a message-list prompt needs one or more {role, content} dicts")
    if system is not None:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": system})
    if not system_role and messages[0]["role"] == "system":
        head, messages = messages[0]["content"], messages[1:]
        if messages and messages[0]["role"] == "user":
            messages[0] = {"role": "user", "content": f"{head}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "user", "content": head})
    return messages


class ChatFormatter:
    """Encodes prompts (for generation) and prompt + response pairs (for scoring)."""

    def __init__(self, tokenizer, *, system_prompt: str | None = None, use_template: bool | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_template and not has_template:
            raise PromptError("the tokenizer has no chat template")
        self.use_template = has_template if use_template is None else use_template
        self._special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.system_role = self.use_template and self._has_system_role()

    def _render(self, messages: Messages, generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                                  date_string=DATE_STRING)

    def _has_system_role(self) -> bool:
        """Whether the template renders a system message, both before generation and in the
        exchange with the answer (rather than raising or dropping it: Mistral Nemo's writes it
        only into a user turn that is the last message, so not where a response is scored)."""
        messages = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "x"}]
        try:
            prompt = self._render(messages, True)
            exchange = self._render(messages + [{"role": "assistant", "content": "y"}], False)
        except Exception as e:  # jinja2's TemplateError from the template's raise_exception
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        else:
            if _PROBE in prompt and _PROBE in exchange:
                return True
            reason = ("it drops system messages" if _PROBE not in prompt
                      else "it drops the system message once the assistant has answered")
        log.info("the chat template has no system role (%s): a system prompt goes at the start of the first "
                 "user turn", reason)
        return False

    def _messages(self, prompt: str | Messages) -> Messages:
        return _as_messages(prompt, self.system_prompt, self.system_role)

    def _plain_prompt(self, prompt: str | Messages) -> list[int]:
        if not isinstance(prompt, str):
            prompt = "\n\n".join(m["content"] for m in _as_messages(prompt, None))
        if self.system_prompt is not None:
            prompt = f"{self.system_prompt}\n\n{prompt}"
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self.tokenizer.encode(prompt, add_special_tokens=False)

    def prompt_ids(self, prompt: str | Messages) -> list[int]:
        """Token ids of the prompt, ready for the model to write the response."""
        check_unicode(prompt, "prompt")
        if not self.use_template:
            ids = self._plain_prompt(prompt)
        else:
            text = self._render(self._messages(prompt), True)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise PromptError("the prompt encodes to no tokens")
        return ids

    def stop_ids(self) -> list[int]:
        """Token ids that end a generated response: EOS, and the template's end-of-turn token."""
        eos = self.tokenizer.eos_token_id
        ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
        if self.use_template:
            e = self.encode("x", "y")
            if e.ids[-1] in self._special and e.ids[-1] not in ids:
                ids.append(e.ids[-1])
        return ids

    def encode(self, prompt: str | Messages, response: str, max_length: int | None = None) -> Encoded:
        """prompt + response ids and where the response starts, cut to `max_length` if given."""
        if not isinstance(response, str):
            raise PromptError(f"response must be a string, got {type(response).__name__}")
        check_unicode(prompt, "prompt")
        check_unicode(response, "response")
        if self.use_template:
            ids, start = self._encode_template(prompt, response)
        else:
            prompt_ids = self._plain_prompt(prompt)
            eos = self.tokenizer.eos_token_id
            ids = prompt_ids + self.tokenizer.encode(response, add_special_tokens=False)
            ids += [eos] if eos is not None else []
            start = len(prompt_ids)
        if start == 0:
            raise PromptError("the prompt encodes to no tokens (the first response token needs a state)")
        if start == len(ids):
            raise PromptError("the response encodes to no tokens")
        return _truncate(ids, start, max_length)

    def _encode_template(self, prompt, response: str) -> tuple[list[int], int]:
        messages = self._messages(prompt)
        prefix = self._render(messages, True)
        full = self._render(messages + [{"role": "assistant", "content": response}], False)
        if not full.startswith(prefix):
            raise PromptError("the chat template does not render the prompt as a prefix of prompt + "
                              "response; pass --no-chat-template to score plain text")
        body = response.strip()
        at = full.find(body, len(prefix)) if body else len(prefix)
        if at < 0:
            raise PromptError("the chat template changed the response text beyond stripping whitespace")
        content_end = at + len(body)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        start = next((i for i, (_, e) in enumerate(offsets) if e > len(prefix)), len(ids))
        end = start
        for i in range(start, len(ids)):
            s, _ = offsets[i]
            if s >= content_end and ids[i] in self._special:
                end = i + 1  # the end-of-turn token
                break
            if s < content_end:
                end = i + 1
        return ids[:end], start


def _truncate(ids: Sequence[int], start: int, max_length: int | None) -> Encoded:
    if max_length is None or len(ids) <= max_length:
        return Encoded(list(ids), start)
    if max_length < 2:
        raise PromptError(f"max_length {max_length} leaves no room for a prompt and a response")
    prompt, response = list(ids[:start]), list(ids[start:])
    keep = max(max_length - len(response), min(len(prompt), max_length // 2), 1)
    prompt = prompt[len(prompt) - keep:]
    response = response[:max_length - len(prompt)]
    return Encoded(prompt + response, len(prompt), truncated=True)
