"""Benchmarks against transformers, measured in the same run (the machine is shared and noisy).

Rounds alternate between the two implementations and the median of each is reported, so a burst
of load elsewhere hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from grm_jax.loading import is_hf_dir, load_any
from grm_jax.models import Decoder, ModelConfig
from grm_jax.sharding import batch_sharding, mesh_from_spec

# Dense bf16 peak FLOP/s by device kind (vendor figures, no sparsity).
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def forward_flops(cfg: ModelConfig, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward: 2 per weight per token, plus QK^T and PV over the full square."""
    D, F, N, K, H, L, V = (cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.num_layers, cfg.vocab_size)
    weights = L * (D * (N + 2 * K) * H + N * H * D + 3 * D * F) + D * V
    tokens = batch * length
    return 2.0 * weights * tokens + 4.0 * L * batch * length * length * N * H


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak * len(jax.devices())
    return None


def _timeit(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def bench_forward(model: str | Path, *, batch: int = 8, length: int = 512, dtype: str | None = None,
                  steps: int = 3, rounds: int = 3, mesh_spec: str | None = None,
                  with_torch: bool = True, seed: int = 0) -> dict:
    """Tokens/s of the jitted forward (logits for every position), and of transformers' forward."""
    mesh = mesh_from_spec(mesh_spec)
    cfg, params, _ = load_any(model, mesh=mesh, param_dtype=dtype, progress=False)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length), dtype=np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    sharding = batch_sharding(mesh, tokens.shape)
    tokens_d = jax.device_put(tokens, sharding)
    positions_d = jax.device_put(positions, sharding)
    model_fn = Decoder(cfg, mesh)
    forward = jax.jit(lambda p, t, pos: model_fn.apply({"params": p}, t, pos)[0])

    t0 = time.perf_counter()
    forward(params, tokens_d, positions_d).block_until_ready()
    compile_s = time.perf_counter() - t0
    run_jax = lambda: forward(params, tokens_d, positions_d).block_until_ready()  # noqa: E731

    run_torch = None
    if with_torch and is_hf_dir(model):
        run_torch = _torch_forward(model, tokens, cfg.param_dtype)
        run_torch()
    jax_s, torch_s = [], []
    for _ in range(rounds):
        jax_s.append(_timeit(run_jax, steps))
        if run_torch:
            torch_s.append(_timeit(run_torch, steps))

    tokens_n = batch * length
    result = {
        "model": str(model), "family": cfg.family, "params": cfg.num_params(), "dtype": cfg.param_dtype,
        "batch": batch, "length": length, "device": jax.devices()[0].device_kind,
        "devices": len(jax.devices()), "mesh": dict(mesh.shape), "compile_s": round(compile_s, 2),
        "jax_tokens_per_s": tokens_n / statistics.median(jax_s),
    }
    peak = peak_flops(jax.devices()[0])
    if peak:
        result["jax_mfu"] = forward_flops(cfg, batch, length) / statistics.median(jax_s) / peak
    if torch_s:
        result["torch_tokens_per_s"] = tokens_n / statistics.median(torch_s)
        result["ratio_jax_over_torch"] = result["jax_tokens_per_s"] / result["torch_tokens_per_s"]
    return result


def _torch_forward(model_dir, tokens: np.ndarray, dtype: str):
    try:
        import torch
        import transformers
    except ImportError as e:
        raise RuntimeError("the transformers comparison needs torch: pip install 'grm-jax[test]' "
                           "(or pass --no-torch)") from e
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    ref = ref.to(device).eval()
    ids = torch.tensor(tokens, dtype=torch.long, device=device)

    def run():
        with torch.inference_mode():
            ref(input_ids=ids)
        if device == "cuda":
            torch.cuda.synchronize()
    return run
