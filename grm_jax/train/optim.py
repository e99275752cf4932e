"""Optimizer and learning-rate schedule from a frozen config.

AdamW with warmup then cosine decay (or constant), global-norm clipping, weight decay on matrices
only, and optionally float32 optimizer moments for bfloat16 params (`fp32_moments`): the moments
and the update are computed in float32 and the update is cast to the param dtype.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.0       # cosine floor as a fraction of lr
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    grad_accum: int = 1             # microbatches per step
    fp32_moments: bool = True

    def __post_init__(self):
        from grm_jax.config import validate

        validate(self)
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds total_steps {self.total_steps}")


def learning_rate(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to lr over warmup_steps, then cosine down to lr·min_lr_ratio at
    total_steps (or constant)."""
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        after = optax.cosine_decay_schedule(cfg.lr, max(cfg.total_steps - cfg.warmup_steps, 1),
                                            alpha=cfg.min_lr_ratio)
    if not cfg.warmup_steps:
        return after
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, after], [cfg.warmup_steps])


def _decay_mask(params):
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def _in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs `inner` on float32 copies of grads and params; returns updates in the param dtype."""
    def f32(tree):
        return jax.tree.map(lambda x: x.astype(jnp.float32), tree)

    def init(params):
        return inner.init(f32(params))

    def update(grads, state, params=None):
        updates, state = inner.update(f32(grads), state, None if params is None else f32(params))
        if params is not None:
            updates = jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params)
        return updates, state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=_decay_mask)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(adamw)
    tx = optax.chain(*parts)
    return _in_float32(tx) if cfg.fp32_moments else tx
