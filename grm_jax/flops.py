"""FLOP and byte accounting: model FLOPs, chip peaks, MFU and roofline bounds.

One place for `grm-jax plan`, the benchmarks and the trainers.

Model FLOPs follow the PaLM convention (Chowdhery et al. 2022, appendix B): 2 FLOPs per weight
per token for every matmul (the LM head included), plus 4·T·S·N·H per layer for the attention
scores and the weighted values over the whole T × S square (causal and window masking are not
subtracted), and a backward pass that costs twice the forward. Compiled FLOPs above this are
overhead (rematerialization, padding); an attention kernel that skips masked blocks can come in
below it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from grm_jax.models.config import ModelConfig, dtype_of


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: dense bf16 peak FLOP/s, HBM bandwidth (bytes/s) and HBM bytes."""

    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: int
    device_kinds: tuple[str, ...]  # what jax's `device.device_kind` says for it


# Vendor figures (dense, no sparsity). HBM: what the driver reports for the GPUs (nvidia-smi:
# H100 SXM 81559 MiB, H200 143771 MiB); the vendor's figure for the TPUs, read conservatively.
CHIPS = {
    "tpu-v4": Chip(275e12, 1.2e12, 32 * 2**30, ("TPU v4",)),
    "tpu-v5e": Chip(197e12, 0.819e12, 16 * 10**9, ("TPU v5 lite", "TPU v5e")),
    "tpu-v5p": Chip(459e12, 2.765e12, 95 * 10**9, ("TPU v5p", "TPU v5")),
    "tpu-v6e": Chip(918e12, 1.64e12, 32 * 10**9, ("TPU v6 lite", "TPU v6e")),
    "h100": Chip(989e12, 3.35e12, 81559 * 2**20, ("NVIDIA H100",)),
    "h200": Chip(989e12, 4.8e12, 143771 * 2**20, ("NVIDIA H200",)),
    "a100": Chip(312e12, 2.04e12, 81920 * 2**20, ("NVIDIA A100",)),
}


def chip_name(device_kind: str) -> str | None:
    """The CHIPS name of a jax device kind ('TPU v5 lite' -> 'tpu-v5e'), or None (CPU)."""
    best = None
    for name, chip in CHIPS.items():
        for kind in chip.device_kinds:
            exact = device_kind == kind
            if exact or device_kind.startswith(kind):
                score = (exact, len(kind))
                if best is None or score > best[0]:
                    best = (score, name)
    return None if best is None else best[1]


def chip_of(device) -> Chip | None:
    name = chip_name(getattr(device, "device_kind", ""))
    return None if name is None else CHIPS[name]


def peak_flops(device, devices: int = 1) -> float | None:
    """Peak FLOP/s of `devices` devices like `device` (None where no vendor figure exists)."""
    chip = chip_of(device)
    return None if chip is None else chip.peak_flops * devices


def peak_bandwidth(device, devices: int = 1) -> float | None:
    chip = chip_of(device)
    return None if chip is None else chip.hbm_bandwidth * devices


def matmul_weights(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: every layer's projections and the LM head
    (the input embedding is a gather)."""
    D, F, N, K, H, L, V = (cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.num_layers, cfg.vocab_size)
    return L * (D * (N + 2 * K) * H + N * H * D + 3 * D * F) + D * V


def forward_flops(cfg: ModelConfig, batch: int, length: int, keys: int | None = None) -> float:
    """Model FLOPs of one forward over `batch` rows of `length` tokens attending to `keys`
    positions (default: `length`)."""
    keys = length if keys is None else keys
    return (2.0 * matmul_weights(cfg) * batch * length
            + 4.0 * cfg.num_layers * batch * length * keys * cfg.num_heads * cfg.head_dim)


def train_flops(cfg: ModelConfig, batch: int, length: int) -> float:
    """Model FLOPs of a forward and backward pass."""
    return 3.0 * forward_flops(cfg, batch, length)


def weight_read_bytes(cfg: ModelConfig) -> float:
    """Bytes of the weights a decode step reads: all params but an untied input embedding
    (which is only gathered)."""
    itemsize = np.dtype(dtype_of(cfg.param_dtype)).itemsize
    return (cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim)) * itemsize


def kv_cache_bytes(cfg: ModelConfig, batch: int, context: int) -> float:
    """Bytes of the keys and values of `batch` rows of `context` positions, in the compute dtype."""
    itemsize = np.dtype(dtype_of(cfg.dtype)).itemsize
    return 2.0 * cfg.num_layers * batch * context * cfg.num_kv_heads * cfg.head_dim * itemsize


def decode_bytes(cfg: ModelConfig, batch: int, context: int) -> float:
    """Mean bytes a decode step must read over a generation that grows the cache to `context`:
    every weight once, plus the cache at its mean size (half of `context`)."""
    return weight_read_bytes(cfg) + kv_cache_bytes(cfg, batch, context) / 2


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> float:
    """A lower bound on a program's time on one chip: its FLOPs at peak or its bytes at full HBM
    bandwidth, whichever takes longer."""
    return max(flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth)


_MATMUL_PEAK: list[float] = []


def matmul_peak_flops(n: int = 2048) -> float:
    """FLOP/s of a jitted n x n x n float32 matmul on the default device (best of 5): a measured
    stand-in for the peak where no vendor figure exists (CPU)."""
    import jax
    import jax.numpy as jnp

    if not _MATMUL_PEAK:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        _MATMUL_PEAK.append(2.0 * n ** 3 / best)
    return _MATMUL_PEAK[0]
