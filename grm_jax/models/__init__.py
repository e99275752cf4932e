"""Flax decoder models and their configuration."""

from grm_jax.models.config import FULL, SLIDING, ModelConfig, RopeConfig, dtype_of
from grm_jax.models.decoder import (CACHE_LOGICAL_NAMES, Decoder, abstract_params, init_cache,
                                    init_params, lm_head_logits, positions_from_mask, unstack_layers)
from grm_jax.models.logprobs import next_token_stats, token_logprobs
from grm_jax.models.families import FAMILIES, UnsupportedModelError, from_hf_config, to_hf_config

__all__ = [
    "CACHE_LOGICAL_NAMES", "FAMILIES", "FULL", "SLIDING", "Decoder", "ModelConfig", "RopeConfig",
    "UnsupportedModelError", "abstract_params", "dtype_of", "from_hf_config", "init_cache",
    "init_params", "lm_head_logits", "next_token_stats", "positions_from_mask", "to_hf_config",
    "token_logprobs", "unstack_layers",
]
