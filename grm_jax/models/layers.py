"""Decoder building blocks: RMSNorm, RoPE, grouped-query attention and the gated MLP.

Numerics follow transformers' reference implementations, since parity with them is tested:
norms compute in float32; RoPE tables are computed in float32 and cast to the compute dtype;
attention softmax runs in float32.
"""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from grm_jax.models.config import FULL, SLIDING, ModelConfig, RopeConfig, dtype_of
from grm_jax.models.splash import platform_of, splash_attention
from grm_jax.sharding import constrain

log = logging.getLogger(__name__)
_LOGGED: set = set()

# Masked attention logits get this instead of -inf, so a row with no visible key (a left-padding
# query) softmaxes to a uniform row rather than NaN.
_MASKED = -0.7 * float(np.finfo(np.float32).max)
_INIT = nn.initializers.normal(0.02)


def _param(module: nn.Module, name: str, names: tuple, shape: tuple, dtype, init=_INIT):
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


class Linear(nn.Module):
    """y = x . W (+ b): contracts the trailing axes of x with the leading axes of W.

    W has `shape` and logical `names`; its last `out_axes` axes are outputs, and the bias spans
    them. Computed as one 2-D matmul on flattened views, which XLA runs faster than the
    equivalent multi-axis einsum.
    """

    shape: tuple[int, ...]
    names: tuple[str, ...]
    out_axes: int
    use_bias: bool
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x):
        dtype, pdt = dtype_of(self.dtype), dtype_of(self.param_dtype)
        n_in = len(self.shape) - self.out_axes
        in_shape, out_shape = self.shape[:n_in], self.shape[n_in:]
        if x.shape[x.ndim - n_in:] != in_shape:
            raise ValueError(f"{self.name}: input trailing shape {x.shape[x.ndim - n_in:]} != {in_shape}")
        w = _param(self, "kernel", self.names, self.shape, pdt).astype(dtype)
        lead = x.shape[: x.ndim - n_in]
        # Leading axes flattened too: XLA:CPU computes the weight gradient of a 2-D matmul ~4x
        # faster than one contracting [B, T] (measured, B=32, T=128, D=128, F=512).
        y = (x.reshape(-1, int(np.prod(in_shape))) @ w.reshape(int(np.prod(in_shape)), -1)).reshape(*lead, *out_shape)
        if self.use_bias:
            b = _param(self, "bias", self.names[n_in:], out_shape, pdt, nn.initializers.zeros)
            y = y + b.astype(dtype)
        return y


class RMSNorm(nn.Module):
    """x / rms(x) * w (Llama) or * (1 + w) (Gemma), computed in float32."""

    eps: float
    plus_one: bool
    param_dtype: str
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        w = _param(self, "scale", (self.axis_name,), (x.shape[-1],), dtype_of(self.param_dtype), init)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
        return y.astype(x.dtype) * w.astype(x.dtype)


