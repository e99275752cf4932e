"""Bad checkpoints give clear errors naming the file and the tensor."""

import json
import shutil
import struct

import pytest

from grm_jax.hf import CheckpointMismatchError, SafetensorsError, load_hf
from grm_jax.hf.safetensors_io import SafetensorsFile, write_file
from grm_jax.models import UnsupportedModelError


@pytest.fixture
def llama_dir(hf_models, tmp_path):
    src, _ = hf_models("llama")
    d = tmp_path / "llama"
    shutil.copytree(src, d)
    return d


def _rewrite(directory, change):
    """Rewrites model.safetensors with `change(dict name->array)` applied."""
    path = directory / "model.safetensors"
    f = SafetensorsFile(path)
    tensors = {n: f.get(n).copy() for n in f.names()}
    del f
    change(tensors)
    entries = [(n, a.shape, a.dtype) for n, a in tensors.items()]
    write_file(path, entries, iter(tensors.values()))


def test_missing_tensor(llama_dir):
    _rewrite(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(llama_dir, progress=False)


def test_unexpected_tensor(llama_dir):
    def add(t):
        t["model.layers.0.extra.weight"] = t["model.norm.weight"].copy()
    _rewrite(llama_dir, add)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected.*model\.layers\.0\.extra\.weight in model\.safetensors"):
        load_hf(llama_dir, progress=False)


def test_wrong_shape(llama_dir):
    def shrink(t):
        t["model.layers.2.self_attn.k_proj.weight"] = t["model.layers.2.self_attn.k_proj.weight"][:-1]
    _rewrite(llama_dir, shrink)
    with pytest.raises(CheckpointMismatchError,
                       match=r"model\.safetensors: tensor 'model\.layers\.2\.self_attn\.k_proj\.weight' has shape \(31, 64\).*\(32, 64\)"):
        load_hf(llama_dir, progress=False)


def test_unknown_model_type(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"config\.json: model_type 'falcon' is not supported"):
        load_hf(llama_dir, progress=False)


def test_unsupported_rope_type(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                              "original_max_position_embeddings": 64}
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="RoPE type 'yarn'"):
        load_hf(llama_dir, progress=False)


def test_truncated_safetensors(llama_dir):
    path = llama_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: tensor .* truncated"):
        load_hf(llama_dir, progress=False)


def test_garbage_header(llama_dir):
    path = llama_dir / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json at all" + b"\0" * 64)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: header is not valid JSON"):
        load_hf(llama_dir, progress=False)


def test_header_length_beyond_file(llama_dir):
    path = llama_dir / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(SafetensorsError, match="corrupt header length"):
        load_hf(llama_dir, progress=False)


def test_no_weights(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(llama_dir, progress=False)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(tmp_path, progress=False)
