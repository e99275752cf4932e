"""Model checkpoints: Orbax params beside the model config (and tokenizer files, if any).

Layout of a model checkpoint directory:
  model_config.json   the ModelConfig
  params/             Orbax checkpoint of the param pytree
  tokenizer/          tokenizer files copied from the source HF directory (optional)
  value_head.npz      a scalar reward model's value head (optional)

It is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from grm_jax.atomic import atomic_directory
from grm_jax.models import ModelConfig, abstract_params, dtype_of
from grm_jax.sharding import make_mesh, tree_shardings

CONFIG_FILE = "model_config.json"


def is_model_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / "params").is_dir()


def save_model(ckpt_dir: str | Path, params, cfg: ModelConfig, *, tokenizer_files=(),
               extra_arrays: dict[str, dict] | None = None, overwrite: bool = False) -> Path:
    """Saves params and config to `ckpt_dir` atomically; refuses an existing one unless overwrite.

    `extra_arrays` {name: {key: array}} are written as NAME.npz beside the params (a value head).
    """
    main = jax.process_index() == 0  # Orbax writes the params from every process; the rest is process 0's
    with atomic_directory(ckpt_dir, overwrite=overwrite) as tmp:
        if main:
            cfg.save(tmp / CONFIG_FILE)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            ckptr.wait_until_finished()
        if not main:
            return Path(ckpt_dir).absolute()
        for name, arrays in (extra_arrays or {}).items():
            np.savez(tmp / f"{name}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
        files = [Path(f) for f in tokenizer_files]
        if files:
            (tmp / "tokenizer").mkdir()
            for f in files:
                shutil.copy2(f, tmp / "tokenizer" / f.name)
    return Path(ckpt_dir).absolute()


def load_model(ckpt_dir: str | Path, *, mesh: Mesh | None = None, param_dtype: str | None = None):
    """Restores (ModelConfig, params) sharded over `mesh` (default: the first device alone)."""
    path = Path(ckpt_dir).absolute()
    if not is_model_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a grm-jax model checkpoint (expected {CONFIG_FILE} "
                                "and params/)")
    cfg = ModelConfig.load(path / CONFIG_FILE)
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    abstract, names = abstract_params(cfg)
    shardings = tree_shardings(names, abstract, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params", target)
    if param_dtype and param_dtype != cfg.param_dtype:
        params = jax.tree.map(lambda x: x.astype(dtype_of(param_dtype)), params)
        cfg = cfg.replace(param_dtype=param_dtype, dtype=param_dtype)
    return cfg, params


def tokenizer_dir(ckpt_dir: str | Path) -> Path | None:
    """The tokenizer folder of a model checkpoint, if it has one."""
    t = Path(ckpt_dir) / "tokenizer"
    return t if t.is_dir() else None