@functools.lru_cache(maxsize=32)
def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """RoPE inverse frequencies [H/2] in float32, including the configured frequency scaling."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(rope.theta) ** exponent)).astype(np.float32)
    if rope.kind == "linear":
        inv = inv / np.float32(rope.factor)
    elif rope.kind == "llama3":
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = np.float32(2 * np.pi) / inv
        scaled = np.where(wavelen > low_wavelen, inv / np.float32(rope.factor), inv)
        smooth = ((rope.original_max_position / wavelen - rope.low_freq_factor)
                  / (rope.high_freq_factor - rope.low_freq_factor))
        smoothed = (1 - smooth) * scaled / np.float32(rope.factor) + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(positions_BT: jax.Array, rope: RopeConfig, head_dim: int, dtype):
    """cos and sin tables [B, T, H/2] for the given positions, cast to the compute dtype."""
    inv = jnp.asarray(inverse_frequencies(rope, head_dim))
    angles = positions_BT.astype(jnp.float32)[..., None] * inv
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def take_rows(x_BT, at_B: jax.Array):
    """x[b, at_B[b]] of each row b, keeping a length axis of 1: [B, T, ...] -> [B, 1, ...]."""
    at = at_B.reshape((-1,) + (1,) * (x_BT.ndim - 1))
    return jnp.take_along_axis(x_BT, at, axis=1)


def apply_rope(x_BTnH: jax.Array, cos_BTh: jax.Array, sin_BTh: jax.Array) -> jax.Array:
    """Rotates halves (transformers' `rotate_half` layout) of x [B, T, heads, H]."""
    x1, x2 = jnp.split(x_BTnH, 2, axis=-1)
    cos, sin = cos_BTh[:, :, None, :], sin_BTh[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def resolve_attention(config: ModelConfig, mesh: Mesh | None) -> str:
    """The attention implementation `config.attention_impl` means on the mesh's platform.

    'auto' is splash on TPU; cuDNN's fused attention on GPU when the model has no attention
    soft-cap and computes in bfloat16 or float16 (what cuDNN supports); xla elsewhere. The
    choice is logged once per (setting, platform, choice).
    """
    impl, platform = config.attention_impl, platform_of(mesh)
    if impl == "auto":
        if platform == "tpu":
            impl = "splash"
        elif (platform == "gpu" or platform == "cuda") and config.attn_softcap is None \
                and config.dtype in ("bfloat16", "float16"):
            impl = "cudnn"
        else:
            impl = "xla"
        key = (config.attention_impl, platform, impl)
        if key not in _LOGGED:
            _LOGGED.add(key)
            log.info("attention_impl=auto on %s: using %s attention", platform, impl)
    return impl


class Attention(nn.Module):
    """Grouped-query attention over an explicit key/value buffer.

    With a cache, `kv = (k_LBKSH, v_LBKSH, layer)`: the keys and values of the new tokens are
    written into the `layer` rows of the whole-stack buffers at slot `start`, and the queries
    attend to that layer's whole buffer under `mask_BTS`; with `kv=None` they attend to the new
    tokens alone. `fresh` says the cache held nothing before these tokens (start is 0, as in a
    prefill): the queries then attend to the new tokens alone too, [T, T] rather than [T, S].

    The implementation (`resolve_attention`): splash and cuDNN run where the keys are exactly the
    new tokens (training, scoring, prefill); a decode step over the cache runs the xla path.
    """

    config: ModelConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x_BTD, cos_sin, mask_BTS, kv, start, positions_BT=None, is_sliding=False,
                 fresh=False, at_B=None):
        """`at_B` [B]: only the query at index at_B of each row's new tokens, output [B, 1, D]."""
        cfg = self.config
        D, N, K, H = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dtype = dtype_of(cfg.dtype)

        def project(name, heads, heads_axis, x):
            return Linear((D, heads, H), ("embed", heads_axis, "head_dim"), 2,
                          cfg.qkv_bias, cfg.dtype, cfg.param_dtype, name=name)(x)

        cos, sin = cos_sin
        q_cos, q_sin, q_x = cos, sin, x_BTD
        if at_B is not None:
            q_cos, q_sin, q_x, mask_BTS = (take_rows(a, at_B) for a in (cos, sin, x_BTD, mask_BTS))
        q_BTNH = project("q_proj", N, "heads", q_x)
        k_BTKH = project("k_proj", K, "kv_heads", x_BTD)
        v_BTKH = project("v_proj", K, "kv_heads", x_BTD)
        if cfg.qk_norm:
            norm = functools.partial(RMSNorm, cfg.norm_eps, cfg.norm_plus_one, cfg.param_dtype,
                                     axis_name="head_dim")
            q_BTNH = norm(name="q_norm")(q_BTNH)
            k_BTKH = norm(name="k_norm")(k_BTKH)
        q_BTNH = apply_rope(q_BTNH, q_cos, q_sin)
        k_BTKH = apply_rope(k_BTKH, cos, sin)
        q_BTNH = constrain(q_BTNH, ("batch", "length", "heads", "head_dim"), self.mesh)

        # Keys and values are kept heads-major ([B, K, S, H]), the layout attention contracts
        # in, so a decode step reads the cache without transposing it.
        k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
        if kv is None:  # plain forward: the keys are exactly the new tokens
            k_BKSH, v_BKSH = k_BKTH, v_BKTH
        else:
            # Write the new tokens into the cache at slot `start`, then read the layer back. A
            # stacked cache is carried whole through the layer scan (rather than scanned over
            # per-layer slices), which lets XLA update it in place: a decode step then moves
            # only the new tokens, not a copy of the cache. A per-layer cache (layer None) is
            # this layer's own buffer.
            k_buf, v_buf, layer = kv
            k_buf = _write_cache(k_buf, k_BKTH, layer, start, self.mesh)
            v_buf = _write_cache(v_buf, v_BKTH, layer, start, self.mesh)
            if layer is None:
                k_BKSH, v_BKSH = k_buf, v_buf
            else:
                k_BKSH = jax.lax.dynamic_index_in_dim(k_buf, layer, 0, keepdims=False)
                v_BKSH = jax.lax.dynamic_index_in_dim(v_buf, layer, 0, keepdims=False)
            kv = (k_buf, v_buf, layer)

        if kv is not None and not fresh and mask_BTS.shape[-1] < k_BKSH.shape[2]:
            # The caller reads only the first slots of the cache (a decode phase whose rows
            # cannot be past them): the attention reads no more of the buffer than that.
            k_BKSH, v_BKSH = k_BKSH[:, :, :mask_BTS.shape[-1]], v_BKSH[:, :, :mask_BTS.shape[-1]]
        impl = resolve_attention(cfg, self.mesh)
        if kv is None or fresh:  # the keys are exactly the new tokens
            T = k_BKTH.shape[2]
            k_BKSH, v_BKSH, mask_BTS = k_BKTH, v_BKTH, mask_BTS[:, :, :T]
        elif impl in ("splash", "cudnn"):
            impl = "xla"  # a step over a filled cache
        if at_B is not None and impl == "splash":
            impl = "xla"  # one query per row: nothing for the kernel's blocks to skip
        k_BKSH, v_BKSH = k_BKSH.astype(dtype), v_BKSH.astype(dtype)
        if impl == "splash":
            def run(window):
                return splash_attention(q_BTNH, k_BKSH, v_BKSH, positions_BT, scale=cfg.attn_scale,
                                        softcap=cfg.attn_softcap, window=window, mesh=self.mesh)
            kinds = set(cfg.kinds)
            if kinds == {FULL}:
                out_BTNH = run(None)
            elif kinds == {SLIDING}:
                out_BTNH = run(cfg.sliding_window)
            else:
                out_BTNH = jax.lax.cond(is_sliding, lambda: run(cfg.sliding_window), lambda: run(None))
        elif impl in ("dot_product", "cudnn"):
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH, k_BKSH.transpose(0, 2, 1, 3), v_BKSH.transpose(0, 2, 1, 3),
                mask=mask_BTS[:, None], scale=cfg.attn_scale,
                implementation="cudnn" if impl == "cudnn" else None)
        else:
            # A decode step on CPU (one query per row over a filled cache) contracts by
            # multiply-and-sum: measured 24% faster per decode step of the demo's sampler than
            # the batched matmuls, whose many [G, H] x [H, S] products XLA's CPU backend runs
            # poorly (`_xla_attention`).
            reduce = kv is not None and not fresh and q_BTNH.shape[1] == 1 and platform_of(self.mesh) == "cpu"
            out_BTNH = _xla_attention(q_BTNH, k_BKSH, v_BKSH, mask_BTS, cfg.attn_scale,
                                      cfg.attn_softcap, by_reduce=reduce)
        y_BTD = Linear((N, H, D), ("heads", "head_dim", "embed"), 1, cfg.out_bias,
                       cfg.dtype, cfg.param_dtype, name="o_proj")(out_BTNH)
        return y_BTD, kv


