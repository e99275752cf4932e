"""GRPO math as small pure functions (PAPERS.md part A, stage 2), each with its equation.

Shapes: per-token arrays are [B, T] over B sampled sequences, with a response mask [B, T] that is
1 at the generated tokens. Log-probs are of the sampled tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("sequence_mean", "token_mean", "sequence_sum")


def group_advantages(rewards_B: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
    """Â_i = (r_i − mean(r)) / (std(r) + eps) within each group of `group_size` consecutive rows.

    std is the population standard deviation of the group; a group whose rewards are all equal
    gets Â = 0 (no NaN), so it adds nothing but the KL term.
    """
    r_NG = rewards_B.reshape(-1, group_size).astype(jnp.float32)
    centered = r_NG - r_NG.mean(axis=1, keepdims=True)
    std = jnp.sqrt(jnp.mean(centered ** 2, axis=1, keepdims=True))
    return (centered / (std + eps)).reshape(-1)


def clipped_surrogate(logp_BT, old_logp_BT, adv_B, eps_low: float = 0.2, eps_high: float | None = None):
    """Per-token PPO objective (to maximize): min(ρ·Â, clip(ρ, 1 − ε_low, 1 + ε_high)·Â),
    ρ = exp(log π_θ − log π_old). Returns (objective [B, T], clipped [B, T] bool)."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = jnp.exp(logp_BT - old_logp_BT)
    adv = adv_B[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    return jnp.minimum(unclipped, clipped), clipped < unclipped


def kl_estimate(logp_BT, ref_logp_BT, kind: str = "k3") -> jax.Array:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ, q = log π_ref − log π_θ:
    k1 = −q (unbiased), k2 = q²/2, k3 = exp(q) − q − 1 (unbiased, non-negative)."""
    q = ref_logp_BT - logp_BT
    if kind == "k1":
        return -q
    if kind == "k2":
        return 0.5 * q ** 2
    if kind == "k3":
        return jnp.exp(q) - q - 1.0
    raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {kind!r}")


def aggregate(per_token_BT, mask_BT, mode: str = "sequence_mean") -> jax.Array:
    """One scalar from per-token values over the response tokens.

    sequence_mean: (1/B) Σ_i (1/|o_i|) Σ_t x_{i,t} — the paper's objective.
    token_mean:    Σ x / Σ |o_i| (every token weighs the same; extension).
    sequence_sum:  (1/B) Σ_i Σ_t x_{i,t} / T (a constant normalizer, no length bias; extension).
    """
    mask = mask_BT.astype(per_token_BT.dtype)
    x = per_token_BT * mask
    if mode == "sequence_mean":
        return jnp.mean(x.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0))
    if mode == "token_mean":
        return x.sum() / jnp.maximum(mask.sum(), 1.0)
    if mode == "sequence_sum":
        return jnp.mean(x.sum(axis=1)) / per_token_BT.shape[1]
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def grpo_loss(logp_BT, old_logp_BT, ref_logp_BT, adv_B, mask_BT, *, eps_low: float = 0.2,
              eps_high: float | None = None, beta: float = 0.08, kl: str = "k3",
              aggregation: str = "sequence_mean"):
    """−J of the GRPO objective: −agg[min(ρÂ, clip(ρ)Â) − β·KL]. Returns (loss, metrics)."""
    objective, clipped = clipped_surrogate(logp_BT, old_logp_BT, adv_B, eps_low, eps_high)
    per_token = objective
    kl_BT = None
    if beta:
        kl_BT = kl_estimate(logp_BT, ref_logp_BT, kl)
        per_token = per_token - beta * kl_BT
    loss = -aggregate(per_token, mask_BT, aggregation)
    metrics = {"clip_fraction": aggregate(clipped.astype(jnp.float32), mask_BT, "token_mean"),
               "ratio_mean": aggregate(jnp.exp(logp_BT - old_logp_BT), mask_BT, "token_mean")}
    if kl_BT is not None:
        metrics["kl"] = aggregate(kl_BT, mask_BT, "sequence_mean")
    return loss, metrics
