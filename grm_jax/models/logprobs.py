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
    T = tokens_BT.shape[1]
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
    q_BT, v_BT = target_stats(params, config, h_BTD, next_BT, alpha=alpha, chunk=chunk, mesh=mesh)
    if last is None:
        return q_BT.at[:, -1].set(0.0), v_BT
    return jnp.where(last, 0.0, q_BT), v_BT


def target_stats(params, config: ModelConfig, h_BTD: jax.Array, targets_BT: jax.Array, *, alpha: float = 1.0,
                 chunk: int = 512, mesh: Mesh | None = None):
    """(q, v) [B, T] float32 of the logits that the LM head makes of final hidden states `h_BTD`:
    q = the logit of `targets_BT`, v = α·logsumexp(logits / α), `chunk` positions at a time."""
    B, T = targets_BT.shape
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T
    h_BTD = jnp.pad(h_BTD, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    h_nBCD = h_BTD.reshape(B, n, C, -1).swapaxes(0, 1)
    targets_nBC = targets_BT.reshape(B, n, C).swapaxes(0, 1)

    @jax.checkpoint  # under grad, recompute each chunk's logits rather than keeping them all
    def one(args):
        h_BCD, targets_BC = args
        logits_BCV = constrain(lm_head_logits(params, config, h_BCD), ("batch", "length", "vocab"), mesh)
        q_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
        v_BC = alpha * jax.nn.logsumexp(logits_BCV / alpha, axis=-1)
        return q_BC, v_BC

    q_nBC, v_nBC = jax.lax.map(one, (h_nBCD, targets_nBC))
    return (q_nBC.swapaxes(0, 1).reshape(B, n * C)[:, :T], v_nBC.swapaxes(0, 1).reshape(B, n * C)[:, :T])


def token_logprobs(params, config: ModelConfig, tokens_BT, positions_BT, *, chunk: int = 512,
                   mesh: Mesh | None = None, unrolled: bool = False, remat: bool = False) -> jax.Array:
    """log π(tokens[t] | tokens[:t]) aligned to the token it scores: [B, T], 0 at t = 0."""
    q_BT, v_BT = next_token_stats(params, config, tokens_BT, positions_BT, chunk=chunk, mesh=mesh,
                                  unrolled=unrolled, remat=remat)
    logp_BT = q_BT - v_BT
    return jnp.concatenate([jnp.zeros_like(logp_BT[:, :1]), logp_BT[:, :-1]], axis=1)


def shared_prompt_logprobs(params, config: ModelConfig, prompt_tokens_PT, prompt_positions_PT, tokens_RN,
                           positions_RN, group_size: int, *, chunk: int = 512, mesh: Mesh | None = None,
                           unrolled: bool = False, remat: bool = False) -> jax.Array:
    """log π(response token | its prompt, the tokens before it): [R, N] (0 at padding), for R = P·G
    responses whose rows r·G … r·G + G − 1 continue prompt r — the log-probs `token_logprobs` gives
    the rows prompt + response, with each prompt run once rather than G times.

    The prompts ([P, Tp], left-padded, negative position = padding) run first and leave their keys
    and values in a KV cache; the cache is repeated G times along the batch and the responses
    ([R, N], right-padded, positions continuing their prompt's: len(prompt), …) run over it, each
    attending to its prompt's real tokens and its own earlier tokens (attention is causal over
    cache slots; left-padded prompts keep slots and positions a constant offset apart, so sliding
    windows hold too). A response's first token is scored from its prompt's last hidden state.
    Under a gradient, a prompt's G responses add up their gradients through the shared cache.
    """
    from grm_jax.models.decoder import init_cache, repeat_cache

    P, Tp = prompt_tokens_PT.shape
    R, N = tokens_RN.shape
    if R != P * group_size:
        raise ValueError(f"{R} responses are not {group_size} per prompt of {P}")
    decoder = Decoder(config, mesh, unrolled=unrolled, remat=remat)
    variables = {"params": unstack_layers(params) if unrolled else params}
    cache = init_cache(config, P, Tp + N, per_layer=unrolled)
    h_PTD, cache = decoder.apply(variables, prompt_tokens_PT, prompt_positions_PT, cache, hidden_only=True,
                                 fresh_cache=True)
    h_RND, _ = decoder.apply(variables, tokens_RN, positions_RN, repeat_cache(cache, group_size), hidden_only=True)
    last_P = jnp.argmax(prompt_positions_PT, axis=1)  # the prompt's last real token
    h_last_RD = jnp.repeat(jnp.take_along_axis(h_PTD, last_P[:, None, None], axis=1)[:, 0], group_size, axis=0)
    h_prev_RND = jnp.concatenate([h_last_RD[:, None].astype(h_RND.dtype), h_RND[:, :-1]], axis=1)
    q_RN, v_RN = target_stats(params, config, h_prev_RND, tokens_RN, chunk=chunk, mesh=mesh)
    return jnp.where(positions_RN >= 0, q_RN - v_RN, 0.0)
