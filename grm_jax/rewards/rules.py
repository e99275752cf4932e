"""Rule rewards: plain callables with a documented range.

  grm_rule_reward     +1 if a GRM reply's scores are correct by Eq. 10, else −1 (a parse failure
                      is −1; no separate format reward) — SPCT's online RL reward.
  math_answer_reward  +1 if the reply's final answer (its last \\boxed{...}, else its last number)
                      equals the reference answer, else −1.
  token_rate_reward   in [0, 1]: the fraction of response tokens whose id is below a bound (a toy
                      reward with a real learning signal, for tests and smoke runs).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

from grm_jax.rewards.grm import GrmFormat
from grm_jax.rewards.parse import _boxes, parse_scores
from grm_jax.rewards.voting import is_correct, unshuffle

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def grm_rule_reward(text: str, rewards: Sequence[float], perm: Sequence[int], fmt: GrmFormat,
                    truncated: bool = False) -> float:
    """+1 / −1 by Eq. 10 on the scores of `text` mapped back through `perm`."""
    parsed = parse_scores(text, len(rewards), fmt.low, fmt.high, truncated=truncated, marker=fmt.marker)
    if not parsed.ok:
        return -1.0
    return 1.0 if is_correct(unshuffle(parsed.scores, perm), rewards) else -1.0


def final_answer(text: str) -> str | None:
    """The last \\boxed{...} content, else the last number in the text."""
    boxes, _ = _boxes(text)
    if boxes:
        return boxes[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(s: str) -> Fraction | None:
    s = s.strip().strip("$").replace(",", "").replace(" ", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def math_answer_reward(text: str, answer: str) -> float:
    """+1 if the final answer equals `answer` (numerically when both are numbers, else as
    whitespace-insensitive strings), else −1."""
    got = final_answer(text)
    if got is None:
        return -1.0
    a, b = _as_number(got), _as_number(str(answer))
    if a is not None and b is not None:
        return 1.0 if a == b else -1.0
    return 1.0 if "".join(got.split()) == "".join(str(answer).split()) else -1.0


def token_rate_reward(tokens: Sequence[int], below: int) -> float:
    """Fraction of `tokens` whose id is below `below` (0 for an empty response)."""
    return float(sum(int(t) < below for t in tokens)) / len(tokens) if len(tokens) else 0.0
