"""Endogenous rewards against an independent NumPy computation from transformers' logits."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES

from grm_jax.hf import load_hf
from grm_jax.rewards import endogenous_rewards

TOL = 1e-4  # fp32 max-abs on rewards; never loosen


def _batch(vocab, seed=0):
    """Right-padded rows of prompt + response; response spans differ per row."""
    rng = np.random.default_rng(seed)
    T = 24
    tokens = rng.integers(3, vocab, size=(3, T))
    lengths = [24, 17, 9]           # real tokens per row
    starts = [10, 3, 1]             # first response token
    mask = np.zeros((3, T), np.int64)
    response = np.zeros((3, T), np.int32)
    for i, (n, s) in enumerate(zip(lengths, starts)):
        mask[i, :n] = 1
        response[i, s:n] = 1
    positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, -1)
    return tokens, mask, positions, response


def _lse(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))[..., 0]


def _numpy_rewards(logits, tokens, response, alpha):
    """The paper's definition, one token at a time, from transformers' logits."""
    out = []
    for b in range(tokens.shape[0]):
        idx = np.flatnonzero(response[b])
        total, logp = 0.0, 0.0
        for k, j in enumerate(idx):
            q = logits[b, j - 1, tokens[b, j]]           # Q(s_h, a_h): logits before a_h
            v_next = 0.0 if k == len(idx) - 1 else alpha * _lse(logits[b, j] / alpha)
            total += q - v_next
            logp += (q - alpha * _lse(logits[b, j - 1] / alpha)) / alpha
        v1 = alpha * _lse(logits[b, idx[0] - 1] / alpha)
        out.append((total, logp, v1, len(idx)))
    return np.asarray(out)


@pytest.fixture(scope="module")
def torch_logits_of(hf_models):
    import torch

    def get(family, tokens, mask):
        _, ref = hf_models(family)
        with torch.no_grad():
            return ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.double().numpy()
    return get


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_rewards_match_numpy_from_transformers_logits(family, alpha, hf_models, torch_logits_of):
    cfg, params = load_hf(hf_models(family)[0], progress=False)
    tokens, mask, positions, response = _batch(cfg.vocab_size)
    want = _numpy_rewards(torch_logits_of(family, tokens, mask), tokens, response, alpha)
    got = endogenous_rewards(params, cfg, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(response),
                             alpha=alpha, chunk=7)
    np.testing.assert_allclose(np.asarray(got["sum"]), want[:, 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["logprob"]), want[:, 1], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["value"]), want[:, 2], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["mean"]), want[:, 0] / want[:, 3], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["tokens"]).sum(1), want[:, 0], atol=TOL, rtol=0)
    past = np.arange(tokens.shape[1])[None] >= response.sum(1)[:, None]
    assert (np.asarray(got["tokens"])[past] == 0).all() and (np.asarray(got["count"]) == want[:, 3]).all()


def test_identity_sum_is_alpha_logprob_plus_initial_value(hf_models):
    cfg, params = load_hf(hf_models("gemma2")[0], progress=False)
    tokens, _, positions, response = _batch(cfg.vocab_size, seed=3)
    alpha = 0.7
    got = endogenous_rewards(params, cfg, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(response),
                             alpha=alpha)
    lhs = np.asarray(got["sum"])
    rhs = alpha * np.asarray(got["logprob"]) + np.asarray(got["value"])
    np.testing.assert_allclose(lhs, rhs, atol=TOL, rtol=0)
    assert np.abs(np.asarray(got["value"])).min() > 1e-2  # V(s_1) matters: the check has teeth


def test_causal_shift_reads_the_logits_before_each_token(hf_models, torch_logits_of):
    """log π of response token j must come from the logits at j - 1; reading logits at j (one
    position off) gives different numbers, which this test would catch."""
    cfg, params = load_hf(hf_models("llama")[0], progress=False)
    tokens, mask, positions, response = _batch(cfg.vocab_size, seed=5)
    logits = torch_logits_of("llama", tokens, mask)
    logsm = logits - _lse(logits)[..., None]
    row, idx = 0, np.flatnonzero(response[0])
    right = sum(logsm[row, j - 1, tokens[row, j]] for j in idx)
    off_by_one = sum(logsm[row, j, tokens[row, j]] for j in idx)
    got = endogenous_rewards(params, cfg, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(response))
    assert abs(float(got["logprob"][row]) - right) < TOL
    assert abs(right - off_by_one) > 1.0


def test_chunking_and_window_do_not_change_rewards(hf_models):
    cfg, params = load_hf(hf_models("qwen3")[0], progress=False)
    tokens, _, positions, response = _batch(cfg.vocab_size, seed=2)
    args = (jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(response))
    a = endogenous_rewards(params, cfg, *args, chunk=5)
    b = endogenous_rewards(params, cfg, *args, chunk=512)
    c = endogenous_rewards(params, cfg, *args, chunk=4, window=int(response.sum(1).max()))
    for k in ("sum", "logprob", "value"):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(c[k]), np.asarray(b[k]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(a["tokens"]), np.asarray(b["tokens"]), atol=1e-5, rtol=0)


def test_ranking_by_sum_equals_ranking_by_logprob_for_one_prompt(hf_models):
    """Two responses to the same prompt share V(s_1), so R and Σ log π rank them alike."""
    cfg, params = load_hf(hf_models("mistral")[0], progress=False)
    rng = np.random.default_rng(9)
    prompt = rng.integers(3, cfg.vocab_size, 8)
    rows = [np.concatenate([prompt, rng.integers(3, cfg.vocab_size, 10)]) for _ in range(4)]
    tokens = np.stack(rows)
    positions = np.broadcast_to(np.arange(18), (4, 18))
    response = np.zeros((4, 18), np.int32)
    response[:, 8:] = 1
    got = endogenous_rewards(params, cfg, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(response))
    np.testing.assert_allclose(np.asarray(got["value"]), float(got["value"][0]), atol=1e-5)
    assert list(np.argsort(np.asarray(got["sum"]))) == list(np.argsort(np.asarray(got["logprob"])))
