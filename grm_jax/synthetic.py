"""A synthetic judging task whose answers a program can check (the embedded default's data).

Queries are small arithmetic questions ("What is 7 + 5?"). Candidate responses are right, or
wrong in plausible ways (off by one or two, the wrong operation, swapped digits). GRM items carry
n = 1..4 responses with ground-truth rewards: for n >= 2 exactly one response is right (a unique
maximum, as Eq. 10 needs); for n = 1 the reward is the 0/1 label.

Teacher trajectories are GRM replies in the published layout — specific criteria, an analysis
that recomputes the result and checks each response, boxed scores — that are wrong a set
fraction of the time (the teacher miscomputes the result), so a model pretrained on them is well
formatted but an imperfect judge, with room for RFT and GRPO to improve it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    max_operand: int = 9
    ops: tuple[str, ...] = ("+", "-", "*")
    min_responses: int = 2
    max_responses: int = 4
    teacher_error: float = 0.25      # fraction of teacher replies built on a miscomputed result
    misconceived: float = 0.0        # fraction of the queries on which the teacher holds one fixed wrong result
    misconception_rate: float = 0.6  # how often a reply to such a query is built on that wrong result

    def __post_init__(self):
        if not 1 <= self.min_responses <= self.max_responses:
            raise ValueError("need 1 <= min_responses <= max_responses")
        for name in ("teacher_error", "misconceived", "misconception_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if any(op not in OPS for op in self.ops):
            raise ValueError(f"ops must be among {tuple(OPS)}")


def make_query(rng: random.Random, cfg: TaskConfig) -> tuple[str, int, tuple[int, str, int]]:
    a, b = rng.randint(0, cfg.max_operand), rng.randint(0, cfg.max_operand)
    op = rng.choice(cfg.ops)
    return f"What is {a} {op} {b}?", OPS[op](a, b), (a, op, b)


def wrong_answer(rng: random.Random, answer: int, parts: tuple[int, str, int]) -> int:
    """A plausible wrong result: off by one or two, another operation, or swapped digits."""
    a, op, b = parts
    options = [answer + d for d in (-2, -1, 1, 2)]
    options += [f(a, b) for o, f in OPS.items() if o != op]
    if abs(answer) >= 10:
        s = str(abs(answer))
        options.append(int(s[::-1]) * (1 if answer >= 0 else -1))
    options = [x for x in options if x != answer]
    return rng.choice(options)


def response_text(query_parts: tuple[int, str, int], claimed: int) -> str:
    a, op, b = query_parts
    return f"{a} {op} {b} = {claimed}."


def make_item(rng: random.Random, cfg: TaskConfig, n: int | None = None, index: int = 0) -> dict:
    """One GRM item {id, prompt, responses, rewards, subset, claims, answer}."""
    query, answer, parts = make_query(rng, cfg)
    n = n or rng.randint(cfg.min_responses, cfg.max_responses)
    if n == 1:
        right = rng.random() < 0.5
        claims = [answer if right else wrong_answer(rng, answer, parts)]
        rewards = [1 if right else 0]
    else:
        wrong = set()
        while len(wrong) < n - 1:
            wrong.add(wrong_answer(rng, answer, parts))
        claims = [answer, *sorted(wrong)]
        rng.shuffle(claims)
        rewards = [1 if c == answer else 0 for c in claims]
    return {"id": f"arith-{index}", "prompt": query, "responses": [response_text(parts, c) for c in claims],
            "rewards": rewards, "subset": f"n={n}", "claims": claims, "answer": answer,
            "parts": list(parts)}


def make_items(count: int, seed: int, cfg: TaskConfig = TaskConfig()) -> list[dict]:
    """`count` items, deterministic in `seed`."""
    rng = random.Random(seed)
    return [make_item(rng, cfg, index=i) for i in range(count)]


def all_queries(cfg: TaskConfig) -> list[tuple[int, str, int]]:
    """Every distinct query's parts (a, op, b), in a fixed order."""
    r = range(cfg.max_operand + 1)
    return [(a, op, b) for a in r for op in cfg.ops for b in r]


def misconceptions(cfg: TaskConfig, seed: int) -> dict[tuple[int, str, int], int]:
    """The teacher's fixed wrong beliefs: {query parts: the wrong result it believes}, on
    `misconceived` of the queries (drawn from the seed), each belief a plausible wrong result."""
    rng = random.Random(f"misconceptions-{seed}")
    queries = all_queries(cfg)
    chosen = rng.sample(queries, round(cfg.misconceived * len(queries)))
    return {q: wrong_answer(rng, OPS[q[1]](q[0], q[2]), q) for q in sorted(chosen)}


STYLES = ("multi", "single", "judge")


def teacher_reply(item: dict, perm: Sequence[int], rng: random.Random, cfg: TaskConfig,
                  style: str = "multi", misconception: int | None = None) -> tuple[str, bool]:
    """(a reply for the responses shown in `perm` order, whether it was built on the true result).

    With probability teacher_error the teacher miscomputes the result and judges the responses
    against its wrong value. Given a `misconception` (its fixed wrong belief about this query,
    see `misconceptions`), it judges against that value `misconception_rate` of the time instead. Styles: "multi" (GRM: criteria, analysis, scores 1..10), "single"
    (one response scored 0/1), "judge" (LLM-as-judge: analysis, then the best response's number,
    a random one when no response matches the believed result).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    a, op, b = item["parts"]
    if misconception is not None and rng.random() < cfg.misconception_rate:
        truthful, believed = False, misconception
    else:
        truthful = rng.random() >= cfg.teacher_error
        believed = item["answer"] if truthful else wrong_answer(rng, item["answer"], (a, op, b))
    lines, scores, matches = [], [], []
    for shown, original in enumerate(perm, 1):
        claimed = item["claims"][original]
        ok = claimed == believed
        # Each response's claim restated as an equation, then the verdict on it: a fact about
        # the equation, which a language model learns, rather than a comparison of two numbers.
        lines.append(f"Response {shown}: {a} {op} {b} = {claimed}, {'right' if ok else 'wrong'}.")
        matches.append(ok)
        if style == "single":
            scores.append(1 if ok else 0)
        else:
            scores.append(rng.randint(8, 10) if ok else rng.randint(1, 3))
    analysis = f"Analysis: {a} {op} {b} = {believed}. " + " ".join(lines)
    if style == "judge":
        best = matches.index(True) + 1 if any(matches) else rng.randint(1, len(perm))
        return f"{analysis}\nBest: \\boxed{{{best}}}", truthful
    box = "\\boxed{" + ", ".join(map(str, scores)) + "}"
    return f"Specific Criteria: the result must be correct.\n{analysis}\nScores: {box}", truthful


def qa_texts(items: Sequence[dict]) -> list[tuple[str, str]]:
    """(query, correct response) pairs: plain instruction data for the corpus."""
    return [(it["prompt"], response_text(tuple(it["parts"]), it["answer"])) for it in items]
