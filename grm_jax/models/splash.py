"""Splash attention: jax's TPU Pallas flash-attention kernel, run per device under `shard_map`.

`splash_attention(q, k, v, segments, ...)` computes what `layers._xla_attention` computes for a
forward over the new tokens alone (training, scoring, and the sampler's prefill into a fresh
cache), without materializing the [T, S] scores: causal attention, a sliding window (left
W - 1 keys, as `mask_sliding`), the logit soft-cap, any scale (q is pre-scaled; the kernel does
not scale), and grouped-query heads (the kernel maps query head h to KV head h // G).

Padding: a token at a negative position gets segment id 0 and a real token 1; the kernel
allows a query only the keys of its own segment, so a real query never sees a padding key.
A padding query sees padding keys (its output is unused, as in the xla path); every row keeps
its diagonal, so no softmax is empty. The sequence is padded to a multiple of 128 (the kernel's
block) with segment 0.

A Mosaic kernel is not partitioned by XLA's SPMD pass, so the call runs under `jax.shard_map`
over the model's mesh: rows split over the batch axes and heads over `tensor` (when the KV heads
split the same way; otherwise every device keeps all heads). On a platform other than TPU the
kernel runs in Pallas interpret mode (numerics only; slow), decided from the devices the mesh
holds, so a program compiled for an abstract TPU topology gets the real kernel.
"""

from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import Mesh, PartitionSpec as P

from grm_jax.sharding import logical_to_spec

LANES = 128  # the kernel's KV block must be a multiple of this; sequences are padded to it


def platform_of(mesh: Mesh | None) -> str:
    """The platform the program runs on: the mesh's devices' (abstract TPU devices included),
    else the default backend's."""
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.devices()[0].platform


def _block(length: int) -> int:
    """The largest of 512, 256, 128 dividing `length` (a multiple of 128)."""
    return next(b for b in (512, 256, 128) if length % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, length: int, window: int | None, softcap: float | None, interpret: bool):
    """A splash kernel for `heads` local query heads over a [length, length] causal mask,
    restricted to the last `window` keys when given.

    Built on a worker thread: JAX's trace state is per thread, so the kernel's block tables
    come out as concrete constants even when this is first called while tracing (inside a
    scan or remat), and can be cached and reused by later traces."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_build_kernel, heads, length, window, softcap, interpret).result()


def _build_kernel(heads, length, window, softcap, interpret):
    shape = (length, length)
    if window is None:
        mask = mask_lib.CausalMask(shape)
    else:
        mask = mask_lib.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    b = _block(length)
    sizes = kernel_lib.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                                  block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b,
                                  block_kv_dq=b)
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([mask] * heads), block_sizes=sizes,
                                      attn_logits_soft_cap=softcap, head_shards=1,
                                      q_seq_shards=1, interpret=interpret)


def splash_attention(q_BTNH: jax.Array, k_BKTH: jax.Array, v_BKTH: jax.Array,
                     positions_BT: jax.Array, *, scale: float, softcap: float | None,
                     window: int | None, mesh: Mesh | None) -> jax.Array:
    """Attention of T queries over the same T keys (heads-major k, v): out [B, T, N, H]."""
    B, T, N, H = q_BTNH.shape
    Tp = -(-T // LANES) * LANES
    pad = Tp - T
    q_BNTH = (q_BTNH * jnp.asarray(scale, q_BTNH.dtype)).transpose(0, 2, 1, 3)
    segments_BT = (positions_BT >= 0).astype(jnp.int32)
    if pad:
        q_BNTH = jnp.pad(q_BNTH, ((0, 0), (0, 0), (0, pad), (0, 0)))
        k_BKTH = jnp.pad(k_BKTH, ((0, 0), (0, 0), (0, pad), (0, 0)))
        v_BKTH = jnp.pad(v_BKTH, ((0, 0), (0, 0), (0, pad), (0, 0)))
        segments_BT = jnp.pad(segments_BT, ((0, 0), (0, pad)))
    interpret = platform_of(mesh) != "tpu"

    if mesh is None:
        q_spec = kv_spec = seg_spec = None
        local_heads = N
    else:
        q_spec = logical_to_spec(("batch", "heads", "length", "head_dim"), q_BNTH.shape, mesh)
        kv_spec = logical_to_spec(("batch", "kv_heads", "length", "head_dim"), k_BKTH.shape, mesh)
        if q_spec[1] != kv_spec[1]:  # query and KV heads must split alike for the G mapping
            q_spec = P(q_spec[0], None, None, None)
            kv_spec = P(kv_spec[0], None, None, None)
        seg_spec = P(q_spec[0], None)
        head_axes = q_spec[1]
        shards = 1 if head_axes is None else int(np.prod(
            [mesh.shape[a] for a in ((head_axes,) if isinstance(head_axes, str) else head_axes)]))
        local_heads = N // shards
    kernel = _kernel(local_heads, Tp, window, softcap, interpret)

    def local(q, k, v, seg):
        one = lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=kernel_lib.SegmentIds(s1, s1))
        return jax.vmap(one)(q, k, v, seg)

    if mesh is None:
        out_BNTH = local(q_BNTH, k_BKTH, v_BKTH, segments_BT)
    else:
        out_BNTH = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                                 out_specs=q_spec, check_vma=False)(q_BNTH, k_BKTH, v_BKTH, segments_BT)
    return out_BNTH[:, :, :T].transpose(0, 2, 1, 3)
