"""Supervised fine-tuning: next-token loss on response tokens only (cold start, and RFT data).

Batch: "tokens", "positions" [B, T] (negative position = padding) and "loss_mask" [B, T], 1 at
the tokens whose prediction is trained (the response, end-of-turn included). The loss is the
mean negative log-likelihood over all loss tokens of the batch.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.logprobs import token_logprobs


def sft_loss_fn(config: ModelConfig, *, chunk: int = 512, mesh: Mesh | None = None):
    """loss(params, microbatch, n_tokens) -> (Σ NLL / n_tokens, {"tokens", "nll_sum"})."""
    def loss(params, mb, n_tokens):
        logp_BT = token_logprobs(params, config, mb["tokens"], mb["positions"], chunk=chunk, mesh=mesh)
        mask_BT = mb["loss_mask"].astype(jnp.float32)
        nll = -(logp_BT * mask_BT).sum()
        return nll / n_tokens, {"tokens": mask_BT.sum(), "nll_sum": nll}
    return loss


def sft_normalizer(batch) -> jnp.ndarray:
    """The batch's loss-token count (at least 1)."""
    return jnp.maximum(batch["loss_mask"].astype(jnp.float32).sum(), 1.0)
