"""Benchmarks against transformers, measured in the same run (the machine is shared and noisy).

Rounds alternate between the two implementations and the median of each is reported, so a burst
of load elsewhere hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import numpy as np

from grm_jax.flops import decode_bytes, forward_flops, peak_bandwidth, peak_flops
from grm_jax.loading import is_hf_dir, load_any
from grm_jax.models import Decoder, ModelConfig
from grm_jax.rewards.endogenous import jitted_rewards
from grm_jax.sampling import Greedy, generate
from grm_jax.sharding import batch_sharding, mesh_from_spec


def _timeit(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def _alternate(run_jax, run_torch, steps: int, rounds: int) -> tuple[list[float], list[float]]:
    jax_s, torch_s = [], []
    for _ in range(rounds):
        jax_s.append(_timeit(run_jax, steps))
        if run_torch:
            torch_s.append(_timeit(run_torch, steps))
    return jax_s, torch_s


def _report(kind: str, model, cfg: ModelConfig, mesh, tokens_n: int, jax_s, torch_s, **extra) -> dict:
    result = {
        "bench": kind, "model": str(model), "family": cfg.family, "params": cfg.num_params(),
        "dtype": cfg.param_dtype, "device": jax.devices()[0].device_kind, "devices": len(jax.devices()),
        "mesh": dict(mesh.shape), **extra,
        "jax_tokens_per_s": tokens_n / statistics.median(jax_s),
    }
    if torch_s:
        result["torch_tokens_per_s"] = tokens_n / statistics.median(torch_s)
        result["ratio_jax_over_torch"] = result["jax_tokens_per_s"] / result["torch_tokens_per_s"]
    return result


def _random_batch(cfg: ModelConfig, batch: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, cfg.vocab_size, (batch, length), dtype=np.int32)


def bench_forward(model: str | Path, *, batch: int = 8, length: int = 512, dtype: str | None = None,
                  steps: int = 3, rounds: int = 3, mesh_spec: str | None = None,
                  with_torch: bool = True, seed: int = 0) -> dict:
    """Tokens/s of the jitted forward (logits for every position), and of transformers' forward."""
    mesh = mesh_from_spec(mesh_spec)
    cfg, params, _ = load_any(model, mesh=mesh, param_dtype=dtype, progress=False)
    tokens = _random_batch(cfg, batch, length, seed)
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
    run_torch = _torch_forward(model, tokens, cfg.param_dtype) if with_torch and is_hf_dir(model) else None
    if run_torch:
        run_torch()
    jax_s, torch_s = _alternate(run_jax, run_torch, steps, rounds)
    result = _report("forward", model, cfg, mesh, batch * length, jax_s, torch_s, batch=batch,
                     length=length, compile_s=round(compile_s, 2))
    peak = peak_flops(jax.devices()[0], len(jax.devices()))
    if peak:
        result["jax_mfu"] = forward_flops(cfg, batch, length) / statistics.median(jax_s) / peak
    return result


def bench_score(model: str | Path, *, batch: int = 8, length: int = 512, response: int | None = None,
                dtype: str | None = None, chunk: int = 512, steps: int = 3, rounds: int = 3,
                mesh_spec: str | None = None, with_torch: bool = True, seed: int = 0) -> dict:
    """Tokens/s of endogenous-reward scoring (one jitted call: forward, chunked LM head, rewards)
    against transformers' plain forward (all-position logits) on the same batch."""
    mesh = mesh_from_spec(mesh_spec)
    cfg, params, _ = load_any(model, mesh=mesh, param_dtype=dtype, progress=False)
    response = length // 2 if response is None else response
    if not 0 < response < length:
        raise ValueError(f"--response must be in 1..{length - 1}, got {response}")
    tokens = _random_batch(cfg, batch, length, seed)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    mask = np.zeros((batch, length), np.int32)
    mask[:, length - response:] = 1
    sharding = batch_sharding(mesh, tokens.shape)
    args = [jax.device_put(a, sharding) for a in (tokens, positions, mask)]
    fn = jitted_rewards(cfg, mesh, 1.0, chunk)

    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, *args, response))
    compile_s = time.perf_counter() - t0
    run_jax = lambda: jax.block_until_ready(fn(params, *args, response))  # noqa: E731
    run_torch = _torch_forward(model, tokens, cfg.param_dtype) if with_torch and is_hf_dir(model) else None
    if run_torch:
        run_torch()
    jax_s, torch_s = _alternate(run_jax, run_torch, steps, rounds)
    result = _report("score", model, cfg, mesh, batch * length, jax_s, torch_s, batch=batch, length=length,
                     response=response, chunk=chunk, compile_s=round(compile_s, 2),
                     baseline="transformers forward (all-position logits), no reward math")
    peak = peak_flops(jax.devices()[0], len(jax.devices()))
    if peak:
        result["jax_mfu"] = forward_flops(cfg, batch, length) / statistics.median(jax_s) / peak
    return result


