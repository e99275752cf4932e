"""Train state and the generic jitted train step with gradient accumulation.

A loss function has the signature `loss_fn(params, microbatch, normalizer) -> (loss, metrics)`,
where `normalizer` is computed once from the whole batch (tokens or sequences in it) so that
summing the microbatch losses gives exactly the full-batch loss, whatever the split.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array          # raw uint32 key data, so it checkpoints as a plain array


def init_train_state(params, optimizer: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """The state for `params`; optimizer moments are sharded like the params they follow, the
    rest (step counts, the RNG) replicated over the params' mesh. (Sharding does not propagate
    into zeros by itself: the moments would come out replicated.)"""
    from grm_jax.sharding import follow_params

    mesh = next((x.sharding.mesh for x in jax.tree.leaves(params) if isinstance(x.sharding, NamedSharding)), None)
    step, rng = jnp.zeros((), jnp.int32), jax.random.key_data(jax.random.key(seed))
    if mesh is None:
        return TrainState(params, jax.jit(optimizer.init)(params), step, rng)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = follow_params(jax.eval_shape(optimizer.init, params), params,
                              jax.tree.map(lambda x: x.sharding, params), replicated)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings)(params)
    return TrainState(params, opt_state, jax.device_put(step, replicated), jax.device_put(rng, replicated))


def split_microbatches(batch: dict, accum: int) -> dict:
    """[R, ...] -> [accum, R / accum, ...] for every array of the batch."""
    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {accum} microbatches")
        return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
    return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable, normalizer: Callable, optimizer: optax.GradientTransformation, *,
                    grad_accum: int = 1, state_shardings=None):
    """step(state, batch) -> (state, metrics), jitted with the state donated.

    Gradients of `grad_accum` microbatches are summed in a scan (each microbatch loss already
    divided by the whole batch's normalizer), then one optimizer update is applied.
    """
    def step(state: TrainState, batch):
        norm = normalizer(batch)
        micro = split_microbatches(batch, grad_accum)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def one(carry, mb):
            grads_acc, loss_acc, metrics_acc = carry
            (loss, metrics), grads = grad_fn(state.params, mb, norm)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
            return (grads_acc, loss_acc + loss, metrics_acc), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        (_, m0), _ = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), norm)
        metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m0)
        (grads, loss, metrics), _ = jax.lax.scan(one, (zeros, jnp.zeros((), jnp.float32), metric_zeros), micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1, state.rng), metrics

    out = None if state_shardings is None else (state_shardings, None)
    return jax.jit(step, donate_argnums=0, out_shardings=out)
