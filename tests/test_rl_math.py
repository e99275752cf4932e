"""GRPO math: advantages, clipped surrogate, KL estimators, aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grm_jax.train.rl import aggregate, clipped_surrogate, group_advantages, grpo_loss, kl_estimate


def test_group_advantages_by_hand():
    r = jnp.asarray([1.0, -1.0, -1.0, -1.0, 2.0, 4.0, 6.0, 8.0])
    got = np.asarray(group_advantages(r, 4))
    # Group 1: mean -0.5, population std sqrt(0.75).
    s1 = np.sqrt(0.75)
    np.testing.assert_allclose(got[:4], [1.5 / s1, -0.5 / s1, -0.5 / s1, -0.5 / s1], rtol=1e-5)
    s2 = np.sqrt(5.0)  # 2,4,6,8: mean 5, deviations -3,-1,1,3
    np.testing.assert_allclose(got[4:], [-3 / s2, -1 / s2, 1 / s2, 3 / s2], rtol=1e-5)


def test_all_equal_rewards_give_zero_advantage_not_nan():
    got = np.asarray(group_advantages(jnp.asarray([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), 3))
    assert np.isfinite(got).all() and (got == 0).all()


def _logp(theta, actions):
    return jax.nn.log_softmax(theta)[actions]


def test_surrogate_gradient_at_ratio_one_is_minus_advantage_times_score():
    theta = jnp.asarray([0.3, -0.2, 1.1, 0.0])
    actions = jnp.asarray([2, 0, 3])
    adv = jnp.asarray([1.7, -0.4, 0.9])

    def loss(t):
        lp = _logp(t, actions)[:, None]
        obj, _ = clipped_surrogate(lp, jax.lax.stop_gradient(lp), adv)
        return -obj.sum()

    want = sum(-a * jax.grad(lambda t, i=i: _logp(t, actions)[i])(theta) for i, a in enumerate(adv))
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(theta)), np.asarray(want), atol=1e-6)


def test_clipping_stops_the_gradient_outside_the_trust_region():
    lp = jnp.log(jnp.asarray([[0.5]]))
    old = jnp.log(jnp.asarray([[0.3]]))      # ρ = 1.67 > 1.2
    g_pos = jax.grad(lambda x: clipped_surrogate(x, old, jnp.asarray([1.0]))[0].sum())(lp)
    g_neg = jax.grad(lambda x: clipped_surrogate(x, old, jnp.asarray([-1.0]))[0].sum())(lp)
    assert float(g_pos[0, 0]) == 0.0           # positive advantage: clipped, no push further
    assert float(g_neg[0, 0]) != 0.0           # negative advantage: min picks the unclipped term
    _, clipped = clipped_surrogate(lp, old, jnp.asarray([1.0]), eps_high=1.0)  # ε_high widens it
    assert not bool(clipped[0, 0])


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_values_and_gradients(kind):
    theta = jnp.asarray([0.2, -0.5, 0.9])
    ref = jax.nn.log_softmax(jnp.asarray([0.0, 0.1, 0.4]))
    for a in range(3):
        lp = _logp(theta, a)
        q = ref[a] - lp
        value = {"k1": -q, "k2": 0.5 * q ** 2, "k3": jnp.exp(q) - q - 1}[kind]
        dvalue_dlp = {"k1": 1.0, "k2": -q, "k3": 1.0 - jnp.exp(q)}[kind]
        assert abs(float(kl_estimate(lp, ref[a], kind)) - float(value)) < 1e-6
        got = jax.grad(lambda t: kl_estimate(_logp(t, a), ref[a], kind))(theta)
        want = dvalue_dlp * jax.grad(lambda t: _logp(t, a))(theta)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    # Under π_θ, k1 and k3 are unbiased for KL(π_θ ‖ π_ref); k2 is not (it is the second-order
    # term, here 0.0728 against 0.0833).
    p = jax.nn.softmax(theta)
    exact = float(jnp.sum(p * (jnp.log(p) - ref)))
    expect = float(sum(p[a] * kl_estimate(jnp.log(p[a]), ref[a], kind) for a in range(3)))
    assert (abs(expect - exact) < 1e-6) == (kind != "k2")


def test_aggregation_modes_on_a_hand_made_batch():
    x = jnp.asarray([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(aggregate(x, mask, "sequence_mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate(x, mask, "token_mean")) == pytest.approx(10.0 / 4)
    assert float(aggregate(x, mask, "sequence_sum")) == pytest.approx((6.0 + 4.0) / 2 / 4)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, mask, "max")


def test_grpo_loss_at_ratio_one_without_kl_is_minus_mean_advantage():
    lp = jnp.log(jnp.full((2, 3), 0.5))
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1]])
    loss, m = grpo_loss(lp, lp, lp, jnp.asarray([1.0, -3.0]), mask, beta=0.0)
    assert float(loss) == pytest.approx(1.0) and float(m["clip_fraction"]) == 0.0
    loss_kl, m = grpo_loss(lp, lp, lp - 0.1, jnp.asarray([1.0, -3.0]), mask, beta=0.5)
    k3 = np.exp(-0.1) + 0.1 - 1
    assert float(loss_kl) == pytest.approx(1.0 + 0.5 * k3, rel=1e-5) and float(m["kl"]) == pytest.approx(k3, rel=1e-5)
