"""Scalar reward models: decoder + value head, trained by Bradley-Terry (the scalar-RM baseline)
or binary cross-entropy (the meta RM of PAPERS.md part A).

Steps are module-level pure functions `(state, batch) -> (state, metrics)`, jitted once with the
state donated.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from grm_jax.models.config import ModelConfig
from grm_jax.models.value_head import last_token_values
from grm_jax.train.losses import binary_cross_entropy_loss, bradley_terry_loss

LOSSES = ("bt", "bce")
HEAD_FILE = "value_head.npz"


class ScalarRMState(NamedTuple):
    params: dict          # {"decoder": decoder params, "head": value head}
    opt_state: optax.OptState
    step: jax.Array


def init_state(decoder_params, head: dict, optimizer: optax.GradientTransformation) -> ScalarRMState:
    params = {"decoder": decoder_params, "head": head}
    return ScalarRMState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def _loss(params, config, batch, kind, mesh, unrolled, prefix):
    values = last_token_values(params["decoder"], params["head"], config, batch["tokens"],
                               batch["positions"], mesh=mesh, unrolled=unrolled, prefix=prefix)
    if kind == "bt":  # rows [0, B) are chosen, [B, 2B) their rejected partners
        chosen, rejected = jnp.split(values, 2)
        return bradley_terry_loss(chosen, rejected), {"accuracy": jnp.mean(chosen > rejected)}
    loss = binary_cross_entropy_loss(values, batch["labels"])
    return loss, {"accuracy": jnp.mean((values > 0) == (batch["labels"] > 0))}


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation, loss: str = "bt",
                    mesh: Mesh | None = None, unrolled: bool = False, prefix: int = 0):
    """A jitted step(state, batch) -> (state, metrics).

    batch: "tokens", "positions" [R, T] (negative position = padding); for "bt" R = 2B with the
    chosen rows first; for "bce" also "labels" [R] in {0, 1}. `prefix`: the leading tokens every
    row shares (`last_token_values`).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")

    def step(state: ScalarRMState, batch):
        (value, aux), grads = jax.value_and_grad(_loss, has_aux=True)(state.params, config, batch, loss, mesh, unrolled,
                                                                      prefix)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **aux}
        return ScalarRMState(params, opt_state, state.step + 1), metrics

    return jax.jit(step, donate_argnums=0)


def save_value_head(directory: str | Path, head: dict) -> Path:
    path = Path(directory) / HEAD_FILE
    np.savez(path, kernel=np.asarray(head["kernel"]), bias=np.asarray(head["bias"]))
    return path


def load_value_head(directory: str | Path) -> dict:
    path = Path(directory) / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {HEAD_FILE}; not a scalar reward model checkpoint")
    with np.load(path) as f:
        return {"kernel": jnp.asarray(f["kernel"], jnp.float32), "bias": jnp.asarray(f["bias"], jnp.float32)}


def fit(decoder_params, config: ModelConfig, batches, *, loss: str, steps: int, optimizer,
        seed: int = 0, mesh: Mesh | None = None, progress: bool = True, desc: str = "scalar RM",
        unrolled: bool = False, prefix: int = 0):
    """Trains decoder + a fresh value head for `steps` batches of `batches` (an iterator of
    numpy batches as `make_train_step` takes; every row's first `prefix` tokens the same).
    Returns ({"decoder", "head"} params, per-step metrics)."""
    from tqdm.auto import tqdm

    from grm_jax.models.value_head import init_value_head

    head = init_value_head(config, jax.random.key(seed))
    state = init_state(jax.tree.map(jnp.copy, decoder_params), head, optimizer)
    step = make_train_step(config, optimizer, loss, mesh, unrolled, prefix)
    history = []
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        state, m = step(state, next(batches))
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return state.params, history
