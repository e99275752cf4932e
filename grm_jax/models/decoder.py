"""The decoder: embedding, a scanned stack of blocks, final norm and LM head.

`Decoder(config).apply({"params": params}, tokens, positions, cache=cache) -> (logits, cache)`.

Padding is carried by `positions`: a negative position marks a padding token, which no query
attends to. Attention is causal over cache *slots* (as in transformers), so a left-padded batch
whose rows end at the same slot decodes together.

The KV cache is an explicit pytree `{"k": [L,B,K,S,H], "v": [L,B,K,S,H], "positions": [B,S],
"end": []}`: `end` is the next slot to write. Without a cache the queries attend to the new
tokens alone and no key/value buffers are kept. With `init_cache(..., per_layer=True)` "k" and
"v" are tuples of L buffers [B,K,S,H] instead (for the unrolled decoder only): a decode step
then updates and reads each layer's own buffer, never an operand the size of the whole stack.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from grm_jax.models.config import SLIDING, ModelConfig, dtype_of
from grm_jax.models.layers import Attention, Mlp, RMSNorm, _param, rope_tables, take_rows
from grm_jax.sharding import constrain

Cache = dict


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
    """Positions 0.. of the real tokens of each row, -1 at padding (mask is 1 at real tokens)."""
    mask_BT = jnp.asarray(mask_BT).astype(jnp.int32)
    return jnp.where(mask_BT > 0, jnp.cumsum(mask_BT, axis=-1) - 1, -1)


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None, *, per_layer: bool = False) -> Cache:
    """An empty KV cache for `batch` rows of up to `length` tokens; `per_layer`: one buffer per
    layer (for `Decoder(unrolled=True)`)."""
    dtype = dtype or dtype_of(config.dtype)
    shape = (batch, config.num_kv_heads, length, config.head_dim)
    if per_layer:
        k = v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    else:
        k = v = jnp.zeros((config.num_layers, *shape), dtype)
    return {"k": k, "v": v, "positions": jnp.full((batch, length), -1, jnp.int32), "end": jnp.zeros((), jnp.int32)}


def repeat_cache(cache: Cache, times: int) -> Cache:
    """`cache` with each row repeated `times` times in place (row r becomes rows r·times …
    r·times + times − 1): continuations of one prompt reading one copy of its keys and values each."""
    per_layer = isinstance(cache["k"], (tuple, list))
    axis = 0 if per_layer else 1  # the batch axis of a per-layer [B, K, S, H] / stacked [L, B, K, S, H] buffer

    def rows(x, axis):
        return jnp.repeat(x, times, axis=axis)

    return {"k": jax.tree.map(lambda x: rows(x, axis), cache["k"]),
            "v": jax.tree.map(lambda x: rows(x, axis), cache["v"]),
            "positions": rows(cache["positions"], 0), "end": cache["end"]}


CACHE_LOGICAL_NAMES = {
    "k": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "v": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "positions": ("batch", "cache_length"),
    "end": (),
}


def cache_logical_names(cache: Cache) -> dict:
    """Logical axis names of each leaf of `cache` (stacked or per-layer)."""
    out = dict(CACHE_LOGICAL_NAMES)
    for key in ("k", "v"):
        if isinstance(cache[key], (tuple, list)):
            out[key] = tuple(CACHE_LOGICAL_NAMES[key][1:] for _ in cache[key])
    return out


class Block(nn.Module):
    """One pre-norm transformer block (with Gemma's extra post-norms when configured).

    `fresh`: the cache held nothing before these tokens (see `Decoder.__call__`)."""

    config: ModelConfig
    mesh: Mesh | None = None
    fresh: bool = False

    @nn.compact
    def __call__(self, carry, xs, shared, at_B=None):
        """`at_B` [B]: the block's output only at position index at_B of each row ([B, 1, D]; the
        keys and values still come from every position)."""
        cfg = self.config
        x_BTD, kv_LBKSH = carry
        is_sliding, layer = xs
        kv = None if kv_LBKSH is None else (*kv_LBKSH, layer)
        tables, mask_full, mask_sliding, start, positions_BT = shared
        mask_BTS = jnp.where(is_sliding, mask_sliding, mask_full) if cfg.has_sliding else mask_full
        if len(tables) == 2:  # sliding layers have their own RoPE base (Gemma 3)
            (cos_g, sin_g), (cos_l, sin_l) = tables
            cos_sin = (jnp.where(is_sliding, cos_l, cos_g), jnp.where(is_sliding, sin_l, sin_g))
        else:
            cos_sin = tables[0]

        def norm(name):
            return RMSNorm(cfg.norm_eps, cfg.norm_plus_one, cfg.param_dtype, name=name)

        h = norm("pre_attn_norm")(x_BTD)
        h, kv = Attention(cfg, self.mesh, name="attn")(h, cos_sin, mask_BTS, kv, start,
                                                       positions_BT, is_sliding, self.fresh, at_B)
        if cfg.sandwich_norms:
            h = norm("post_attn_norm")(h)
        if at_B is not None:
            x_BTD = take_rows(x_BTD, at_B)
        x_BTD = x_BTD + h
        h = Mlp(cfg, self.mesh, name="mlp")(norm("pre_mlp_norm")(x_BTD))
        if cfg.sandwich_norms:
            h = norm("post_mlp_norm")(h)
        x_BTD = constrain(x_BTD + h, ("batch", "length", "embed"), self.mesh)
        return (x_BTD, None if kv is None else kv[:2]), None


class Decoder(nn.Module):
    """Decoder-only language model for every supported family (see ModelConfig).

    Params keep the layers stacked (`params["layers"]`, leading axis L) and the stack runs as a
    scan. `unrolled=True` runs a Python loop over per-layer params instead (`unstack_layers`
    makes them): on CPU, XLA copies each layer's weights out of the stack inside a scan, which
    doubled the time of a memory-bound decode step, so the sampler unstacks once per call.
    `remat=True` rematerializes each layer under a gradient: only the layer inputs are kept for
    the backward pass (what makes long sequences of a large model fit; `grm-jax plan` counts it).
    """

    config: ModelConfig
    mesh: Mesh | None = None
    unrolled: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, cache: Cache | None = None, *,
                 hidden_only: bool = False, fresh_cache: bool = False, read_slots: int | None = None,
                 hidden_at_B: jax.Array | None = None):
        """Runs the model on `tokens_BT` placed at cache slots [cache.end, cache.end + T).

        Args:
          tokens_BT: int token ids.
          positions_BT: int positions; negative marks padding.
          cache: KV cache from `init_cache` (or a previous call), or None for a plain forward.
          hidden_only: skip the LM head and return (hidden states, cache); pair with
            `lm_head_logits` to compute logits a chunk at a time.
          fresh_cache: the caller promises `cache` holds nothing yet (a prefill into
            `init_cache`): attention then runs over the new tokens alone ([T, T], and splash
            can run), the cache is still written.
          read_slots: attend over the cache's first `read_slots` slots only (static): the
            caller promises every query's slot is below it (the sampler's decode phases).
          hidden_at_B: with `hidden_only`, the final hidden state only at index hidden_at_B[b]
            of each row's new tokens (a value head's token): the unrolled decoder then runs the
            last layer's queries, attention output and MLP at those tokens alone.

        Returns:
          (logits [B, T, V] in float32, the updated cache or None); with `hidden_only`, the
          final-norm hidden states [B, T, D] in place of the logits ([B, D] with `hidden_at_B`).
        """
        cfg = self.config
        B, T = tokens_BT.shape
        dtype, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        use_cache = cache is not None
        if hidden_at_B is not None and not hidden_only:
            raise ValueError("hidden_at_B needs hidden_only=True")
        per_layer = use_cache and isinstance(cache["k"], (tuple, list))
        if per_layer and not self.unrolled:
            raise ValueError("a per-layer cache needs Decoder(unrolled=True)")
        if use_cache:
            start, S, past_positions_BS = cache["end"], cache["positions"].shape[1], cache["positions"]
            kv = (cache["k"], cache["v"])
        else:
            start, S, past_positions_BS, kv = jnp.zeros((), jnp.int32), T, jnp.full((B, T), -1, jnp.int32), None

        embedding_VD = _param(self, "embedding", ("vocab", "embed"), (cfg.vocab_size, cfg.embed_dim), pdt)
        x_BTD = jnp.take(embedding_VD, tokens_BT, axis=0).astype(dtype)
        if cfg.scale_embeddings:
            x_BTD = x_BTD * jnp.asarray(cfg.embed_scale, pdt).astype(dtype)
        x_BTD = constrain(x_BTD, ("batch", "length", "embed"), self.mesh)

        tables = (rope_tables(positions_BT, cfg.rope, cfg.head_dim, dtype),)
        if cfg.has_sliding and cfg.local_rope is not None and cfg.local_rope != cfg.rope:
            tables += (rope_tables(positions_BT, cfg.local_rope, cfg.head_dim, dtype),)

        key_positions_BS = jax.lax.dynamic_update_slice_in_dim(
            past_positions_BS, positions_BT.astype(jnp.int32), start, 1)
        q_slot_T = start + jnp.arange(T)
        if read_slots is not None and use_cache and not fresh_cache:
            S = min(S, read_slots)  # the masks cover the slots read; the cache is kept whole
        k_slot_S = jnp.arange(S)
        mask_full = (k_slot_S[None, None, :] <= q_slot_T[None, :, None]) & (key_positions_BS[:, None, :S] >= 0)
        mask_sliding = None
        if cfg.has_sliding:
            in_window = (q_slot_T[:, None] - k_slot_S[None, :]) < cfg.sliding_window
            mask_sliding = mask_full & in_window[None]

        is_sliding_L = jnp.asarray([k == SLIDING for k in cfg.kinds])
        shared = (tables, mask_full, mask_sliding, start, positions_BT)
        block = nn.remat(Block, prevent_cse=not self.unrolled) if self.remat else Block
        if self.unrolled:
            new_k, new_v = [], []
            for layer in range(cfg.num_layers):
                # A per-layer cache hands the block its own buffers (layer index None).
                layer_kv = (kv[0][layer], kv[1][layer]) if per_layer else kv
                at_B = hidden_at_B if layer == cfg.num_layers - 1 else None
                (x_BTD, layer_kv), _ = block(cfg, self.mesh, fresh_cache, name=f"layer_{layer}")(
                    (x_BTD, layer_kv), (is_sliding_L[layer], None if per_layer else layer), shared, at_B)
                if per_layer:
                    new_k.append(layer_kv[0])
                    new_v.append(layer_kv[1])
                else:
                    kv = layer_kv
            if per_layer:
                kv = (tuple(new_k), tuple(new_v))
        else:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, nn.broadcast), length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"})
            (x_BTD, kv), _ = stack(cfg, self.mesh, fresh_cache, name="layers")(
                (x_BTD, kv), (is_sliding_L, jnp.arange(cfg.num_layers)), shared)
            if hidden_at_B is not None:  # a scan runs every layer alike
                x_BTD = take_rows(x_BTD, hidden_at_B)

        h_BTD = RMSNorm(cfg.norm_eps, cfg.norm_plus_one, cfg.param_dtype, name="final_norm")(x_BTD)
        new_cache = None
        if use_cache:
            new_cache = {"k": kv[0], "v": kv[1], "positions": key_positions_BS, "end": start + T}
        if hidden_only:
            return (h_BTD[:, 0] if hidden_at_B is not None else h_BTD), new_cache
        head = embedding_VD if cfg.tie_embeddings else _param(
            self, "lm_head", ("embed", "vocab"), (cfg.embed_dim, cfg.vocab_size), pdt)
        logits_BTV = constrain(_logits(cfg, h_BTD, head), ("batch", "length", "vocab"), self.mesh)
        return logits_BTV, new_cache


def _logits(cfg: ModelConfig, h_BTD, head):
    """float32 logits from final hidden states; `head` is the embedding [V,D] when tied, else [D,V]."""
    dtype = dtype_of(cfg.dtype)
    spec = "BTD,VD->BTV" if cfg.tie_embeddings else "BTD,DV->BTV"
    logits_BTV = jnp.einsum(spec, h_BTD.astype(dtype), head.astype(dtype),
                            preferred_element_type=jnp.float32)
    if cfg.final_softcap is not None:
        logits_BTV = jnp.tanh(logits_BTV / cfg.final_softcap) * cfg.final_softcap
    return logits_BTV


def lm_head_logits(params, config: ModelConfig, h_BTD: jax.Array) -> jax.Array:
    """The decoder's LM head (with Gemma's final soft-cap) applied to hidden states from
    `apply(..., hidden_only=True)`: float32 logits [B, T, V]."""
    head = params["embedding"] if config.tie_embeddings else params["lm_head"]
    return _logits(config, h_BTD, head)


def unstack_layers(params) -> dict:
    """Params for `Decoder(..., unrolled=True)`: the stacked `layers` split into `layer_0`.. .

    Inside a jitted function this makes one copy of the layer weights per call."""
    L = jax.tree.leaves(params["layers"])[0].shape[0]
    out = {k: v for k, v in params.items() if k != "layers"}
    for layer in range(L):
        out[f"layer_{layer}"] = jax.tree.map(lambda a, i=layer: a[i], params["layers"])
    return out


def abstract_params(config: ModelConfig):
    """(shape/dtype pytree of the params, pytree of their logical axis names); nothing allocated."""
    model = Decoder(config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]
    names = jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=_is_boxed)
    return nn.unbox(boxed), names


def init_params(config: ModelConfig, rng: jax.Array):
    """Random parameters (normal(0.02) kernels) as a plain nested dict."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return nn.unbox(Decoder(config).init(rng, tokens, tokens)["params"])


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)
