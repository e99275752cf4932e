"""Losses as small pure functions, each with its equation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bradley_terry_loss(chosen_B: jax.Array, rejected_B: jax.Array) -> jax.Array:
    """−mean log σ(v_chosen − v_rejected): the Bradley-Terry likelihood of the preferences."""
    return -jnp.mean(jax.nn.log_sigmoid(chosen_B - rejected_B))


def binary_cross_entropy_loss(logits_B: jax.Array, labels_B: jax.Array) -> jax.Array:
    """mean[softplus(z) − y·z] = −mean[y log σ(z) + (1 − y) log(1 − σ(z))], labels y in {0, 1}."""
    labels_B = labels_B.astype(logits_B.dtype)
    return jnp.mean(jax.nn.softplus(logits_B) - labels_B * logits_B)
