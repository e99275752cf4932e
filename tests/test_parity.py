"""grm-jax logits against transformers (PyTorch, CPU) on tiny random models of every family."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, padded_batch, torch_logits

from grm_jax.hf import load_hf
from grm_jax.models import Decoder, positions_from_mask

TOL = 1e-4  # fp32 max-abs; never loosen


def _ours(cfg, params, tokens, mask):
    logits, _ = Decoder(cfg).apply({"params": params}, jnp.asarray(tokens),
                                   positions_from_mask(jnp.asarray(mask)))
    return np.asarray(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_left_padded(family, hf_models):
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    # 32 tokens: longer than the sliding window (8) of Mistral and Gemma 2/3.
    tokens, mask = padded_batch(cfg.vocab_size, length=32)
    if cfg.has_sliding:
        assert tokens.shape[1] > cfg.sliding_window
    want = torch_logits(ref, tokens, mask)
    got = _ours(cfg, params, tokens, mask)
    valid = mask.astype(bool)
    err = np.abs(got - want)[valid].max()
    assert err < TOL, f"{family}: max-abs logit difference {err:.3e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_param_count_matches_transformers(family, hf_models):
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    leaves = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(params))
    assert leaves == cfg.num_params() == sum(p.numel() for p in ref.parameters())


def test_dot_product_attention_matches_xla_path(hf_models):
    directory, _ = hf_models("qwen3")
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size)
    xla = _ours(cfg, params, tokens, mask)
    dpa = _ours(cfg.replace(attention_impl="dot_product"), params, tokens, mask)
    valid = mask.astype(bool)
    assert np.abs(xla - dpa)[valid].max() < 1e-5


def test_sliding_window_is_applied(hf_models):
    """Changing a token beyond the window changes a global layer's view but not a sliding-only model."""
    directory, _ = hf_models("mistral")  # every layer is a sliding layer, window 8
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=24)
    mask[:] = 1
    base = _ours(cfg, params, tokens, mask)
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 1) % cfg.vocab_size
    after = _ours(cfg, params, changed, mask)
    # With 3 layers of window 8, information travels at most 3 * 7 = 21 positions.
    np.testing.assert_array_equal(base[:, 22:], after[:, 22:])
    assert np.abs(base[:, 1:8] - after[:, 1:8]).max() > 1e-4


def test_bfloat16_compute_stays_close(hf_models):
    directory, ref = hf_models("llama")
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size)
    want = _ours(cfg, params, tokens, mask)
    got = _ours(cfg.replace(dtype="bfloat16"), params, tokens, mask)
    valid = mask.astype(bool)
    # bf16 has 8 mantissa bits; logits of this model are O(1).
    assert np.abs(got - want)[valid].max() < 0.1
    assert got.dtype == np.float32
