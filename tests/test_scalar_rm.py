"""Value head and the Bradley-Terry / binary cross-entropy steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grm_jax.hf import load_hf
from grm_jax.hf.tiny import TINY
from grm_jax.models.value_head import init_value_head, last_token_values
from grm_jax.train.model_checkpoint import load_model, save_model
from grm_jax.train.losses import binary_cross_entropy_loss, bradley_terry_loss
from grm_jax.train.scalar_rm import init_state, load_value_head, make_train_step


FAMILIES = tuple(TINY)


def _rows(rng, vocab, n, last, T=12):
    """Right-padded rows of random length ending in token `last`."""
    tokens = np.zeros((n, T), np.int32)
    positions = np.full((n, T), -1, np.int32)
    for i in range(n):
        L = int(rng.integers(4, T + 1))
        tokens[i, :L] = rng.integers(30, vocab, L)
        tokens[i, L - 1] = last
        positions[i, :L] = np.arange(L)
    return tokens, positions


def test_losses_match_their_equations():
    c, r = jnp.asarray([2.0, -1.0]), jnp.asarray([0.5, 0.5])
    want = -np.mean(np.log(1 / (1 + np.exp(-(np.array([2.0, -1.0]) - 0.5)))))
    assert abs(float(bradley_terry_loss(c, r)) - want) < 1e-6
    z, y = np.array([1.5, -0.3, 2.0]), np.array([1, 0, 0])
    p = 1 / (1 + np.exp(-z))
    want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert abs(float(binary_cross_entropy_loss(jnp.asarray(z), jnp.asarray(y))) - want) < 1e-6


def test_value_is_read_at_the_last_real_token(hf_models):
    cfg, params = load_hf(hf_models("qwen2")[0], progress=False)
    head = init_value_head(cfg, jax.random.key(0))
    tokens, positions = _rows(np.random.default_rng(0), cfg.vocab_size, 3, last=10)
    got = last_token_values(params, head, cfg, jnp.asarray(tokens), jnp.asarray(positions))
    for i in range(3):
        n = int((positions[i] >= 0).sum())
        alone = last_token_values(params, head, cfg, jnp.asarray(tokens[i:i + 1, :n]),
                                  jnp.asarray(positions[i:i + 1, :n]))
        assert abs(float(got[i]) - float(alone[0])) < 1e-5


def test_unrolled_values_and_steps_equal_the_scanned_ones(hf_models):
    cfg, params = load_hf(hf_models("qwen2")[0], progress=False)
    head = init_value_head(cfg, jax.random.key(0))
    tokens, positions = (jnp.asarray(x) for x in _rows(np.random.default_rng(2), cfg.vocab_size, 4, last=10))
    scanned = last_token_values(params, head, cfg, tokens, positions)
    unrolled = last_token_values(params, head, cfg, tokens, positions, unrolled=True)
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), atol=1e-5)
    batch = {"tokens": tokens, "positions": positions, "labels": jnp.asarray([1, 0, 1, 0], jnp.int32)}
    opt = optax.adam(1e-3)
    # the step donates its state: each gets its own copy
    metrics = [make_train_step(cfg, opt, "bce", unrolled=u)(
        init_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, head), opt), batch)[1]
        for u in (False, True)]
    for key in ("loss", "grad_norm"):
        assert abs(float(metrics[0][key]) - float(metrics[1][key])) < 1e-5, key


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_at_one_token_equals_the_whole_forward(family, hf_models):
    """`hidden_at_B`: the unrolled decoder's last layer run at one position per row (queries,
    attention output, MLP, Gemma's extra norms) gives the full forward's hidden state there, on
    rows longer than the sliding windows (8)."""
    from grm_jax.models.decoder import Decoder, unstack_layers

    cfg, params = load_hf(hf_models(family)[0], progress=False)
    tokens, positions = (jnp.asarray(x) for x in _rows(np.random.default_rng(3), cfg.vocab_size, 4, last=10, T=20))
    at = jnp.asarray([3, 19, 11, 0])
    whole, _ = Decoder(cfg).apply({"params": params}, tokens, positions, hidden_only=True)
    one, _ = Decoder(cfg, unrolled=True).apply({"params": unstack_layers(params)}, tokens, positions,
                                               hidden_only=True, hidden_at_B=at)
    assert one.shape == (4, cfg.embed_dim)
    np.testing.assert_allclose(np.asarray(one), np.asarray(whole)[np.arange(4), np.asarray(at)], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_a_shared_prefix_run_once_gives_the_same_values_and_gradients(family, hf_models):
    """`prefix`: the rows' common opening runs as one row, the rest of every row over a copy of
    its KV cache (Gemma 3: sliding windows of 8 reach back into it), scanned and unrolled, with a
    padding row (values read, then dropped)."""
    from grm_jax.models.value_head import shared_prefix

    cfg, params = load_hf(hf_models(family)[0], progress=False)
    head = init_value_head(cfg, jax.random.key(1))
    tokens, positions = _rows(np.random.default_rng(4), cfg.vocab_size, 4, last=10, T=24)
    tokens[:, :6] = tokens[0, :6]
    positions[:, :6] = np.arange(6)
    tokens[3], positions[3] = 0, -1  # a padding row, as meta_values adds
    prefix = shared_prefix([t[p >= 0] for t, p in zip(tokens[:3], positions[:3])])
    assert prefix >= 6
    tokens, positions = jnp.asarray(tokens), jnp.asarray(positions)
    for unrolled in (False, True):
        def values(p, n):
            return last_token_values(p, head, cfg, tokens, positions, unrolled=unrolled, prefix=n)[:3]

        want, got = values(params, 0), values(params, prefix)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
        g_want, g_got = (jax.grad(lambda p: values(p, n).sum())(params) for n in (0, prefix))
        for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_shared_prefix_stops_before_the_shortest_rows_last_token():
    from grm_jax.models.value_head import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix([[7], [7, 8]]) == 0 and shared_prefix([]) == 0


@pytest.mark.parametrize("loss", ["bt", "bce"])
def test_steps_learn_a_separable_set(loss, hf_models):
    cfg, params = load_hf(hf_models("qwen2")[0], progress=False)
    rng = np.random.default_rng(1)
    good = _rows(rng, cfg.vocab_size, 8, last=10)
    bad = _rows(rng, cfg.vocab_size, 8, last=20)
    tokens = jnp.asarray(np.concatenate([good[0], bad[0]]))
    positions = jnp.asarray(np.concatenate([good[1], bad[1]]))
    batch = {"tokens": tokens, "positions": positions}
    if loss == "bce":
        batch["labels"] = jnp.asarray([1] * 8 + [0] * 8, jnp.int32)
    opt = optax.adam(3e-3)
    state = init_state(params, init_value_head(cfg, jax.random.key(1)), opt)
    step = make_train_step(cfg, opt, loss)
    losses = []
    for _ in range(25):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(m["accuracy"]) == 1.0 and int(state.step) == 25


def test_value_head_saved_with_the_model(tmp_path, hf_models):
    cfg, params = load_hf(hf_models("qwen2")[0], progress=False)
    head = init_value_head(cfg, jax.random.key(2))
    save_model(tmp_path / "rm", params, cfg, extra_arrays={"value_head": head})
    _, restored = load_model(tmp_path / "rm")
    back = load_value_head(tmp_path / "rm")
    np.testing.assert_array_equal(np.asarray(back["kernel"]), np.asarray(head["kernel"]))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), restored, params))
    with pytest.raises(FileNotFoundError, match="value_head.npz"):
        load_value_head(tmp_path)
