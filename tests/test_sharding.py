"""Sharded equals single-device; cached decode equals the full forward; full-size shapes."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import padded_batch

from grm_jax.hf import load_hf
from grm_jax.models import (CACHE_LOGICAL_NAMES, Decoder, abstract_params, from_hf_config, init_cache,
                            positions_from_mask)
from grm_jax.sharding import (batch_sharding, bytes_per_device, decode_mesh, decode_mesh_shape, logical_to_spec,
                              make_mesh, parse_mesh_spec, tree_shardings, unsharded_dims)
from jax.sharding import PartitionSpec as P

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "models").glob("*.json"))


@pytest.mark.parametrize("family", ["gemma2", "qwen2"])
def test_sharded_forward_equals_single_device(family, hf_models):
    directory, _ = hf_models(family)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    cfg, single = load_hf(directory, progress=False)
    _, sharded = load_hf(directory, mesh=mesh, progress=False)
    # The params really are spread out: the q projection is split over fsdp (embed) and tensor (heads).
    q = sharded["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1:3] == (32, 2)

    tokens, mask = padded_batch(cfg.vocab_size, length=24)
    tokens, mask = np.concatenate([tokens, tokens[:1]]), np.concatenate([mask, mask[:1]])  # B=4
    positions = positions_from_mask(jnp.asarray(mask))
    want, _ = jax.jit(lambda p, t, pos: Decoder(cfg).apply({"params": p}, t, pos))(single, tokens, positions)
    bs = batch_sharding(mesh, tokens.shape)
    fn = jax.jit(lambda p, t, pos: Decoder(cfg, mesh).apply({"params": p}, t, pos)[0],
                 out_shardings=jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
    got = fn(sharded, jax.device_put(tokens, bs), jax.device_put(positions, bs))
    assert len(got.sharding.device_set) == 8
    valid = mask.astype(bool)
    assert np.abs(np.asarray(got) - np.asarray(want))[valid].max() < 1e-5


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
def test_cached_decode_equals_full_forward(family, hf_models):
    directory, _ = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    tokens, mask = padded_batch(cfg.vocab_size, length=20)
    positions = positions_from_mask(jnp.asarray(mask))
    model = Decoder(cfg)
    full, _ = model.apply({"params": params}, jnp.asarray(tokens), positions)
    # Prefill 12 tokens, then decode the remaining 8 one at a time through the cache.
    cache = init_cache(cfg, tokens.shape[0], 24)
    logits, cache = model.apply({"params": params}, jnp.asarray(tokens[:, :12]), positions[:, :12], cache)
    steps = [logits]
    step = jax.jit(lambda c, t, p: model.apply({"params": params}, t, p, c))
    for i in range(12, 20):
        logits, cache = step(cache, jnp.asarray(tokens[:, i:i + 1]), positions[:, i:i + 1])
        steps.append(logits)
    assert int(cache["end"]) == 20
    cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
    valid = mask.astype(bool)
    assert np.abs(cached - np.asarray(full))[valid].max() < 1e-5


def test_rules_skip_mesh_axes_that_do_not_divide():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    # 2 KV heads cannot be split 4 ways: replicated on tensor, and reported.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp", None, None)
    assert unsharded_dims(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == ["kv_heads"]
    # A mesh axis is used once per array: batch takes fsdp, so embed stays whole.
    assert logical_to_spec(("batch", "length", "embed"), (8, 16, 64), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("heads", "head_dim", "embed"), (8, 16, 64), mesh) == P("tensor", None, "fsdp")
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_spec(("nonsense",), (4,), mesh)


def test_mesh_spec_parsing():
    assert parse_mesh_spec("data=2, fsdp=-1") == {"data": 2, "fsdp": -1}
    assert dict(make_mesh(**parse_mesh_spec("tensor=2")).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="unknown axis 'model'"):
        parse_mesh_spec("model=2")
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        make_mesh(data=3, fsdp=-1)


def test_decode_mesh_folds_fsdp_into_tensor_as_far_as_the_heads_split():
    shape = {"data": 8, "fsdp": 8, "tensor": 1}
    assert decode_mesh_shape(shape, 32, 16) == {"data": 8, "fsdp": 1, "tensor": 8}        # Gemma-2-27B
    assert decode_mesh_shape({"data": 1, "fsdp": 8, "tensor": 1}, 28, 4) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert decode_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 4, 2) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert decode_mesh_shape({"data": 2, "fsdp": 1, "tensor": 2}, 4, 2) == {"data": 2, "fsdp": 1, "tensor": 2}
    assert decode_mesh_shape(shape, 32, 16, "train") == shape
    with pytest.raises(ValueError, match="decode layout"):
        decode_mesh_shape(shape, 32, 16, "fsdp")
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    view = decode_mesh(mesh, 8, 8)
    assert dict(view.shape) == {"data": 1, "fsdp": 1, "tensor": 8}
    assert list(view.devices.flat) == list(mesh.devices.flat)  # same devices, same order: no copies between
    data_only = make_mesh(data=8, fsdp=1, tensor=1)
    assert decode_mesh(data_only, 8, 8) is data_only  # nothing to fold: the sampler keeps the mesh


def test_cache_shardings_cover_the_cache():
    cfg = from_hf_config(CONFIGS[0])
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    cache = jax.eval_shape(lambda: init_cache(cfg, 8, 1024))
    shardings = tree_shardings(CACHE_LOGICAL_NAMES, cache, mesh)
    assert shardings["k"].spec == P(None, ("data", "fsdp"), "tensor", None, None)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_full_size_shapes_without_allocating(path):
    cfg = from_hf_config(path)
    abstract, names = abstract_params(cfg)
    ours = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))
    with torch.device("meta"):
        ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
    assert ours == cfg.num_params() == sum(p.numel() for p in ref.parameters())
    mesh = make_mesh(fsdp=8)
    per_device = bytes_per_device(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16), abstract),
                                  tree_shardings(names, abstract, mesh))
    # bf16 params over fsdp=8: within 1% of an even split (norms and biases are small).
    assert per_device <= 2 * ours / 8 * 1.01
    print(f"{path.stem}: {ours:,} params; bf16 {per_device / 2**30:.2f} GiB per device on fsdp=8")
