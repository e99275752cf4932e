"""Next-token statistics from one forward, a chunk of positions at a time.

Scoring, the endogenous reward and the trainers all need, per position t, the logit of the token
that follows (Q(s_t, a_{t+1})) and the soft value α·logsumexp(logits_t / α). Computing them from
hidden states a chunk of positions at a time keeps the float32 logits of the whole batch
(B x T x V, e.g. 8 x 4096 x 152k x 4 bytes = 20 GB) from ever existing at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.decoder import Decoder, lm_head_logits, unstack_layers
from grm_jax.sharding import constrain


def next_token_stats(params, config: ModelConfig, tokens_BT: jax.Array, positions_BT: jax.Array, *,
                     alpha: float = 1.0, chunk: int = 512, mesh: Mesh | None = None,
                     starts_B: jax.Array | None = None, window: int | None = None,
                     unrolled: bool = False, remat: bool = False):
    """Per-position target logit and soft value.

    Args:
      params: decoder params.
      config: the model's config.
      tokens_BT, positions_BT: the batch (negative position = padding), as for `Decoder`.
      alpha: the soft-Q temperature α (1 for an ordinary LM).
      chunk: positions per LM-head chunk.
      mesh: device mesh for sharding constraints, or None.
      starts_B, window: if given, only the `window` positions from starts_B - 1 of each row are
        scored (the positions that predict tokens starts_B .. starts_B + window - 1): the LM head
        then never runs over the prompt.
      unrolled: run the layers as a Python loop over slices of the stacked params rather than a
        scan (faster forward and backward on CPU for small models; gradients still flow to the
        stacked params).
      remat: rematerialize each layer under a gradient (keeps only layer inputs).

    Returns:
      (q, v) float32, [B, T] (or [B, window] with starts_B). Without a window,
      q[:, t] = logits_t[tokens[:, t + 1]] (0 at t = T - 1) and v[:, t] = α·logsumexp(logits_t / α),
      so log π(tokens[t+1] | tokens[:t+1]) = (q[t] - v[t]) / α. With a window, column j is
      position p = starts_B - 1 + j (clipped to the row): q[j] is the logit of token p + 1.
    """
    B, T = tokens_BT.shape
    if unrolled:
        h_BTD, _ = Decoder(config, mesh, unrolled=True, remat=remat).apply(
            {"params": unstack_layers(params)}, tokens_BT, positions_BT, hidden_only=True)
    else:
        h_BTD, _ = Decoder(config, mesh, remat=remat).apply({"params": params}, tokens_BT, positions_BT,
                                                            hidden_only=True)
    next_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros_like(tokens_BT[:, :1])], axis=1)
    last = None
    if starts_B is not None:
        W = int(window or T)
        at_BW = jnp.clip(starts_B[:, None] - 1 + jnp.arange(W)[None, :], 0, T - 1)
        h_BTD = jnp.take_along_axis(h_BTD, at_BW[..., None], axis=1)
        next_BT = jnp.take_along_axis(next_BT, at_BW, axis=1)
        last = at_BW == T - 1
        T = W
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T
    h_BTD = jnp.pad(h_BTD, ((0, 0), (0, pad), (0, 0)))
    next_BT = jnp.pad(next_BT, ((0, 0), (0, pad)))
    h_nBCD = h_BTD.reshape(B, n, C, -1).swapaxes(0, 1)
    next_nBC = next_BT.reshape(B, n, C).swapaxes(0, 1)

    @jax.checkpoint  # under grad, recompute each chunk's logits rather than keeping them all
    def one(args):
        h_BCD, next_BC = args
        logits_BCV = constrain(lm_head_logits(params, config, h_BCD), ("batch", "length", "vocab"), mesh)
        q_BC = jnp.take_along_axis(logits_BCV, next_BC[..., None], axis=-1)[..., 0]
        v_BC = alpha * jax.nn.logsumexp(logits_BCV / alpha, axis=-1)
        return q_BC, v_BC

    q_nBC, v_nBC = jax.lax.map(one, (h_nBCD, next_nBC))
    q_BT = q_nBC.swapaxes(0, 1).reshape(B, n * C)[:, :T]
    v_BT = v_nBC.swapaxes(0, 1).reshape(B, n * C)[:, :T]
    if last is None:
        return q_BT.at[:, -1].set(0.0), v_BT
    return jnp.where(last, 0.0, q_BT), v_BT


def token_logprobs(params, config: ModelConfig, tokens_BT, positions_BT, *, chunk: int = 512,
                   mesh: Mesh | None = None, unrolled: bool = False, remat: bool = False) -> jax.Array:
    """log π(tokens[t] | tokens[:t]) aligned to the token it scores: [B, T], 0 at t = 0."""
    q_BT, v_BT = next_token_stats(params, config, tokens_BT, positions_BT, chunk=chunk, mesh=mesh,
                                  unrolled=unrolled, remat=remat)
    logp_BT = q_BT - v_BT
    return jnp.concatenate([jnp.zeros_like(logp_BT[:, :1]), logp_BT[:, :-1]], axis=1)
