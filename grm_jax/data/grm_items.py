"""Items for a generative reward model: a prompt, n responses, and (optionally) ground truth.

The GRM item layout (JSONL, one object per line; defined here, no public layout exists):

  {"id": "q1", "prompt": "..." or "messages": [{"role": ..., "content": ...}, ...],
   "responses": ["...", "..."], "rewards": [1, 0], "subset": "chat"}

`rewards` are per-response ground-truth rewards; with n >= 2 they need a unique maximum (Eq. 10),
with n = 1 they are the 0/1 label. `rewards`, `id` and `subset` are optional.

Also read, by their fields: RewardBench rows (n = 2: chosen, rejected), RM-Bench rows (each of the
3 x 3 chosen/rejected style pairs becomes one n = 2 item), PPE correctness rows (`response_1` ..
`response_K` with binary `scores`: best-of-K items) and PPE preference rows (`response_1`,
`response_2`, `winner`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from grm_jax.data.preference import (BadRow, DataError, check_prompt, detect_layout, read_row_subset, read_rows,
                                     validate)

ITEM_LAYOUTS = ("grm", "rewardbench", "rmbench", "ppe_correctness", "ppe_preference")
_RESPONSE_N = re.compile(r"response_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Item:
    row: int                        # 1-based row of the input file
    prompt: str | list
    responses: tuple[str, ...]
    rewards: tuple[float, ...] | None
    group: str | None = None        # subset / domain
    id: object = None
    pair: tuple[int, int] | None = None   # RM-Bench (chosen style, rejected style)


def _layout(rows: list[dict], path) -> str:
    fields = set().union(*(r.keys() for r in rows)) if rows else set()
    if "responses" in fields:
        return "grm"
    if "response_1" in fields and "scores" in fields:
        return "ppe_correctness"
    if "response_1" in fields and "winner" in fields:
        return "ppe_preference"
    return detect_layout(rows, path)


def _winner(value) -> int | None:
    """0 or 1 for the first or second response, from the spellings PPE uses."""
    table = {"1": 0, "2": 1, "model_a": 0, "model_b": 1, "a": 0, "b": 1, "response_1": 0, "response_2": 1}
    return table.get(str(value).strip().lower())


def _grm_row(i: int, r: dict) -> Item | str:
    if isinstance(r, BadRow):
        return r.error
    prompt = r.get("prompt") if r.get("prompt") is not None else r.get("messages")
    if prompt is None:
        return "field 'prompt' (or 'messages') is missing"
    if (why := check_prompt(prompt)) is not None:
        return f"field 'prompt' {why}"
    responses = r.get("responses")
    if not isinstance(responses, list) or not responses or not all(isinstance(x, str) for x in responses):
        return "field 'responses' must be a non-empty list of strings"
    rewards = r.get("rewards")
    if rewards is not None:
        if not isinstance(rewards, list) or len(rewards) != len(responses) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in rewards):
            return f"field 'rewards' must be a list of {len(responses)} numbers"
        if len(rewards) > 1 and rewards.count(max(rewards)) > 1:
            return "field 'rewards' has no unique maximum (Eq. 10 needs one)"
        rewards = tuple(float(x) for x in rewards)
    group = r.get("subset")
    return Item(i, prompt, tuple(responses), rewards, None if group is None else str(group), r.get("id"))


def _ppe_row(i: int, r: dict, layout: str) -> Item | str:
    if isinstance(r, BadRow):
        return r.error
    keys = sorted((int(m.group(1)), k) for k in r if (m := _RESPONSE_N.match(k)))
    prompt = r.get("prompt")
    if prompt is None:
        return "field 'prompt' is missing"
    if (why := check_prompt(prompt)) is not None:
        return f"field 'prompt' {why}"
    responses = [r[k] for _, k in keys]
    if len(responses) < 2 or not all(isinstance(x, str) for x in responses):
        return "fields response_1.. must be two or more strings"
    if layout == "ppe_preference":
        w = _winner(r.get("winner"))
        if w is None or len(responses) != 2:
            return f"field 'winner' must name response 1 or 2, got {r.get('winner')!r}"
        rewards = (1.0, 0.0) if w == 0 else (0.0, 1.0)
    else:
        scores = r.get("scores")
        if not isinstance(scores, list) or len(scores) != len(responses):
            return f"field 'scores' must be a list of {len(responses)} numbers"
        rewards = tuple(float(x) for x in scores)
    return Item(i, prompt, tuple(responses), rewards, r.get("subset"), r.get("id"))


def read_items(path: str | Path, keep=None) -> tuple[list[Item], dict[int, str], str]:
    """(items, {row: message} for bad rows, layout) of a GRM-item or preference file; with
    `keep(row)`, of those rows only (GRM and PPE rows are then the only ones made into Python
    objects and checked; RewardBench / RM-Bench files are read whole and filtered)."""
    numbered = list(enumerate(read_rows(path), 1)) if keep is None else read_row_subset(path, keep)
    rows = [r for _, r in numbered]
    if not rows:
        if keep is not None and read_rows(path):
            return [], {}, "grm"
        raise DataError(f"{path}: no rows")
    layout = _layout(rows, path)
    items, bad = [], {}
    if layout in ("rewardbench", "rmbench") and keep is not None:
        items, bad, layout = read_items(path)
        return [x for x in items if keep(x.row)], {r: m for r, m in bad.items() if keep(r)}, layout
    if layout in ("rewardbench", "rmbench"):
        good, bad = validate(rows, layout, path)
        for row in good:
            if layout == "rewardbench":
                items.append(Item(row.index, row.prompt, row.responses, (1.0, 0.0), row.group, row.id))
                continue
            chosen, rejected = row.responses[:3], row.responses[3:]
            for a in range(3):
                for b in range(3):
                    items.append(Item(row.index, row.prompt, (chosen[a], rejected[b]), (1.0, 0.0),
                                      row.group, row.id, pair=(a, b)))
        return items, bad, layout
    for i, r in numbered:
        got = _grm_row(i, r) if layout == "grm" else _ppe_row(i, r, layout)
        if isinstance(got, str):
            bad[i] = f"{path}: row {i}: {got}"
        else:
            items.append(got)
    return items, bad, layout
