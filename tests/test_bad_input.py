"""Bad checkpoints give clear errors naming the file and the tensor; bad flag and config values are
usage errors naming the field; outputs of the wrong kind are refused and killed writers' leftovers
removed."""

import json
import os
import shutil
import struct
from pathlib import Path

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


# ---- bad values: usage errors naming the field, before any model loads (issue 16, item 8) -----

@pytest.mark.parametrize("argv,needle", [
    (["generate", "--model", "M", "--prompts", "P", "--out", "O", "--batch-size", "-1"], "--batch-size"),
    (["generate", "--model", "M", "--prompts", "P", "--out", "O", "--batch-size", "0"], "--batch-size"),
    (["generate", "--model", "M", "--prompts", "P", "--out", "O", "--temperature", "inf"], "--temperature"),
    (["rft", "--model", "M", "--data", "I", "--out", "O", "--n", "0"], "--n"),
    (["plan", "--config", "C", "--devices", "0"], "--devices"),
    (["plan", "--config", "C", "--devices", "-3"], "--devices"),
])
def test_bad_flag_values_are_usage_errors(argv, needle, capsys):
    from grm_jax.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("kind,override,needle", [
    ("sft", "save_every=0", "save_every"), ("sft", "keep=0", "keep"), ("sft", "batch_size=-4", "batch_size"),
    ("sft", "optim.grad_accum=3", "grad_accum"), ("grpo", "inner_iters=0", "inner_iters"),
    ("grpo", "beta=-1", "beta"), ("grpo", "eps=-0.5", "eps"), ("grpo", "keep=0", "keep"),
    ("grpo", "temperature=inf", "temperature"), ("grpo", "grm_format=bogus", "grm_format"),
    ("grpo", "decode_layout=fsdp", "decode_layout"), ("grpo", "optim.b2=1", "b2"),
    ("sft", "optim.min_lr_ratio=2", "min_lr_ratio"), ("sft", "optim.clip_norm=0", "clip_norm"),
])
def test_bad_run_config_values_name_the_field(kind, override, needle):
    from grm_jax.config import load_config
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.sft import SFTConfig

    cls = SFTConfig if kind == "sft" else GRPOConfig
    with pytest.raises(ValueError, match=needle):
        load_config(cls, None, ["model=m", "data=d", "out=o", override])


@pytest.mark.parametrize("where,kw,needle", [
    ("grm_jax.eval.score:ScoreOptions", {"alpha": 0.0}, "alpha must be > 0"),
    ("grm_jax.eval.judge:JudgeOptions", {"scaling_draws": 0}, "scaling_draws must be >= 1"),
    ("grm_jax.eval.judge:JudgeOptions", {"vote": "median"}, "vote must be one of sum, mean, majority"),
    ("grm_jax.demo:DemoConfig", {"teacher_error": 2.0}, r"teacher_error must be in \[0, 1\]"),
    ("grm_jax.demo:DemoConfig", {"vocab_size": 100}, "vocab_size must be >= 261"),
    ("grm_jax.demo:DemoConfig", {"k": 6}, "power of two"),
    ("grm_jax.demo:DemoConfig", {"meta_batches": "sorted"}, "meta_batches must be one of random, by_length"),
])
def test_bad_option_values_name_the_field(where, kw, needle):
    import importlib

    module, name = where.split(":")
    with pytest.raises(ValueError, match=needle):
        getattr(importlib.import_module(module), name)(**kw)


def test_every_number_of_every_run_config_has_a_bound():
    """The one table of bounds (grm_jax.config.BOUNDS) covers every int/float field of every run
    config, and names no field a config does not have."""
    import dataclasses
    import typing

    from grm_jax.config import BOUNDS
    from grm_jax.demo import DemoConfig
    from grm_jax.eval.judge import JudgeOptions
    from grm_jax.eval.score import ScoreOptions
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.optim import OptimConfig
    from grm_jax.train.sft import SFTConfig

    classes = (OptimConfig, SFTConfig, GRPOConfig, ScoreOptions, JudgeOptions, DemoConfig)
    assert sorted(BOUNDS) == sorted(c.__name__ for c in classes)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        numbers = {name for name in fields if set(typing.get_args(hints[name]) or (hints[name],)) - {type(None)}
                   <= {int, float}}
        assert numbers <= set(BOUNDS[cls.__name__]) <= fields, (cls.__name__, numbers - set(BOUNDS[cls.__name__]))


def test_malformed_yaml_and_mesh_specs(tmp_path):
    from grm_jax.config import load_config
    from grm_jax.sharding import parse_mesh_spec
    from grm_jax.train.sft import SFTConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\nsteps: 3\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(SFTConfig, bad)
    with pytest.raises(ValueError, match="given twice"):
        parse_mesh_spec("fsdp=-1,fsdp=1")
    with pytest.raises(ValueError, match=">= 1 or -1"):
        parse_mesh_spec("fsdp=-3")


@pytest.mark.parametrize("config,override,needle", [
    ("endogenous_rmbench_qwen2.5_7b_instruct.yaml", "batch_size=-4", "batch_size must be >= 1, got -4"),
    ("endogenous_rl_qwen2.5_math_7b.yaml", "beta=-1", "beta must be >= 0"),
    ("spct_gemma2_27b_rft_sft.yaml", "keep=0", "keep must be >= 1"),
])
def test_plan_checks_the_config_as_its_command_would(config, override, needle, capsys):
    from grm_jax.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["plan", "--config", str(root / "configs" / "paper" / config), override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ---- outputs of the wrong kind and leftovers of killed writers (issue 16, item 9) -------------

def test_overwrite_refuses_the_wrong_kind_of_target(tmp_path):
    from grm_jax.atomic import atomic_directory, check_writable

    a_dir, a_file = tmp_path / "scores", tmp_path / "export"
    a_dir.mkdir()
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a directory"):
        check_writable(a_dir, overwrite=True)
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic_directory(a_file, overwrite=True) as tmp:
            (tmp / "x").write_text("new")
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "scores"]  # nothing left behind


def test_leftovers_of_a_killed_writer_are_removed_on_the_next_run(tmp_path):
    import socket
    import subprocess
    import sys

    from grm_jax.atomic import atomic_directory, atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = socket.gethostname()
    out = tmp_path / "export"
    stale = [tmp_path / f".export.tmp-0badc0de-{dead}@{host}", tmp_path / f".export.old-0badc0de-{dead}@{host}",
             tmp_path / f".out.jsonl.tmp-0badc0de-{dead}@{host}"]
    live = tmp_path / f".export.tmp-0badc0de-{os.getpid()}@{host}"  # a writer still running: kept
    other = tmp_path / f".export.tmp-0badc0de-{dead}@another-host"   # another host's: not ours to judge
    for p in [*stale, live, other]:
        p.mkdir() if "jsonl" not in p.name else p.write_text("partial")
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("{}")
    atomic_write_text(tmp_path / "out.jsonl", "{}\n")
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists() and (out / "config.json").exists()