def bench_generate(model: str | Path, *, batch: int = 8, prompt: int = 128, new_tokens: int = 128,
                   dtype: str | None = None, steps: int = 1, rounds: int = 3,
                   mesh_spec: str | None = None, with_torch: bool = True, seed: int = 0,
                   bandwidth: float | None = None) -> dict:
    """Greedy decode tokens/s (prefill included, every row runs `new_tokens`) against
    transformers' `generate(do_sample=False)` on the same prompts. `bandwidth` (bytes/s) is the
    memory-bandwidth peak for the bound; default: the vendor figure of a known accelerator."""
    mesh = mesh_from_spec(mesh_spec)
    cfg, params, _ = load_any(model, mesh=mesh, param_dtype=dtype, progress=False)
    prompts = _random_batch(cfg, batch, prompt, seed)
    prompt_list = [list(map(int, r)) for r in prompts]

    def run_jax():
        return generate(params, cfg, prompt_list, strategy=Greedy(), max_new_tokens=new_tokens,
                        mesh=mesh)
    t0 = time.perf_counter()
    ours = run_jax()
    compile_s = time.perf_counter() - t0
    run_torch = None
    if with_torch and is_hf_dir(model):
        run_torch, theirs = _torch_generate(model, prompts, new_tokens, cfg.param_dtype)
        same = float((theirs() == ours.tokens).mean())
    jax_s, torch_s = _alternate(run_jax, run_torch, steps, rounds)
    result = _report("generate", model, cfg, mesh, batch * new_tokens, jax_s, torch_s, batch=batch,
                     prompt=prompt, new_tokens=new_tokens, compile_s=round(compile_s, 2))
    if run_torch:
        result["greedy_tokens_equal_fraction"] = same
    bandwidth = bandwidth or peak_bandwidth(jax.devices()[0], len(jax.devices()))
    if bandwidth:
        step_s = statistics.median(jax_s) / new_tokens  # prefill included: a lower bound
        result["jax_hbm_fraction"] = decode_bytes(cfg, batch, prompt + new_tokens) / step_s / bandwidth
    return result


def _load_torch(model_dir, dtype: str):
    try:
        import torch
        import transformers
    except ImportError as e:
        raise RuntimeError("the transformers comparison needs torch: pip install 'grm-jax[test]' "
                           "(or pass --no-torch)") from e
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return torch, ref.to(device).eval(), device


def _torch_forward(model_dir, tokens: np.ndarray, dtype: str):
    torch, ref, device = _load_torch(model_dir, dtype)
    ids = torch.tensor(tokens, dtype=torch.long, device=device)

    def run():
        with torch.inference_mode():
            ref(input_ids=ids)
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def _torch_generate(model_dir, prompts: np.ndarray, new_tokens: int, dtype: str):
    torch, ref, device = _load_torch(model_dir, dtype)
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = ref.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               pad_token_id=0, eos_token_id=None)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    def tokens():
        return run()[:, prompts.shape[1]:].cpu().numpy()
    return run, tokens
