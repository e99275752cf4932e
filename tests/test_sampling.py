"""The sampler against transformers' generate, and its invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES

from grm_jax.hf import load_hf
from grm_jax.models import Decoder, positions_from_mask
from grm_jax.models.logprobs import token_logprobs
from grm_jax.sampling import (Greedy, Temperature, TopK, TopP, bucket, categorical, generate, phase_steps,
                              phase_windows, sampling_mesh, strategy_from_args)
from grm_jax.sharding import make_mesh

TOL = 1e-5  # fp32 max-abs; never loosen


def _prompts(vocab, lengths=(11, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, vocab, size=n)) for n in lengths]


def _hf_greedy(ref, prompts, max_new, pad, eos):
    import torch

    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    with torch.no_grad():
        out = ref.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                           min_new_tokens=0, pad_token_id=pad, eos_token_id=eos)
    return out[:, T:].numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers_generate(family, hf_models):
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    prompts = _prompts(cfg.vocab_size)
    max_new = 24  # 11 + 24 tokens: well beyond the sliding window (8) of Mistral and Gemma 2/3
    want = _hf_greedy(ref, prompts, max_new, cfg.pad_token_id, cfg.eos_token_id)
    got = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=max_new,
                   stop_tokens=[cfg.eos_token_id], pad_id=cfg.pad_token_id)
    n = want.shape[1]  # transformers stops early once every row hit EOS
    assert n >= 16, "too short a comparison; change the prompts or the seed"
    np.testing.assert_array_equal(got.tokens[:, :n], want, err_msg=family)
    assert (got.tokens[:, n:] == cfg.pad_token_id).all()
    for row, length, stopped in zip(want, got.lengths, got.stopped):
        eos = np.flatnonzero(row == cfg.eos_token_id)
        assert length == (eos[0] + 1 if eos.size else max_new)
        assert stopped == bool(eos.size)


@pytest.fixture(scope="module")
def gemma2(hf_models):
    directory, _ = hf_models("gemma2")
    return load_hf(directory, progress=False)


def _forward_logprobs(cfg, params, prompts, samples, num_samples=1):
    """log π of each sampled token, recomputed by one full forward over prompt + sample."""
    rows = []
    for r, (toks, n) in enumerate(zip(samples.tokens, samples.lengths)):
        p = list(prompts[r // num_samples])
        seq = np.asarray(p + list(toks[:n]), np.int32)[None]
        lp = token_logprobs(params, cfg, jnp.asarray(seq), positions_from_mask(jnp.ones_like(seq)))
        rows.append(np.asarray(lp)[0, len(p):])
    return rows


@pytest.mark.parametrize("strategy", [Greedy(), Temperature(0.7), TopK(5, 1.3), TopP(0.8)])
def test_returned_logprobs_equal_forward_logprobs(gemma2, strategy):
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size, (9, 4))
    s = generate(params, cfg, prompts, strategy=strategy, max_new_tokens=12, num_samples=2, seed=3)
    for r, want in enumerate(_forward_logprobs(cfg, params, prompts, s, num_samples=2)):
        n = s.lengths[r]
        assert np.abs(s.logprobs[r, :n] - want).max() < TOL
        assert (s.logprobs[r, n:] == 0).all()


def test_cached_decode_logits_equal_full_forward(gemma2):
    cfg, params = gemma2
    model = Decoder(cfg)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (2, 20)), jnp.int32)
    mask = jnp.ones_like(tokens).at[1, :4].set(0)
    positions = positions_from_mask(mask)
    full, _ = model.apply({"params": params}, tokens, positions)
    from grm_jax.models import init_cache
    cache = init_cache(cfg, 2, 24)
    first, cache = model.apply({"params": params}, tokens[:, :12], positions[:, :12], cache)
    steps = [first]
    for t in range(12, 20):
        logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], positions[:, t:t + 1], cache)
        steps.append(logits)
    got = np.concatenate([np.asarray(x) for x in steps], axis=1)
    valid = np.asarray(mask).astype(bool)
    assert np.abs(got - np.asarray(full))[valid].max() < TOL


def test_top_k_one_is_greedy(gemma2):
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size)
    greedy = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=10)
    top1 = generate(params, cfg, prompts, strategy=TopK(1, 0.5), max_new_tokens=10, seed=7)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    scanned = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=10, unroll_layers=False)
    np.testing.assert_array_equal(scanned.tokens, greedy.tokens)
    assert np.abs(scanned.logprobs - greedy.logprobs).max() < TOL


def test_seed_reproduces_and_changes(gemma2):
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size)
    a = generate(params, cfg, prompts, strategy=Temperature(1.0), max_new_tokens=16, seed=1)
    b = generate(params, cfg, prompts, strategy=Temperature(1.0), max_new_tokens=16, seed=1)
    c = generate(params, cfg, prompts, strategy=Temperature(1.0), max_new_tokens=16, seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()


def test_samples_of_one_prompt_share_prefill_but_differ(gemma2):
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size, (7,))
    s = generate(params, cfg, prompts, strategy=Temperature(1.0), max_new_tokens=16, num_samples=4)
    assert s.tokens.shape == (4, 16)
    assert len({tuple(t) for t in s.tokens}) > 1
    # Greedy samples of one prompt are all the same continuation.
    g = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=16, num_samples=3)
    assert all((g.tokens[i] == g.tokens[0]).all() for i in range(3))


def test_stop_tokens_end_rows_and_pad(gemma2):
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size)
    free = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=12)
    stop = int(free.tokens[0, 4])  # a token row 0 emits at step 4
    s = generate(params, cfg, prompts, strategy=Greedy(), max_new_tokens=12, stop_tokens=[stop], pad_id=0)
    first = int(np.flatnonzero(free.tokens[0] == stop)[0])
    assert s.lengths[0] == first + 1 and s.stopped[0]
    np.testing.assert_array_equal(s.tokens[0, :first + 1], free.tokens[0, :first + 1])
    assert (s.tokens[0, first + 1:] == 0).all()


def test_categorical_draws_the_softmax_distribution():
    """`categorical` (inverse CDF at one uniform draw per row) against the softmax it samples:
    200,000 draws per row, each frequency within 5 standard errors of its probability; a token
    at -inf or at a logit 100 below the others is never drawn."""
    probs = np.asarray([[0.5, 0.3, 0.15, 0.05, 0.0], [0.02, 0.0, 0.9, 0.0, 0.08]])
    logits = jnp.asarray(np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -np.inf), jnp.float32)
    logits = logits.at[1, 3].set(float(logits[1, 0]) - 100.0)  # probability e^-100: never drawn
    n = 200_000
    draws = jax.jit(jax.vmap(lambda key: categorical(key, logits)))(jax.random.split(jax.random.key(3), n))
    for row in range(2):
        freq = np.bincount(np.asarray(draws[:, row]), minlength=5) / n
        se = np.sqrt(probs[row] * (1 - probs[row]) / n)
        assert (np.abs(freq - probs[row]) <= 5 * se + 1e-12).all(), (row, freq, probs[row])
    assert not np.isin(np.asarray(draws[:, 0]), [4]).any() and not np.isin(np.asarray(draws[:, 1]), [1, 3]).any()


def test_top_p_keeps_only_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    picks = {int(TopP(0.7).choose(jax.random.key(i), logits)[0]) for i in range(200)}
    assert picks == {0, 1}
    picks = {int(TopK(3).choose(jax.random.key(i), logits)[0]) for i in range(200)}
    assert picks == {0, 1, 2}


@pytest.mark.parametrize("shape,layout,decode_shape", [((2, 2, 2), "tensor", (4, 1, 2)),
                                                      ((1, 8, 1), "tensor", (4, 1, 2)),
                                                      ((1, 8, 1), "train", (1, 8, 1))])
def test_sharded_generation_equals_single_device(gemma2, hf_models, shape, layout, decode_shape):
    """Sampling on a mesh (the params resharded to the tensor-parallel decode view of its devices,
    or decoding on the training layout itself) gives the single-device samples."""
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size)
    single = generate(params, cfg, prompts, strategy=TopK(4), max_new_tokens=10, num_samples=2, seed=5)
    mesh = make_mesh(*shape)
    assert tuple(sampling_mesh(cfg, mesh, layout).shape.values()) == decode_shape  # 4 heads, 2 KV heads
    _, sharded_params = load_hf(hf_models("gemma2")[0], mesh=mesh, progress=False)
    sharded = generate(sharded_params, cfg, prompts, strategy=TopK(4), max_new_tokens=10, num_samples=2,
                       seed=5, mesh=mesh, layout=layout)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    assert np.abs(sharded.logprobs - single.logprobs).max() < TOL


def test_buckets_and_strategy_args():
    assert [bucket(n) for n in (1, 16, 17, 100, 128, 129, 134, 160, 161, 256, 257, 300, 512, 513, 1100)] == \
        [16, 16, 32, 128, 128, 160, 160, 160, 192, 256, 320, 320, 512, 640, 1280]
    assert [bucket(n, per_doubling=1) for n in (129, 300, 1100)] == [256, 512, 2048]
    assert all(n <= bucket(n) < n * 1.25 + 1 for n in range(129, 5000))
    assert strategy_from_args() == Greedy()
    assert strategy_from_args(0.7, top_p=0.9) == TopP(0.9, 0.7)
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)
    with pytest.raises(ValueError, match="one of"):
        strategy_from_args(1.0, top_k=3, top_p=0.5)


def test_bad_prompts(gemma2):
    cfg, params = gemma2
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(params, cfg, [[5, 6], []])
    with pytest.raises(ValueError, match="max_position"):
        generate(params, cfg, [[5] * 10], max_new_tokens=cfg.max_position)
    with pytest.raises(ValueError, match="decode layout must be one of"):
        generate(params, cfg, [[5, 6]], layout="fsdp")
    with pytest.raises(ValueError, match="decode phases must be >= 1"):
        generate(params, cfg, [[5, 6]], decode_phases=0)


def test_unrolled_layers_equal_the_scanned_stack(gemma2):
    from grm_jax.models.decoder import unstack_layers

    cfg, params = gemma2
    tokens = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, (2, 12)), jnp.int32)
    positions = positions_from_mask(jnp.ones_like(tokens))
    scanned, _ = Decoder(cfg).apply({"params": params}, tokens, positions)
    unrolled, _ = Decoder(cfg, unrolled=True).apply({"params": unstack_layers(params)}, tokens, positions)
    assert np.abs(np.asarray(scanned) - np.asarray(unrolled)).max() < TOL


def test_decode_phases_give_the_same_samples(gemma2):
    """Decode phases that attend over only the cache slots their steps can have filled (windows
    of 128, 256 and all 316 slots here) sample exactly what one loop over the whole cache does."""
    cfg, params = gemma2
    prompts = _prompts(cfg.vocab_size)
    assert phase_windows(16, 300, 3) == [128, 256, 316]
    assert phase_steps(16, 300, [128, 256, 316]) == [112, 128, 59]
    runs = [generate(params, cfg, prompts, strategy=TopK(4), max_new_tokens=300, num_samples=2, seed=3,
                     decode_phases=p) for p in (1, 3)]
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_array_equal(runs[0].lengths, runs[1].lengths)
    assert np.abs(runs[0].logprobs - runs[1].logprobs).max() < TOL
