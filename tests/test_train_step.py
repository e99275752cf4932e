"""The generic train step: accumulation, sharding, optimizer options, SFT learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grm_jax.hf import load_hf
from grm_jax.sharding import batch_sharding, make_mesh
from grm_jax.train.optim import OptimConfig, learning_rate, make_optimizer
from grm_jax.train.sft import sft_loss_fn, sft_normalizer
from grm_jax.train.state import init_train_state, make_train_step


def _batch(vocab, B=8, T=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (B, T)).astype(np.int32)
    lengths = rng.integers(6, T + 1, B)
    positions = np.where(np.arange(T)[None] < lengths[:, None], np.arange(T)[None], -1).astype(np.int32)
    loss_mask = ((np.arange(T)[None] >= 3) & (positions >= 0)).astype(np.int32)
    return {"tokens": tokens, "positions": positions, "loss_mask": loss_mask}


def _run(cfg, params, batch, opt_cfg, steps=1, mesh=None, optimizer=None):
    opt = optimizer or make_optimizer(opt_cfg)
    state = init_train_state(params, opt)
    step = make_train_step(sft_loss_fn(cfg, chunk=8, mesh=mesh), sft_normalizer, opt,
                           grad_accum=opt_cfg.grad_accum)
    if mesh is not None:
        batch = {k: jax.device_put(v, batch_sharding(mesh, v.shape)) for k, v in batch.items()}
    history = []
    for _ in range(steps):
        state, m = step(state, batch)
        history.append({k: float(v) for k, v in m.items()})
    return state, history


@pytest.fixture(scope="module")
def qwen3(hf_models):
    return hf_models("qwen3")[0]


def test_grad_accumulation_equals_full_batch(qwen3):
    cfg, params = load_hf(qwen3, progress=False)
    batch = _batch(cfg.vocab_size)
    # Plain SGD with lr 1: the param change is exactly the summed gradient (Adam's first step,
    # g / (|g| + eps), would amplify rounding in near-zero gradients).
    sgd = optax.sgd(1.0)
    full, h1 = _run(cfg, params, batch, OptimConfig(grad_accum=1), optimizer=sgd)
    _, params = load_hf(qwen3, progress=False)  # the first run donated its params
    acc, h4 = _run(cfg, params, batch, OptimConfig(grad_accum=4), optimizer=sgd)
    assert abs(h1[0]["loss"] - h4[0]["loss"]) < 1e-5 and abs(h1[0]["grad_norm"] - h4[0]["grad_norm"]) < 1e-5
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(acc.params)))
    assert diff < 1e-6


def test_sharded_step_equals_single_device(qwen3):
    cfg, params = load_hf(qwen3, progress=False)
    batch = _batch(cfg.vocab_size, seed=1)
    sgd = optax.sgd(0.5)  # linear in the gradients, so the params compare the gradients themselves
    single, h1 = _run(cfg, params, batch, OptimConfig(), steps=2, optimizer=sgd)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    _, sharded_params = load_hf(qwen3, mesh=mesh, progress=False)
    sharded, h2 = _run(cfg, sharded_params, batch, OptimConfig(), steps=2, mesh=mesh, optimizer=sgd)
    for a, b in zip(h1, h2):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)))
    assert diff < 1e-5
    emb = sharded.params["embedding"]
    assert len(emb.sharding.device_set) == 8  # still sharded after the step


def test_sft_memorizes_a_small_batch(qwen3):
    cfg, params = load_hf(qwen3, progress=False)
    _, history = _run(cfg, params, _batch(cfg.vocab_size, seed=2), OptimConfig(lr=3e-3, schedule="constant"), steps=20)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], [h["loss"] for h in history]


def test_bf16_params_keep_fp32_moments(qwen3):
    cfg, params = load_hf(qwen3, param_dtype="bfloat16", progress=False)
    opt = make_optimizer(OptimConfig(fp32_moments=True))
    state = init_train_state(params, opt)
    dtypes = {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim >= 1}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_schedule_warmup_then_cosine():
    lr = learning_rate(OptimConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1))
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.55, abs=1e-6) and float(lr(110)) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
