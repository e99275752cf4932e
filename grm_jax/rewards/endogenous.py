"""Endogenous rewards: a language model's logits read as a soft Q-function (arXiv 2506.23235).

Token MDP: the state s_h is the prompt plus the response tokens before a_h. With Q = logits and
soft value V(s) = α·logsumexp(Q(s, ·)/α), the inverse soft Bellman operator (γ = 1) gives

    r(s_h, a_h) = Q(s_h, a_h) − V(s_{h+1}),      V = 0 after the last response token,

and the paper's sequence reward is the sum over the response tokens,

    R = Σ_h r_h = α·log π(response | prompt) + V(s_1).

Mind the causal shift: Q(s_h, ·) are the logits at the position *before* a_h.

Reductions (`REWARDS`):
  sum      the paper's R.
  mean     extension: R / number of response tokens (length-normalized).
  logprob  extension: Σ_h log π(a_h | s_h), R without V(s_1) and without α.
Per-token rewards r_h are returned too (extension: per-token output).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.logprobs import next_token_stats

REWARDS = ("sum", "mean", "logprob")


def token_rewards(q_BT: jax.Array, v_BT: jax.Array, response_BT: jax.Array) -> jax.Array:
    """r at each response token, 0 elsewhere (Eq. 11 of the paper, γ = 1).

    Args:
      q_BT: q[t] = Q(s_t, tokens[t + 1]), the logit of the next token at position t.
      v_BT: v[t] = V(s after tokens[: t + 1]) = α·logsumexp(logits_t / α).
      response_BT: 1 at response tokens (one contiguous run per row, not at position 0).

    Returns:
      r_BT with r[j] = q[j - 1] − v[j] at response token j, and r[j] = q[j - 1] at its last one.
    """
    resp = response_BT.astype(bool)
    q_prev_BT = jnp.concatenate([jnp.zeros_like(q_BT[:, :1]), q_BT[:, :-1]], axis=1)
    resp_next = jnp.concatenate([resp[:, 1:], jnp.zeros_like(resp[:, :1])], axis=1)
    v_next_BT = jnp.where(resp_next, v_BT, 0.0)  # V = 0 at the terminal state
    return jnp.where(resp, q_prev_BT - v_next_BT, 0.0)


def response_logprobs(q_BT, v_BT, response_BT, alpha: float = 1.0) -> jax.Array:
    """log π(a_h | s_h) = (Q(s_h, a_h) − V(s_h)) / α at each response token, 0 elsewhere."""
    logp_BT = (q_BT - v_BT) / alpha
    logp_prev_BT = jnp.concatenate([jnp.zeros_like(logp_BT[:, :1]), logp_BT[:, :-1]], axis=1)
    return jnp.where(response_BT.astype(bool), logp_prev_BT, 0.0)


def initial_values(v_BT, response_BT) -> jax.Array:
    """V(s_1) per row: the soft value at the position before the first response token."""
    resp = response_BT.astype(bool)
    first_B = jnp.argmax(resp, axis=1)
    return jnp.take_along_axis(v_BT, jnp.maximum(first_B - 1, 0)[:, None], axis=1)[:, 0]


def endogenous_rewards(params, config: ModelConfig, tokens_BT, positions_BT, response_BT, *,
                       alpha: float = 1.0, chunk: int = 512, mesh: Mesh | None = None) -> dict:
    """All endogenous rewards of a padded batch from one forward.

    Args:
      params, config: the decoder.
      tokens_BT, positions_BT: prompt + response per row (negative position = padding).
      response_BT: 1 at the response tokens, end-of-turn token included.
      alpha: soft-Q temperature α.
      chunk: positions per LM-head chunk (bounds the float32 logits held at once).
      mesh: device mesh for sharding constraints, or None.

    Returns:
      {"sum": R [B], "mean": [B], "logprob": [B], "value": V(s_1) [B], "tokens": r [B, T],
       "count": response tokens [B]}.
    """
    q_BT, v_BT = next_token_stats(params, config, tokens_BT, positions_BT, alpha=alpha, chunk=chunk,
                                  mesh=mesh)
    r_BT = token_rewards(q_BT, v_BT, response_BT)
    count_B = response_BT.astype(jnp.float32).sum(axis=1)
    total_B = r_BT.sum(axis=1)
    return {
        "sum": total_B,
        "mean": total_B / jnp.maximum(count_B, 1.0),
        "logprob": response_logprobs(q_BT, v_BT, response_BT, alpha).sum(axis=1),
        "value": initial_values(v_BT, response_BT),
        "tokens": r_BT,
        "count": count_B,
    }


@functools.lru_cache(maxsize=16)
def jitted_rewards(config: ModelConfig, mesh: Mesh | None, alpha: float = 1.0, chunk: int = 512):
    """`endogenous_rewards` compiled once per (config, mesh, α, chunk): fn(params, tokens,
    positions, response) -> dict."""
    def run(params, tokens_BT, positions_BT, response_BT):
        return endogenous_rewards(params, config, tokens_BT, positions_BT, response_BT,
                                  alpha=alpha, chunk=chunk, mesh=mesh)
    return jax.jit(run)
