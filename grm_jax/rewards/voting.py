"""Correctness of one GRM sample (Eq. 10), voting over k samples (Eq. 14), meta-RM filtering,
and the response shuffles that fight position bias (PAPERS.md part A).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

VOTES = ("sum", "mean", "majority")


def is_correct(scores: Sequence[int] | None, rewards: Sequence[float]) -> bool:
    """Eq. 10. n >= 2: S_j > S_i for every i != j, where j = argmax r (the ground truth must have
    a unique maximum); a tie at the top of S is wrong. n = 1: S_1 == r_1. A parse failure
    (scores None) is wrong.
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"rewards must be a non-empty list, got {rewards!r}")
    if scores is None:
        return False
    s = np.asarray(scores, np.float64)
    if s.shape != r.shape:
        raise ValueError(f"{len(s)} scores for {len(r)} rewards")
    if r.size == 1:
        return bool(s[0] == r[0])
    j = int(np.argmax(r))
    if (r == r[j]).sum() > 1:
        raise ValueError(f"ground-truth rewards {list(rewards)} have no unique maximum")
    return bool((s[j] > np.delete(s, j)).all())


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """perm[p] = the original index of the response shown at position p."""
    return rng.permutation(n)


def unshuffle(scores_shown: Sequence[int], perm: Sequence[int]) -> list[int]:
    """Scores in original response order from scores in shown order."""
    out = [0] * len(perm)
    for shown, original in enumerate(perm):
        out[original] = int(scores_shown[shown])
    return out


def vote(samples: Sequence[Sequence[int] | None], n: int, method: str = "sum") -> np.ndarray:
    """Combined score per response from k samples; samples that failed to parse (None) are
    skipped. sum: Eq. 14, S*_i = Σ_j S_{i,j}. Extensions: mean (sum / parsed samples) and
    majority (how many samples put response i alone on top).

    Returns:
      [n] float array (all zero when no sample parsed).
    """
    if method not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}, got {method!r}")
    rows = [list(x) for x in samples if x is not None]
    if any(len(r) != n for r in rows):
        raise ValueError(f"every parsed sample must have {n} scores")
    if not rows:
        return np.zeros(n)
    s = np.asarray(rows, np.float64)
    if method == "sum":
        return s.sum(axis=0)
    if method == "mean":
        return s.mean(axis=0)
    top = s == s.max(axis=1, keepdims=True)
    alone = top.sum(axis=1) == 1
    return (top & alone[:, None]).sum(axis=0).astype(np.float64)


def choose(votes_n, rng: np.random.Generator) -> int:
    """The index with the highest vote; ties broken by a seeded random choice."""
    v = np.asarray(votes_n, np.float64)
    best = np.flatnonzero(v == v.max())
    return int(best[0]) if best.size == 1 else int(rng.choice(best))


def meta_keep(meta_scores_k, k_meta: int) -> np.ndarray:
    """Indices of the k_meta samples the meta RM rates highest (stable order on ties)."""
    m = np.asarray(meta_scores_k, np.float64)
    if not 1 <= k_meta <= m.size:
        raise ValueError(f"k_meta must be in 1..{m.size}, got {k_meta}")
    return np.sort(np.argsort(-m, kind="stable")[:k_meta])
