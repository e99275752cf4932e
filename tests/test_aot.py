"""The run's programs compiled for a TPU topology by XLA's TPU compiler (libtpu, on this CPU host).

libtpu comes with the test extra (jax[tpu]); nothing here runs on a chip.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from grm_jax import aot, topology
from grm_jax.cli import main
from grm_jax.hf.tiny import tiny_hf_config
from grm_jax.models import from_hf_config

TOPOLOGY = "v5e:2x2"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A model config big enough that activations, not fixed overheads, dominate (no weights)."""
    d = tmp_path_factory.mktemp("aot") / "qwen2-small"
    tiny_hf_config("qwen2", hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096).save_pretrained(d)
    return d


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def _plan(capsys, *args):
    assert main(["plan", *args, "--topology", TOPOLOGY, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with JAX_PLATFORMS unset, as a user's shell would have it
    (unless `env_vars` sets it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")} | env_vars
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_a_host_without_a_tpu_starts_jax_without_libtpus_noise_and_still_compiles_for_tpu():
    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        pytest.skip("this host has a TPU chip: libtpu is meant to start")
    plain = _python("import jax; jax.devices()")
    if "TPU" not in plain.stderr:
        pytest.skip("libtpu starts quietly on this host: nothing to silence")
    run = _python("from grm_jax.topology import cpu_only_without_tpu, get_topology\n"
                  "changed = cpu_only_without_tpu()\n"
                  "import jax\n"
                  "print(changed, jax.default_backend(), len(get_topology('v5e:2x2').devices))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "cpu", "4"]
    assert "TPU" not in run.stderr, run.stderr
    # An explicit JAX_PLATFORMS is the user's: left alone.
    explicit = _python("from grm_jax.topology import cpu_only_without_tpu as f; print(f())", JAX_PLATFORMS="cpu")
    assert explicit.stdout.split() == ["False"], explicit.stderr


def test_libtpu_is_installed_with_the_test_extra():
    assert importlib.util.find_spec("libtpu") is not None, "pip install -e '.[test]' brings jax[tpu]"


def test_sft_and_grpo_compile_with_compiler_figures(tmp_path, small_model, capsys):
    sft = _yaml(tmp_path / "sft.yaml", f"model: {small_model}\nsteps: 10\nbatch_size: 16\nmax_length: 1024\n"
                                       "optim:\n  grad_accum: 2\n")
    # reward: math keeps this test short; the endogenous reward's program compiles in the splash test.
    grpo = _yaml(tmp_path / "grpo.yaml", f"model: {small_model}\nreward: math\nprompts_per_step: 8\n"
                                         "group_size: 4\nmax_new_tokens: 128\nmax_prompt_length: 512\n"
                                         "optim:\n  grad_accum: 2\n")
    # xla attention: every FLOP is visible to the compiler's cost analysis (a Pallas kernel's are not).
    programs = (_plan(capsys, "--config", sft, "--attention", "xla")["programs"]
                + _plan(capsys, "--config", grpo, "--attention", "xla")["programs"])
    assert [p["name"] for p in programs] == [
        "sft train step", "grpo sample (prefill + decode loop)", "grpo reference log-probs", "grpo update step"]
    for p in programs:
        assert p["attention"] == "xla" and not p["cost_excludes_attention_kernel"]
        assert p["fits"] and p["total_bytes"] >= p["program_bytes"] > 0 and p["temp_bytes"] > 0
        assert p["total_bytes"] == (p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"]
                                    + p["resident_bytes"])
        assert p["seconds_lower_bound"] > 0 and p["model_flops"] > 0
        # FLOPs with every loop counted (layers, microbatches, decode steps) come near the model's.
        assert 0.7 < p["flop_ratio"] < 1.5, p
    by_name = {p["name"]: p for p in programs}
    # The stated tolerance of the shape-only plan: within 15% of the compiler for the train steps
    # (what sets a run's peak), an upper bound for the forward-only programs.
    for name in ("sft train step", "grpo update step"):
        assert 0.85 < by_name[name]["estimated_bytes"] / by_name[name]["total_bytes"] < 1.15, by_name[name]
    for name in ("grpo sample (prefill + decode loop)", "grpo reference log-probs"):
        assert by_name[name]["estimated_bytes"] >= by_name[name]["total_bytes"], by_name[name]


def test_grpo_with_shared_prompts_compiles_with_fewer_flops(small_model):
    """`shared_prompt`: the reference forward and the update run each prompt once (its responses
    over a copy of its KV cache); they compile for the TPU, the compiler's loop-counted FLOPs near
    the model's, which are under half those of prompt + response rows here."""
    cfg = from_hf_config(small_model / "config.json").replace(attention_impl="xla")
    mesh = topology.topology_mesh(topology.get_topology(TOPOLOGY), {"data": 4, "fsdp": 1, "tensor": 1})
    raw = {"model": str(small_model), "reward": "math", "prompts_per_step": 8, "group_size": 4,
           "max_new_tokens": 128, "max_prompt_length": 512, "optim": {"grad_accum": 2}}
    wanted = ("grpo reference log-probs", "grpo update step")
    rows, shared = ({p.name: p for p in aot.build_programs("grpo", dict(raw, shared_prompt=s), cfg, mesh)
                     if p.name in wanted} for s in (False, True))
    for compiled in aot.compile_programs([shared[n] for n in wanted], cfg, progress=False):
        assert compiled.error is None and 0.7 < compiled.flops / compiled.model_flops < 1.5, compiled
        assert compiled.model_flops < 0.5 * rows[compiled.name].model_flops, compiled.name


@pytest.mark.parametrize("mesh_shape", [{"data": 4, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 1}])
def test_decode_step_moves_the_weights_and_live_cache_once(tmp_path, mesh_shape):
    """The compiled sampler's decode loops (xla attention over each layer's own cache buffer,
    updated in place; 4 phases, each reading only the cache slots its steps can have filled)
    move within 1.2x of an ideal step's HBM bytes: the weights plus the mean live KV cache, read
    once. On an FSDP mesh the sampler decodes on the tensor-parallel view of its devices (the
    weights resharded once per call, not gathered every step). Bytes from the compiled HLO's
    HBM-resident operands, one iteration of each loop (XLA's own 'bytes accessed' also counts the
    on-chip VMEM copies, several times over)."""
    # Weights well over the chip's on-chip VMEM (128 MiB), so a step must read them from HBM; two
    # layers, since compile time grows with the layers (unrolled, in 4 decode loops).
    tiny_hf_config("qwen2", hidden_size=4096, intermediate_size=16384, num_hidden_layers=2, num_attention_heads=32,
                   num_key_value_heads=32, head_dim=128, vocab_size=4096,
                   max_position_embeddings=8192).save_pretrained(tmp_path / "m")
    cfg = from_hf_config(tmp_path / "m" / "config.json").replace(dtype="bfloat16", param_dtype="bfloat16")
    mesh = topology.topology_mesh(topology.get_topology(TOPOLOGY), mesh_shape)
    raw = {"model": "m", "reward": "math", "prompts_per_step": 8, "group_size": 4, "max_new_tokens": 1024,
           "max_prompt_length": 1024}
    sampler = aot.build_programs("grpo", raw, cfg, mesh)[0]
    weights, kv, live, steps = sampler.decode
    assert steps == (256, 256, 256, 255) and live == 0.75
    [compiled] = aot.compile_programs([sampler], cfg, progress=False, cost=False)
    assert compiled.decode_hbm is not None, "the program's loops are not one per decode phase"
    ideal = weights + kv * live
    ratio = compiled.decode_hbm / ideal
    print(f"decode step HBM / (weights + live KV) on {mesh_shape}: {ratio:.3f}")  # shown with -s
    assert ratio < 1.2, (compiled.decode_hbm, weights, kv, live)
    # No step can read less than the ideal minus what may stay on chip between steps (a v5e
    # core's 128 MiB of VMEM; XLA does keep some loop-invariant weights there): a counting bug
    # that dropped a whole cache or weight buffer would land below this.
    assert compiled.decode_hbm >= ideal - 128 * 2**20, (compiled.decode_hbm, weights, kv, live)


def test_splash_needs_less_temp_than_xla_at_2048(tmp_path):
    """A tiny model's SFT step, GRPO update and sampler (splash prefill, then decode) and a judge's
    sampler compile for the TPU with the real Mosaic splash kernel under shard_map; at 2,048 tokens
    the train steps need less temp memory with the kernel than with materialized attention. (The
    samplers are compiled, not compared: there XLA fuses the prefill's attention of this tiny
    model without materializing the scores, and the kernel's buffers are larger.)"""
    tiny_hf_config("gemma2", num_hidden_layers=2).save_pretrained(tmp_path / "gemma2")
    base = from_hf_config(tmp_path / "gemma2" / "config.json").replace(max_position=4096)
    topo = topology.get_topology(TOPOLOGY)
    mesh = topology.topology_mesh(topo, {"data": 1, "fsdp": 2, "tensor": 2})
    model = str(tmp_path / "gemma2")
    runs = {"sft": {"model": model, "steps": 1, "batch_size": 4, "max_length": 2048},
            "grpo": {"model": model, "reward": "endogenous", "prompts_per_step": 2, "group_size": 2,
                     "max_prompt_length": 1920, "max_new_tokens": 128},
            "judge": {"model": model, "kind": "judge", "k": 2, "batch_size": 4, "max_prompt_length": 2048,
                      "max_new_tokens": 16}}
    temp = {}
    for impl in ("splash", "xla"):
        cfg = base.replace(attention_impl=impl)
        for kind, raw in runs.items():
            for program in aot.build_programs(kind, raw, cfg, mesh):
                if "reference" in program.name:
                    continue
                compiled = aot._compile(program.fn, program.args, program.static)
                if impl == "splash":
                    assert "tpu_custom_call" in compiled.as_text(), program.name  # the Mosaic kernel
                temp[impl, program.name] = compiled.memory_analysis().temp_size_in_bytes
    names = sorted({name for _, name in temp})
    assert names == ["grpo endogenous reward", "grpo sample (prefill + decode loop)", "grpo update step",
                     "judge sample (prefill + decode loop)", "sft train step"]
    for name in ("sft train step", "grpo update step"):
        assert temp["splash", name] < temp["xla", name], (name, temp["splash", name], temp["xla", name])


def test_loop_counted_flops_equal_a_fully_unrolled_compile(tmp_path):
    """Companions on 1 and 2 layers (+1 of the other kind) extrapolate to the whole model: equal to
    compiling it with every layer unrolled, also for Gemma 2's alternating sliding/full layers."""
    topo = topology.get_topology(TOPOLOGY)
    mesh = topology.topology_mesh(topo, {"data": 1, "fsdp": 4, "tensor": 1})
    for family, kind in (("qwen2", "score"), ("gemma2", "sft"), ("gemma2", "score")):
        tiny_hf_config(family).save_pretrained(tmp_path / family)
        cfg = from_hf_config(tmp_path / family / "config.json")
        raw = {"model": str(tmp_path / family), "batch_size": 8, "max_length": 256}
        for program in aot.build_programs(kind, raw, cfg, mesh):
            flops, _ = aot.program_cost(program, cfg)
            direct = sum(aot._cost(fn if args is None else fn.lower(*args, *(rest[1] if len(rest) > 1 else ())).compile())[0]
                         * rest[0] for fn, args, *rest in program.cost_parts(cfg))
            assert abs(flops / direct - 1) < 0.01, (family, program.name, flops, direct)


def test_without_libtpu_one_clear_line(tmp_path, small_model, capsys, monkeypatch):
    config = _yaml(tmp_path / "score.yaml", f"model: {small_model}\nbatch_size: 8\nmax_length: 512\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    assert main(["plan", "--config", config, "--topology", TOPOLOGY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs libtpu" in err and "pip install" in err
    monkeypatch.undo()
    assert main(["plan", "--config", config, "--topology", "v9z:1x1"]) == 2
    assert "topology 'v9z:1x1'" in capsys.readouterr().err
