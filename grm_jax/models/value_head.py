"""A scalar value head on the decoder: the last real token's final hidden state -> one number.

Used by the scalar reward model baseline (Bradley-Terry) and the meta reward model (binary
cross-entropy on whether a GRM sample is correct). Params: {"kernel": [D], "bias": []}, float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.decoder import Decoder, unstack_layers


def init_value_head(config: ModelConfig, rng: jax.Array) -> dict:
    """kernel ~ normal(0, 1/sqrt(D)), bias 0."""
    D = config.embed_dim
    return {"kernel": jax.random.normal(rng, (D,), jnp.float32) / jnp.sqrt(D),
            "bias": jnp.zeros((), jnp.float32)}


def last_token_values(params, head: dict, config: ModelConfig, tokens_BT, positions_BT, *,
                      mesh: Mesh | None = None, unrolled: bool = False) -> jax.Array:
    """Value [B] at each row's last real token (the one with the largest position). `unrolled`
    runs the layers as a Python loop over slices of the stacked params (faster on CPU for small
    models; the same function), and the last layer at that token alone (`hidden_at_B`)."""
    last_B = jnp.argmax(positions_BT, axis=1)
    variables = {"params": unstack_layers(params) if unrolled else params}
    h_BD, _ = Decoder(config, mesh, unrolled=unrolled).apply(variables, tokens_BT, positions_BT, hidden_only=True,
                                                             hidden_at_B=last_B)
    return h_BD.astype(jnp.float32) @ head["kernel"] + head["bias"]
