"""Splash attention (jax's TPU Pallas kernel, in interpret mode on CPU) against the xla path and
transformers: every family, left padding, sequences longer than the sliding window, gradients,
sharded over a mesh, and the sampler's prefill."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, padded_batch, torch_logits
from test_sampling import _hf_greedy, _prompts

from grm_jax.hf import load_hf
from grm_jax.models import Decoder, positions_from_mask
from grm_jax.models.layers import resolve_attention
from grm_jax.sampling import Greedy, generate
from grm_jax.sharding import make_mesh

TOL = 1e-5  # fp32 max-abs against the xla path; never loosen
HF_TOL = 1e-4  # against transformers, as tests/test_parity.py


def _logits(cfg, params, tokens, mask, mesh=None):
    fn = jax.jit(lambda p, t, m: Decoder(cfg, mesh).apply({"params": p}, t, positions_from_mask(m))[0])
    return np.asarray(fn(params, jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("family", FAMILIES)
def test_splash_logits_equal_xla_and_transformers(family, hf_models):
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=40, seed=1)
    if cfg.has_sliding:
        assert tokens.shape[1] > cfg.sliding_window
    xla = _logits(cfg.replace(attention_impl="xla"), params, tokens, mask)
    splash = _logits(cfg.replace(attention_impl="splash"), params, tokens, mask)
    valid = mask.astype(bool)
    err = np.abs(splash - xla)[valid].max()
    hf_err = np.abs(splash - torch_logits(ref, tokens, mask))[valid].max()
    print(f"{family}: splash vs xla {err:.2e}, vs transformers {hf_err:.2e}")  # README figures (-s)
    assert err < TOL, f"{family}: splash vs xla max-abs {err:.3e}"
    assert hf_err < HF_TOL, f"{family}: splash vs transformers max-abs {hf_err:.3e}"


def test_splash_over_several_kernel_blocks(hf_models):
    """300 tokens: the kernel runs 3 query x 3 key blocks of 128 and skips the masked ones."""
    directory, _ = hf_models("gemma2")  # sliding window 8 on alternate layers, soft-cap
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=300, seed=2)
    mask[2, :200] = 0  # a row whose real tokens start in the second block
    xla = _logits(cfg.replace(attention_impl="xla"), params, tokens, mask)
    splash = _logits(cfg.replace(attention_impl="splash"), params, tokens, mask)
    valid = mask.astype(bool)
    assert np.abs(splash - xla)[valid].max() < TOL


def test_splash_gradients_equal_xla(hf_models):
    directory, _ = hf_models("gemma2")
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=24, seed=3)

    def loss(p, c):
        logits = Decoder(c).apply({"params": p}, jnp.asarray(tokens),
                                  positions_from_mask(jnp.asarray(mask)))[0][:, :-1]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(tokens)[:, 1:, None], -1)
        both = jnp.asarray(mask[:, :-1] * mask[:, 1:])  # a padding position's output is garbage
        return -(logp[..., 0] * both).sum()

    gx = jax.grad(loss)(params, cfg.replace(attention_impl="xla"))
    gs = jax.grad(loss)(params, cfg.replace(attention_impl="splash"))
    err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(gx), jax.tree.leaves(gs)))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(gx))
    assert err < TOL * max(1.0, scale), (err, scale)


@pytest.mark.parametrize("family,axes", [("qwen2", dict(data=2, fsdp=2, tensor=2)),
                                         ("gemma2", dict(data=1, fsdp=4, tensor=2))])
def test_sharded_splash_equals_single_device(family, axes, hf_models):
    """Under shard_map: rows split over data x fsdp, heads over tensor."""
    directory, _ = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    mesh = make_mesh(**axes)
    _, sharded = load_hf(directory, mesh=mesh, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=40, seed=4)
    tokens, mask = np.concatenate([tokens] * 4)[:8], np.concatenate([mask] * 4)[:8]
    want = _logits(cfg.replace(attention_impl="xla"), params, tokens, mask)
    got = _logits(cfg.replace(attention_impl="splash"), sharded, tokens, mask, mesh)
    valid = mask.astype(bool)
    assert np.abs(got - want)[valid].max() < TOL


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_splash_prefill_greedy_matches_transformers_generate(family, hf_models):
    """The sampler's prefill runs splash over a fresh cache, the decode steps the xla path."""
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    cfg = cfg.replace(attention_impl="splash")
    prompts = _prompts(cfg.vocab_size)
    want = _hf_greedy(ref, prompts, 24, cfg.pad_token_id, cfg.eos_token_id)
    got = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=24,
                   stop_tokens=[cfg.eos_token_id], pad_id=cfg.pad_token_id)
    n = want.shape[1]
    assert n >= 16
    np.testing.assert_array_equal(got.tokens[:, :n], want, err_msg=family)


def test_auto_resolves_by_platform(hf_models, caplog):
    directory, _ = hf_models("gemma2")
    cfg, _ = load_hf(directory, progress=False)
    assert cfg.attention_impl == "auto"
    assert resolve_attention(cfg, None) == "xla"  # CPU
    assert resolve_attention(cfg.replace(attention_impl="splash"), None) == "splash"
    with pytest.raises(ValueError, match="soft-cap"):
        cfg.replace(attention_impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl"):
        cfg.replace(attention_impl="flash")
