"""A scalar value head on the decoder: the last real token's final hidden state -> one number.

Used by the scalar reward model baseline (Bradley-Terry) and the meta reward model (binary
cross-entropy on whether a GRM sample is correct). Params: {"kernel": [D], "bias": []}, float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.decoder import Decoder, init_cache, repeat_cache, unstack_layers


def init_value_head(config: ModelConfig, rng: jax.Array) -> dict:
    """kernel ~ normal(0, 1/sqrt(D)), bias 0."""
    D = config.embed_dim
    return {"kernel": jax.random.normal(rng, (D,), jnp.float32) / jnp.sqrt(D),
            "bias": jnp.zeros((), jnp.float32)}


def last_token_values(params, head: dict, config: ModelConfig, tokens_BT, positions_BT, *,
                      mesh: Mesh | None = None, unrolled: bool = False, prefix: int = 0) -> jax.Array:
    """Value [B] at each row's last real token (the one with the largest position). `unrolled`
    runs the layers as a Python loop over slices of the stacked params (faster on CPU for small
    models; the same function), and the last layer at that token alone (`hidden_at_B`).

    `prefix` (static): the caller promises every row's first `prefix` tokens are the same real
    tokens (a template's opening, `shared_prefix`): they run once, as one row, and the rest of
    every row over a copy of their KV cache (the same values, fewer tokens)."""
    last_B = jnp.argmax(positions_BT, axis=1)
    variables = {"params": unstack_layers(params) if unrolled else params}
    decoder = Decoder(config, mesh, unrolled=unrolled)
    if not prefix:
        h_BD, _ = decoder.apply(variables, tokens_BT, positions_BT, hidden_only=True, hidden_at_B=last_B)
        return h_BD.astype(jnp.float32) @ head["kernel"] + head["bias"]
    B, T = tokens_BT.shape
    cache = init_cache(config, 1, T, per_layer=unrolled)
    _, cache = decoder.apply(variables, tokens_BT[:1, :prefix], positions_BT[:1, :prefix], cache,
                             hidden_only=True, fresh_cache=True)
    h_BD, _ = decoder.apply(variables, tokens_BT[:, prefix:], positions_BT[:, prefix:], repeat_cache(cache, B),
                            hidden_only=True,
                            hidden_at_B=jnp.maximum(last_B - prefix, 0))  # 0: an all-padding row's
    return h_BD.astype(jnp.float32) @ head["kernel"] + head["bias"]


def shared_prefix(rows) -> int:
    """How many leading tokens all of `rows` (token id sequences) share, short of the shortest
    row's last token (a value head reads that one: it must stay in each row's own part)."""
    rows = [list(r) for r in rows]
    if not rows:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(0, n)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(0, n)
