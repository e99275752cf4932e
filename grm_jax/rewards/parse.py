"""Scores out of a generative reward model's reply (PAPERS.md part A, Eq. 7).

A reply ends with `Scores: \\boxed{7, 3}`: one integer per response, in order. Anything else is a
parse failure with a reason, never an exception:

  no_box          no \\boxed{...} anywhere
  several_boxes   more than one box on the Scores line (or, without a Scores line, in the reply)
  truncated       a box that is opened but never closed, or a reply cut by the length limit
  wrong_count     a list of the wrong length
  non_integer     an entry that is not a plain ASCII integer (7.5, seven, fullwidth digits, {7})
  out_of_range    an integer outside [low, high] (negative numbers included)

Boxes inside the analysis are ignored when the reply has a `Scores:` line (the marker): only the
boxes after its last `Scores:` count.
"""

from __future__ import annotations

import dataclasses
import re

REASONS = ("no_box", "several_boxes", "truncated", "wrong_count", "non_integer", "out_of_range")
_BOX = "\\boxed{"
_INT = re.compile(r"[+-]?[0-9]+")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """Either `scores` (a tuple of ints) or a failure `reason` from REASONS."""

    scores: tuple[int, ...] | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


def _boxes(text: str) -> tuple[list[str], bool]:
    """Contents of every top-level \\boxed{...} (braces balanced), and whether one is unclosed."""
    out, i = [], 0
    while True:
        at = text.find(_BOX, i)
        if at < 0:
            return out, False
        j, depth = at + len(_BOX), 1
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            return out, True
        out.append(text[at + len(_BOX):j - 1])
        i = j


def parse_scores(text: str, n: int, low: int = 1, high: int = 10, *, truncated: bool = False,
                 marker: str = "Scores:") -> Parsed:
    """The n scores of a reply, or why there are none.

    Args:
      text: the generated reply.
      n: responses scored (the list must have exactly n entries).
      low, high: the inclusive score range (1..10 multi-response, 0..1 single-response).
      truncated: the sampler stopped the reply at its length limit.
      marker: the line label before the box ("Scores:"; "Best:" for the judge baseline).
    """
    at = text.rfind(marker)
    region = text[at:] if at >= 0 and _BOX in text[at:] else text
    boxes, unclosed = _boxes(region)
    if truncated and not boxes:
        return Parsed(None, "truncated")
    if unclosed and not boxes:
        return Parsed(None, "truncated")
    if not boxes:
        return Parsed(None, "no_box")
    if len(boxes) > 1:
        return Parsed(None, "several_boxes")
    items = boxes[0].split(",")
    if len(items) != n:
        return Parsed(None, "wrong_count")
    scores = []
    for item in items:
        item = item.strip()
        if not _INT.fullmatch(item):
            return Parsed(None, "non_integer")
        scores.append(int(item))
    if any(not low <= s <= high for s in scores):
        return Parsed(None, "out_of_range")
    return Parsed(tuple(scores))
