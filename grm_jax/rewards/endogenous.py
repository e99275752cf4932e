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
Per-token rewards r_h are returned too (extension: per-token output). The LM head runs only over
the positions that predict response tokens, never over the prompt.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.logprobs import next_token_stats

REWARDS = ("sum", "mean", "logprob")


def token_rewards(q_BW: jax.Array, v_BW: jax.Array, count_B: jax.Array) -> jax.Array:
    """r_h for the response tokens h = 0 .. count - 1 of each row (Eq. 11 of the paper, γ = 1).

    Args:
      q_BW: q[h] = Q(s_h, a_h), the logit of response token h at the position before it.
      v_BW: v[h] = V(s_h) = α·logsumexp(logits / α) at that same position.
      count_B: response tokens per row.

    Returns:
      r_BW with r[h] = q[h] − v[h + 1] for h < count − 1, r[count − 1] = q[count − 1] (V = 0 at
      the terminal state), and 0 past the response.
    """
    h_W = jnp.arange(q_BW.shape[1])
    v_next_BW = jnp.concatenate([v_BW[:, 1:], jnp.zeros_like(v_BW[:, :1])], axis=1)
    v_next_BW = jnp.where(h_W[None] + 1 < count_B[:, None], v_next_BW, 0.0)
    return jnp.where(h_W[None] < count_B[:, None], q_BW - v_next_BW, 0.0)


def response_logprobs(q_BW, v_BW, count_B, alpha: float = 1.0) -> jax.Array:
    """log π(a_h | s_h) = (Q(s_h, a_h) − V(s_h)) / α for the response tokens, 0 past them."""
    h_W = jnp.arange(q_BW.shape[1])
    return jnp.where(h_W[None] < count_B[:, None], (q_BW - v_BW) / alpha, 0.0)


def endogenous_rewards(params, config: ModelConfig, tokens_BT, positions_BT, response_BT, *,
                       alpha: float = 1.0, chunk: int = 512, window: int | None = None,
                       mesh: Mesh | None = None, unrolled: bool = False) -> dict:
    """All endogenous rewards of a padded batch from one forward.

    Args:
      params, config: the decoder.
      tokens_BT, positions_BT: prompt + response per row (negative position = padding).
      response_BT: 1 at the response tokens (one contiguous run per row, after at least one
        prompt token), end-of-turn token included.
      alpha: soft-Q temperature α.
      chunk: positions per LM-head chunk (bounds the float32 logits held at once).
      window: static bound on the response tokens of any row (default T). The LM head runs over
        `window` positions per row, not over the prompt.
      mesh: device mesh for sharding constraints, or None.
      unrolled: run the layers as a Python loop rather than a scan (see `next_token_stats`).

    Returns:
      {"sum": R [B], "mean": [B], "logprob": [B], "value": V(s_1) [B], "count": [B],
       "tokens": r_h [B, window] (column h is the h-th response token; 0 past the response)}.
    """
    response_BT = response_BT.astype(jnp.int32)
    starts_B = jnp.argmax(response_BT, axis=1)
    count_B = response_BT.sum(axis=1)
    q_BW, v_BW = next_token_stats(params, config, tokens_BT, positions_BT, alpha=alpha, chunk=chunk,
                                  mesh=mesh, starts_B=starts_B, window=window or tokens_BT.shape[1],
                                  unrolled=unrolled)
    r_BW = token_rewards(q_BW, v_BW, count_B)
    total_B = r_BW.sum(axis=1)
    count_f = count_B.astype(jnp.float32)
    return {
        "sum": total_B,
        "mean": total_B / jnp.maximum(count_f, 1.0),
        "logprob": response_logprobs(q_BW, v_BW, count_B, alpha).sum(axis=1),
        "value": v_BW[:, 0],
        "tokens": r_BW,
        "count": count_f,
    }


@functools.lru_cache(maxsize=16)
def jitted_rewards(config: ModelConfig, mesh: Mesh | None, alpha: float = 1.0, chunk: int = 512,
                   unrolled: bool = False):
    """`endogenous_rewards` compiled per (config, mesh, α, chunk, unrolled) and shape: fn(params,
    tokens, positions, response, window) -> dict, `window` static."""
    def run(params, tokens_BT, positions_BT, response_BT, window):
        return endogenous_rewards(params, config, tokens_BT, positions_BT, response_BT,
                                  alpha=alpha, chunk=chunk, window=window, mesh=mesh, unrolled=unrolled)
    return jax.jit(run, static_argnums=4)
