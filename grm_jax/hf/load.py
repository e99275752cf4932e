"""Loading a Hugging Face checkpoint directory into sharded grm-jax params.

Every tensor streams from its memory-mapped safetensors file straight into its sharded device
array: each device's callback reads only its own slice, so the model is never held whole in host
memory, let alone twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from grm_jax.hf.keys import KeyRule, expand, ignorable, key_table
from grm_jax.hf.safetensors_io import SafetensorsFile, open_checkpoint
from grm_jax.models import ModelConfig, abstract_params, dtype_of, from_hf_config
from grm_jax.sharding import make_mesh, tree_shardings


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match what its config describes."""


def read_hf_config(directory: str | Path, *, param_dtype: str | None = None,
                   dtype: str | None = None) -> ModelConfig:
    """The ModelConfig of an HF directory; dtypes default to the checkpoint's own (else float32)."""
    cfg = from_hf_config(directory)
    raw = json.loads((Path(directory) / "config.json").read_text())
    stored = raw.get("dtype") or raw.get("torch_dtype")
    param_dtype = param_dtype or (stored if stored in ("float32", "bfloat16", "float16") else "float32")
    return cfg.replace(param_dtype=param_dtype, dtype=dtype or param_dtype)


def load_hf(directory: str | Path, *, mesh: Mesh | None = None, param_dtype: str | None = None,
            dtype: str | None = None, progress: bool = True):
    """Loads an HF model directory.

    Args:
      directory: holds config.json and model.safetensors or model.safetensors.index.json.
      mesh: device mesh to shard the params over (default: the first device alone).
      param_dtype: storage dtype of the params (default: the checkpoint's).
      dtype: compute dtype (default: param_dtype).
      progress: show a progress bar.

    Returns:
      (ModelConfig, params) with params a nested dict of sharded jax.Arrays.

    Raises:
      CheckpointMismatchError: a tensor is missing, unexpected, or of the wrong shape.
      SafetensorsError: a safetensors file is corrupt.
    """
    directory = Path(directory)
    cfg = read_hf_config(directory, param_dtype=param_dtype, dtype=dtype)
    files = open_checkpoint(directory)
    table = expand(key_table(cfg), cfg.num_layers)
    _check_keys(directory, cfg, files, table)

    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    abstract, names = abstract_params(cfg)
    shardings = tree_shardings(names, abstract, mesh)
    by_path: dict[tuple[str, ...], KeyRule] = {rule.path: rule for rule, _ in table.values()}
    pdt = np.dtype(dtype_of(cfg.param_dtype))

    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    sharding_leaves = jax.tree.leaves(shardings)
    out = []
    bar = tqdm(total=len(leaves), desc=f"load {directory.name}", unit="tensor", disable=not progress)
    for (keypath, leaf), sharding in zip(leaves, sharding_leaves):
        path = tuple(k.key for k in keypath)
        rule = by_path.get(path)
        if rule is None:
            raise AssertionError(f"no HF key rule produces param {'/'.join(path)}")
        _check_shapes(directory, files, rule, leaf.shape, cfg.num_layers)
        out.append(jax.make_array_from_callback(leaf.shape, sharding, _reader(files, rule, pdt, cfg.num_layers)))
        bar.update()
    bar.close()
    return cfg, jax.tree_util.tree_unflatten(treedef, out)


def _reader(files: dict[str, SafetensorsFile], rule: KeyRule, pdt: np.dtype, num_layers: int):
    """Callback giving the slice `index` of one param, read from disk on demand.

    Replicated params ask for the same slice once per device; the memo (alive only while this
    one param is built) reads it once.
    """
    memo = {}

    def read(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in memo:
            if rule.per_layer:
                parts = [_view(files, rule.hf.format(i=i), rule)[index[1:]]
                         for i in range(num_layers)[index[0]]]
                memo[key] = np.stack(parts).astype(pdt)
            else:
                memo[key] = np.asarray(_view(files, rule.hf, rule)[index], dtype=pdt)
        return memo[key]

    return read


def _view(files, name: str, rule: KeyRule) -> np.ndarray:
    return rule.transform.to_ours(files[name].get(name))


def _check_keys(directory: Path, cfg: ModelConfig, files: dict, table: dict) -> None:
    missing = sorted(n for n in table if n not in files)
    unexpected = sorted(n for n in files if n not in table and not ignorable(n, cfg))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}), e.g. "
                        f"{', '.join(f'{n} in {files[n].path.name}' for n in unexpected[:8])}")
    if problems:
        raise CheckpointMismatchError(
            f"{directory}: checkpoint does not match its {cfg.family} config.json: "
            + "; ".join(problems))


def _check_shapes(directory: Path, files: dict, rule: KeyRule, our_shape: tuple, num_layers: int):
    inner = our_shape[1:] if rule.per_layer else our_shape
    want = rule.transform.hf_shape(inner)
    names = [rule.hf.format(i=i) for i in range(num_layers)] if rule.per_layer else [rule.hf]
    for name in names:
        got = files[name].shape(name)
        if tuple(got) != tuple(want):
            raise CheckpointMismatchError(
                f"{files[name].path}: tensor {name!r} has shape {tuple(got)}, but "
                f"{directory / 'config.json'} implies {tuple(want)}")
