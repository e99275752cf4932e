"""Writing grm-jax params as a Hugging Face model directory.

The directory is built under a temporary name beside the target and renamed into place only when
complete, so a failed export never leaves a half-written model where a good one is expected.
Tensors are fetched to the host one (layer) at a time while the shards are written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from grm_jax.atomic import atomic_directory
from grm_jax.hf.keys import expand, key_table
from grm_jax.hf.paths import tokenizer_files
from grm_jax.hf.safetensors_io import plan_shards, write_file
from grm_jax.models import ModelConfig, dtype_of, to_hf_config



def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a plain byte count -> bytes."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(t)


def export_hf(params, cfg: ModelConfig, out_dir: str | Path, *, dtype: str | None = None,
              shard_size: int | str = "5GB", tokenizer_from: str | Path | None = None,
              overwrite: bool = False, progress: bool = True) -> Path:
    """Writes `params` as an HF directory that `AutoModelForCausalLM.from_pretrained` loads.

    Args:
      params: nested dict of arrays (sharded or not) for `cfg`.
      cfg: the model config.
      out_dir: target directory; must not exist unless `overwrite`.
      dtype: tensor dtype to write (default: cfg.param_dtype).
      shard_size: largest safetensors shard, e.g. '5GB'.
      tokenizer_from: a directory whose tokenizer files are copied alongside.
      overwrite: replace an existing `out_dir`.
      progress: show a progress bar.

    Returns:
      The output directory.
    """
    dtype = dtype or cfg.param_dtype
    np_dtype = np.dtype(dtype_of(dtype))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        _write_model(params, cfg.replace(param_dtype=dtype), tmp, np_dtype, parse_size(shard_size), progress)
        if tokenizer_from is not None and jax.process_index() == 0:
            for src in tokenizer_files(tokenizer_from):
                shutil.copy2(src, tmp / src.name)
    return Path(out_dir).absolute()


def _write_model(params, cfg: ModelConfig, directory: Path, np_dtype, shard_size: int, progress):
    """Writes the model files. Every process runs it (gathering a tensor sharded across hosts is a
    collective); only process 0 writes."""
    main = jax.process_index() == 0
    if main:
        _write_configs(cfg, directory)
    _write_tensors(params, cfg, directory if main else None, np_dtype, shard_size, progress and main)


def _write_configs(cfg: ModelConfig, directory: Path):
    (directory / "config.json").write_text(json.dumps(to_hf_config(cfg), indent=2) + "\n")
    generation = {k: v for k, v in (("bos_token_id", cfg.bos_token_id),
                                    ("eos_token_id", cfg.eos_token_id),
                                    ("pad_token_id", cfg.pad_token_id)) if v is not None}
    if isinstance(generation.get("eos_token_id"), tuple):
        generation["eos_token_id"] = list(generation["eos_token_id"])
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _write_tensors(params, cfg: ModelConfig, directory: Path | None, np_dtype, shard_size: int, progress):
    table = expand(key_table(cfg), cfg.num_layers)
    entries, getters = [], {}
    for name, (rule, layer) in table.items():
        leaf = params
        for k in rule.path:
            leaf = leaf[k]
        inner = leaf.shape[1:] if rule.per_layer else leaf.shape
        entries.append((name, rule.transform.hf_shape(inner), np_dtype))
        getters[name] = (leaf, rule, layer)

    shards = plan_shards(entries, shard_size)
    n = len(shards)
    bar = tqdm(total=len(entries), desc="export", unit="tensor", disable=not progress)

    def tensors(shard):
        for name, _, _ in shard:
            leaf, rule, layer = getters[name]
            host = _to_host(leaf if layer is None else _take_layer(leaf, layer))
            bar.update()
            yield rule.transform.to_hf(host).astype(np_dtype)

    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        if directory is None:  # not process 0: take part in the gathers, write nothing
            for _ in tensors(shard):
                pass
            continue
        total += write_file(directory / fname, shard, tensors(shard))
        weight_map.update({name: fname for name, _, _ in shard})
    bar.close()
    if n > 1 and directory is not None:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


@jax.jit
def _take_layer(stacked, i):
    return stacked[i]


def _to_host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
