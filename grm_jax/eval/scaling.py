"""Voting@k and MetaRM@k curves from the K samples a judge already drew per item: each point is
the expected accuracy of voting over k of them, over every k-subset (or `scaling_draws` random
ones), with the random tie-break of `grm_jax.eval.judge` counted at its expected value."""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from grm_jax.data.grm_items import Item

if TYPE_CHECKING:
    from grm_jax.eval.judge import JudgeOptions


def _subsets(n_samples: int, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[D, k] sample indices: every k-subset of the samples when there are at most `draws` of them,
    else `draws` random k-subsets (each drawn without replacement)."""
    if math.comb(n_samples, k) <= draws:
        return _all_subsets(n_samples, k)
    return np.sort(np.argsort(rng.random((draws, n_samples)), axis=1)[:, :k], axis=1)


@functools.lru_cache(maxsize=64)
def _all_subsets(n_samples: int, k: int) -> np.ndarray:
    return np.asarray(list(itertools.combinations(range(n_samples), k)), np.int64).reshape(-1, k)


def _subset_hits(item: Item, samples: list[dict], subsets: np.ndarray, method: str,
                 k_meta: int | None) -> np.ndarray:
    """[D] float: for each subset of samples, the probability that voting over it chooses a best
    response, by the rules of `grm_jax.eval.judge._combine` (meta filter, `vote`) and
    `_item_correct`, with the random tie-break taken at its expected value (a tie among m
    responses, b of them best, counts b / m); for many subsets at once."""
    n = len(item.responses)
    parsed = np.asarray([s["scores"] is not None for s in samples])
    scores = np.asarray([s["scores"] if s["scores"] is not None else [0] * n for s in samples], np.float64)
    if k_meta is not None and all("meta" in s for s in samples):
        meta = np.asarray([s["meta"] for s in samples], np.float64)
        top = np.argsort(-meta[subsets], axis=1, kind="stable")[:, :min(k_meta, subsets.shape[1])]
        subsets = np.take_along_axis(subsets, top, axis=1)
    mask = parsed[subsets]                                   # [D, k]
    s = scores[subsets] * mask[..., None]                    # [D, k, n]; unparsed samples vote nothing
    counted = mask.sum(axis=1)                               # [D]
    if n == 1:
        mean = s[..., 0].sum(axis=1) / np.maximum(counted, 1)
        return ((counted > 0) & (np.round(mean) == item.rewards[0])).astype(np.float64)
    if method == "sum":
        votes = s.sum(axis=1)
    elif method == "mean":
        votes = s.sum(axis=1) / np.maximum(counted, 1)[:, None]
    else:  # majority: how many parsed samples put each response alone on top
        top = (scores[subsets] == scores[subsets].max(axis=2, keepdims=True)) & mask[..., None]
        votes = (top & (top.sum(axis=2, keepdims=True) == 1)).sum(axis=1).astype(np.float64)
    tied = votes == votes.max(axis=1, keepdims=True)
    rewards = np.asarray(item.rewards, np.float64)
    best = rewards == rewards.max()
    return np.where(counted > 0, (tied & best).sum(axis=1) / tied.sum(axis=1), 0.0)


def scaling_curve(judged: dict, ks: Sequence[int], opts: JudgeOptions) -> list[dict]:
    """Accuracy per k: the expected accuracy of voting over k of each item's K samples (no
    regeneration), averaged over every k-subset when there are at most `scaling_draws` of them
    (k = 1, 2 and K of 16 samples by default) and over `scaling_draws` random k-subsets otherwise,
    with each random tie-break counted at its expected value. The meta filter keeps max(1, k // 2)
    of each subset (or k_meta when smaller). At k = K this is the main result's expected value;
    the main result itself breaks each tie once, so the two can differ by that draw's luck."""
    results = judged["results"]
    rows = []
    for k in ks:
        if not 1 <= k <= opts.k:
            raise ValueError(f"scaling k={k} is outside 1..{opts.k} (the samples drawn per item)")
        k_meta = None if judged["k_meta"] is None else min(judged["k_meta"], max(1, k // 2))
        hits, count, draws = 0.0, 0, 1
        for r in results:
            if r["correct"] is None:
                continue
            subsets = _subsets(opts.k, k, opts.scaling_draws, np.random.default_rng([opts.seed, r["index"], k, 7]))
            hits += float(_subset_hits(r["item"], r["samples"], subsets, opts.vote, k_meta).mean())
            count, draws = count + 1, len(subsets)
        rows.append({"k": k, "accuracy": hits / count if count else float("nan"), "items": count,
                     "draws": draws, "every_subset": draws == math.comb(opts.k, k), "k_meta": k_meta})
    return rows
