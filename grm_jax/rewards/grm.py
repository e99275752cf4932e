"""Generative reward model prompts (PAPERS.md part A): Jinja templates under configs/prompts/.

Templates get `history` (the conversation before the last user turn, as {role, content}),
`query` (the last user turn) and `responses` (in the order shown). The layout — section headers,
`[The Begin of Response i]` / `[The End of Response i]` delimiters, the three output lines, the
boxed list — is the interface a published DeepSeek-GRM checkpoint was trained on; the wording is
ours. Users can pass their own template file.

Templates are data, not code: they render in jinja's immutable sandbox, so a template from a
config or a repository cannot reach Python objects (`cycler.__init__.__globals__.os`), call
unsafe methods or mutate its inputs; an attempt is an error naming the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"


@dataclasses.dataclass(frozen=True)
class GrmFormat:
    """How a template's reply is read: the line marker before the box and the score range."""

    template: str           # a name under configs/prompts/ (without .jinja) or a file path
    low: int = 1
    high: int = 10
    marker: str = "Scores:"
    picks_best: bool = False  # the reply names the best response's 1-based index, not scores


MULTI = GrmFormat("grm_multi")
SINGLE = GrmFormat("grm_single", low=0, high=1)
JUDGE = GrmFormat("judge_best", marker="Best:", picks_best=True)


def template_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".jinja" or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"template {p} not found")
        return p
    p = PROMPTS_DIR / f"{name_or_path}.jinja"
    if not p.is_file():
        names = sorted(x.stem for x in PROMPTS_DIR.glob("*.jinja")) if PROMPTS_DIR.is_dir() else []
        raise FileNotFoundError(f"no template {name_or_path!r} in {PROMPTS_DIR} (have {names})")
    return p


class PromptTemplate:
    """A sandboxed Jinja template read from `path`; `render(**variables)` -> text."""

    def __init__(self, path: Path):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.path = path
        env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
        try:
            self._template = env.from_string(path.read_text(encoding="utf-8"))
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"{path}: line {e.lineno}: {e.message}") from e

    def render(self, **variables) -> str:
        import jinja2

        try:
            return self._template.render(**variables)
        except jinja2.exceptions.SecurityError as e:
            raise ValueError(f"{self.path}: the template tried an unsafe operation ({e}); templates "
                             "may only format their variables") from None
        except jinja2.TemplateError as e:
            raise ValueError(f"{self.path}: {type(e).__name__}: {e} (variables: "
                             f"{', '.join(sorted(variables))})") from None


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """The template named `name_or_path` (under configs/prompts/) or read from that file."""
    return PromptTemplate(template_path(name_or_path))


def split_conversation(prompt: str | list[dict]) -> tuple[list[dict], str]:
    """(history, last user query) of a prompt string or message list."""
    if isinstance(prompt, str):
        return [], prompt
    users = [i for i, m in enumerate(prompt) if m.get("role") == "user"]
    if not users:
        raise ValueError("a message-list prompt needs a user turn")
    last = users[-1]
    return [dict(m) for m in prompt[:last]], prompt[last]["content"]


def render(template: PromptTemplate, prompt: str | list[dict], responses: Sequence[str]) -> str:
    """The GRM's user message for `prompt` and `responses` (in the order given)."""
    history, query = split_conversation(prompt)
    return template.render(history=history, query=query, responses=list(responses))


def meta_verdict(responses: Sequence[str], scores: Sequence[float] | None, permutation: Sequence[int]) -> str:
    """What a judgment decided, spelled out for the meta RM (our extension; the paper's meta RM
    reads the principles and critique alone): the response(s) its parsed scores put on top,
    numbered as its prompt shows them, with their text. `scores` are in the responses' original
    order (None: the judgment did not parse); `permutation[shown] = original`."""
    if scores is None:
        return "Highest score: none (the scores do not parse)."
    shown = {orig: pos + 1 for pos, orig in enumerate(permutation)}
    top = max(scores)
    return "Highest score: " + " ".join(f"Response {shown[i]}: {responses[i]}"
                                        for i, x in enumerate(scores) if x == top)


def render_meta(template: PromptTemplate, grm_prompt: str, judgment: str, verdict: str = "") -> str:
    """The meta RM's input: the GRM prompt, one sampled judgment and its `meta_verdict` (left out
    when empty)."""
    return template.render(grm_prompt=grm_prompt, judgment=judgment, verdict=verdict)
