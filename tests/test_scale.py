"""Scale-out without the scale: `grm-jax plan` (exact where it claims to be, against real sharded
arrays on 8 fake devices), the shipped configs against the meshes they name, `score --config`,
and the SLURM task script joining two processes on loopback."""

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from grm_jax.cli import main
from grm_jax.config import load_config
from grm_jax.plan import full_mesh, plan_run, resolve_model_config, run_kind
from grm_jax.sharding import bytes_per_device, make_mesh, tree_shardings

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
TRAIN = sorted((ROOT / "configs" / "train").glob("*.yaml"))


def _plan_json(capsys, *args) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_configs_fit_the_mesh_the_planner_chose(path, capsys):
    text = path.read_text()
    accelerator, devices = re.search(r"^# plan: --accelerator (\S+) --devices (\d+)$", text, re.M).groups()
    mesh = re.search(r"^mesh: (\S+)$", text, re.M).group(1)
    got = _plan_json(capsys, "--config", str(path), "--accelerator", accelerator, "--devices", devices)
    assert got["mesh"] == full_mesh(mesh, int(devices))  # the config's own mesh
    assert got["fits"] and got["suggested_mesh"] == got["mesh"]
    assert got["peak"] > 0 and got["params"] > 5e9
    kind = run_kind(OmegaConf.to_container(OmegaConf.load(path)))
    if kind in ("grpo", "sft"):  # it also loads as the run config it is
        from grm_jax.train.grpo import GRPOConfig
        from grm_jax.train.sft import SFTConfig

        cfg = load_config(GRPOConfig if kind == "grpo" else SFTConfig, path, ["data=d", "out=o"])
        assert cfg.remat and cfg.mesh == mesh


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.name)
def test_tiny_train_configs_pass_plan(path, chat_model, capsys):
    got = _plan_json(capsys, "--config", str(path), "--devices", "8", f"model={chat_model}")
    assert got["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and got["peak"] > 0


def test_plan_says_when_nothing_fits(capsys):
    path = ROOT / "configs" / "paper" / "spct_gemma2_27b_grpo.yaml"
    assert main(["plan", "--config", str(path), "--mesh", "fsdp=-1", "--devices", "8",
                 "--accelerator", "tpu-v5e"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit tpu-v5e" in out and "no mesh over 8 tpu-v5e devices fits" in out
    assert main(["plan", "--config", str(path), "model=no/such-model"]) == 2
    assert "not a local HF directory" in capsys.readouterr().err


def test_plan_bytes_equal_real_sharded_arrays(chat_model):
    """Params, optimizer state and KV cache per device, as planned from shapes alone, equal what
    the run really holds on a 2 x 2 x 2 mesh of fake devices."""
    from grm_jax.loading import load_any
    from grm_jax.models.decoder import CACHE_LOGICAL_NAMES, init_cache
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.optim import make_optimizer
    from grm_jax.train.state import init_train_state

    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = make_mesh(**mesh_shape)
    raw = {"model": str(chat_model), "reward": "math", "prompts_per_step": 4, "group_size": 2,
           "max_prompt_length": 48, "max_new_tokens": 16}
    plan = plan_run("grpo", raw, mesh_shape)
    cfg, params, _ = load_any(chat_model, mesh=mesh, progress=False)
    assert resolve_model_config(str(chat_model))[0] == cfg
    state = init_train_state(params, make_optimizer(GRPOConfig(model="m", data="d", out="o").optim), 0)

    def measured(tree):
        leaves = jax.tree.leaves(tree)
        return bytes_per_device(leaves, [x.sharding for x in leaves])

    assert plan.items["params"] == measured(state.params)
    assert plan.items["optimizer state"] == measured(state.opt_state)
    assert plan.items["params"] < sum(x.nbytes for x in jax.tree.leaves(params))  # really sharded
    rows = (4 + 4 * 2)  # prompts (prefill) + their 2 samples, each a multiple of data x fsdp
    cache = init_cache(cfg, rows, 64)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), cache)
    shardings = tree_shardings(CACHE_LOGICAL_NAMES, abstract, mesh)
    real = {k: jax.device_put(v, shardings[k]) for k, v in cache.items()}
    assert plan.items["KV cache (8 rows x 64)"] == measured(real)


def test_remat_changes_only_activations(chat_model):
    raw = {"model": str(chat_model), "steps": 10, "batch_size": 64, "max_length": 512}
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    plain, remat = plan_run("sft", raw, mesh), plan_run("sft", {**raw, "remat": True}, mesh)
    def acts(plan):
        return next(v for k, v in plan.items.items() if k.startswith("activations"))

    assert acts(remat) < acts(plain)
    assert {k: v for k, v in remat.items.items() if not k.startswith("activations")} == \
        {k: v for k, v in plain.items.items() if not k.startswith("activations")}


def test_remat_training_gives_the_same_gradients(chat_model):
    from grm_jax.loading import load_any
    from grm_jax.models.logprobs import token_logprobs

    cfg, params, _ = load_any(chat_model, progress=False)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 24)))
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))

    def grads(remat):
        return jax.grad(lambda p: token_logprobs(p, cfg, tokens, positions, remat=remat).sum())(params)

    for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_score_from_a_config_file(tmp_path, chat_model, capsys):
    data = tmp_path / "rb.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "4", "subset": "math"}) + "\n")
    config = tmp_path / "score.yaml"
    config.write_text(f"model: {chat_model}\nreward: mean\nbatch_size: 4\nmesh: data=8,fsdp=1,tensor=1\n")
    assert main(["score", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "s.jsonl")]) == 0
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["reward"] == "mean" and summary["count"] == 1
    config.write_text("no_such_option: 1\n")
    assert main(["score", "--config", str(config)]) == 2
    assert "unknown score option(s) no_such_option" in capsys.readouterr().err
    config.write_text("reward: sum\n")
    assert main(["score", "--config", str(config)]) == 2
    assert "--model, --data, --out required" in capsys.readouterr().err


def test_slurm_task_script_joins_two_processes_for_an_export(tmp_path, chat_model):
    """launch/slurm_task.sh as SLURM would start it on two nodes (here: two local processes with
    4 fake devices each): `grm-jax --distributed export-hf`, written by process 0 only, equal to
    the source model."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "exported"
    procs = []
    for rank in range(2):
        env = {**os.environ, "SLURM_JOB_NODELIST": "localhost", "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank),
               "GRM_JAX_PORT": str(port), "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_PLATFORMS": "cpu", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        procs.append(subprocess.Popen(["bash", str(ROOT / "launch" / "slurm_task.sh"), "export-hf", str(chat_model),
                                       str(out), "--mesh", "fsdp=-1"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, "\n".join(x for x in log.splitlines() if "Gloo" not in x)[-3000:]
    assert "2 processes, 8 devices" in logs[0] and "exported" in logs[0]
    source, got = load_file(chat_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(source) == set(got)
    for k in source:
        np.testing.assert_array_equal(source[k], got[k])
    assert not list(tmp_path.glob(".*tmp-*"))