def _write_cache(buf, new_BKTH, layer, start, mesh):
    """`new_BKTH` written at slot `start` of a per-layer buffer [B,K,S,H] (layer None) or of
    row `layer` of a stacked one [L,B,K,S,H]."""
    names = ("batch", "kv_heads", "cache_length", "head_dim")
    if layer is None:
        buf = jax.lax.dynamic_update_slice(buf, new_BKTH.astype(buf.dtype), (0, 0, start, 0))
    else:
        buf = jax.lax.dynamic_update_slice(buf, new_BKTH[None].astype(buf.dtype), (layer, 0, 0, start, 0))
        names = ("layers", *names)
    return constrain(buf, names, mesh)


def _xla_attention(q_BTNH, k_BKSH, v_BKSH, mask_BTS, scale, softcap, by_reduce: bool = False):
    """Attention as two batched matmuls per KV head over its G*T query rows (Q = G*T).

    The heads-major layout lets XLA run plain batched matmuls; on CPU it measured ~1.7x faster
    than contracting the [B,T,K,G,H] layout directly (B=8, T=512, N=8, K=2, H=64).
    `by_reduce`: the same two contractions as broadcast multiplies and sums (for few queries
    per row: a CPU decode step); float32 accumulation either way.
    """
    B, T, N, H = q_BTNH.shape
    K, S = k_BKSH.shape[1], k_BKSH.shape[2]
    G = N // K
    q_BKQH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    if by_reduce:
        f32 = jnp.float32
        logits_BKQS = jnp.sum(q_BKQH[:, :, :, None, :].astype(f32) * k_BKSH[:, :, None].astype(f32), -1) * scale
    else:
        logits_BKQS = jnp.einsum("BKQH,BKSH->BKQS", q_BKQH, k_BKSH,
                                 preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        logits_BKQS = jnp.tanh(logits_BKQS / softcap) * softcap
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKQS.reshape(B, K, G, T, S), _MASKED)
    probs_BKQS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BKSH.dtype).reshape(B, K, G * T, S)
    if by_reduce:
        out_BKQH = jnp.sum(probs_BKQS[..., None].astype(jnp.float32) * v_BKSH[:, :, None].astype(jnp.float32),
                           -2).astype(v_BKSH.dtype)
    else:
        out_BKQH = jnp.einsum("BKQS,BKSH->BKQH", probs_BKQS, v_BKSH)
    return out_BKQH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


class Mlp(nn.Module):
    """down(act(gate(x)) * up(x))."""

    config: ModelConfig
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, x_BTD):
        cfg = self.config
        D, F = cfg.embed_dim, cfg.mlp_dim

        def dense(name, x, shape, names):
            return Linear(shape, names, 1, cfg.mlp_bias, cfg.dtype, cfg.param_dtype, name=name)(x)

        gate_BTF = dense("gate_proj", x_BTD, (D, F), ("embed", "mlp"))
        up_BTF = dense("up_proj", x_BTD, (D, F), ("embed", "mlp"))
        act = jax.nn.silu if cfg.activation == "silu" else functools.partial(jax.nn.gelu, approximate=True)
        h_BTF = constrain(act(gate_BTF) * up_BTF, ("batch", "length", "mlp"), self.mesh)
        return dense("down_proj", h_BTF, (F, D), ("mlp", "embed"))
