"""import -> checkpoint -> export -> transformers: bitwise tensors and identical logits."""

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import FAMILIES, padded_batch, torch_logits

from grm_jax.cli import main
from grm_jax.hf import export_hf, load_hf
from grm_jax.train.model_checkpoint import load_model, save_model


def _assert_same_model(ref, out_dir):
    back = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    a, b = ref.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    tokens, mask = padded_batch(ref.config.vocab_size)
    np.testing.assert_array_equal(torch_logits(ref, tokens, mask), torch_logits(back, tokens, mask))


@pytest.mark.parametrize("family", FAMILIES)
def test_import_checkpoint_export_is_bitwise(family, hf_models, tmp_path):
    directory, ref = hf_models(family)
    cfg, params = load_hf(directory, progress=False)
    save_model(tmp_path / "ckpt", params, cfg)
    cfg2, params2 = load_model(tmp_path / "ckpt")
    assert cfg2 == cfg
    export_hf(params2, cfg2, tmp_path / "out", progress=False)
    _assert_same_model(ref, tmp_path / "out")


def test_sharded_export_writes_an_index(hf_models, tmp_path):
    directory, ref = hf_models("gemma2")
    cfg, params = load_hf(directory, progress=False)
    export_hf(params, cfg, tmp_path / "out", shard_size="100KB", progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _assert_same_model(ref, tmp_path / "out")
    # ... and our loader reads the sharded layout back.
    cfg2, params2 = load_hf(tmp_path / "out", progress=False)
    assert cfg2 == cfg


def test_bfloat16_export_loads_in_transformers(hf_models, tmp_path):
    directory, ref = hf_models("qwen2")
    cfg, params = load_hf(directory, progress=False)
    export_hf(params, cfg, tmp_path / "bf16", dtype="bfloat16", progress=False)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert back.dtype == torch.bfloat16
    w = ref.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(back.state_dict()["model.layers.0.mlp.up_proj.weight"], w.to(torch.bfloat16))


def test_cli_import_export_round_trip(hf_models, tmp_path, capsys):
    directory, ref = hf_models("qwen3")
    (directory / "tokenizer_config.json").write_text("{}\n")  # a tokenizer file travels along
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    assert main(["import-hf", str(directory), str(ckpt), "--mesh", "fsdp=2,tensor=2,data=2"]) == 0
    assert (ckpt / "tokenizer" / "tokenizer_config.json").is_file()
    assert main(["export-hf", str(ckpt), str(out)]) == 0
    assert (out / "tokenizer_config.json").is_file()
    _assert_same_model(ref, out)
    # Existing results are never overwritten unless asked.
    assert main(["export-hf", str(ckpt), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export-hf", str(ckpt), str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert main(["import-hf", str(directory), str(ckpt)]) == 2
