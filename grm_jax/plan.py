"""`grm-jax plan`: per-device memory of a run on a mesh, without allocating anything.

Params, optimizer state, gradients and the KV cache are exact: their shapes come from
`jax.eval_shape` (model init, `optax` init, `init_cache`) and their per-device shards from the
same logical-axis rules the run uses, applied to an `AbstractMesh` (no devices needed).
Activations are an estimate from the model's sizes (formulas in `layer_bytes`): what autodiff
keeps per layer, attention scores materialized in float32 (the XLA attention path; a fused
flash kernel needs less), the chunked LM head, and one layer's working set when layers are
rematerialized (`remat: true`).

Run kinds, by the config's keys: GRPO (`reward`, `group_size`, ...), SFT (`steps` and
`batch_size`), GRM judging (`kind: judge` or `k`: the sampling of `grm-jax judge`, with
`batch_size`, `max_prompt_length`, `max_new_tokens`) and endogenous-reward scoring
(`grm-jax score --config`). A GRPO step has three
phases whose peaks are reported separately: sampling (policy + reference + optimizer state + KV
cache + prefill), reference/reward forward (the whole batch at once) and the update (gradients +
activations of one microbatch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from grm_jax.flops import CHIPS
from grm_jax.models import ModelConfig, abstract_params, dtype_of, from_hf_config
from grm_jax.models.decoder import CACHE_LOGICAL_NAMES, init_cache
from grm_jax.sharding import (MESH_AXES, RULES, decode_mesh_shape, follow_params, logical_to_spec,
                              parse_mesh_spec)

# HBM per chip in bytes (grm_jax.flops.CHIPS says where each figure comes from).
ACCELERATORS = {name: chip.hbm_bytes for name, chip in CHIPS.items()}
USABLE = 0.9  # of HBM, leaving room for XLA's temporaries and fragmentation

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"
# Hub ids of the published models whose HF config.json is shipped in configs/models/.
HUB_PRESETS = {
    "google/gemma-2-27b": "gemma-2-27b", "google/gemma-2-27b-it": "gemma-2-27b",
    "google/gemma-3-27b-pt": "gemma-3-27b", "google/gemma-3-27b-it": "gemma-3-27b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b", "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b", "Qwen/Qwen2.5-Math-7B": "qwen2.5-math-7b",
    "Qwen/Qwen3-8B": "qwen3-8b",
}


def resolve_model_config(model: str) -> tuple[ModelConfig, str]:
    """(config, where it came from) for a local HF dir, a grm-jax checkpoint, a preset name in
    configs/models or a hub id with a shipped preset."""
    path = Path(model)
    if (path / "model_config.json").is_file():
        return ModelConfig.load(path / "model_config.json"), str(path)
    if (path / "config.json").is_file():
        path = path / "config.json"
    elif not (path.suffix == ".json" and path.is_file()):
        path = PRESETS_DIR / f"{HUB_PRESETS.get(model, model)}.json"
    if path.is_file():  # dtypes as loading gives them: the checkpoint's own, else float32
        stored = json.loads(path.read_text())
        stored = stored.get("dtype") or stored.get("torch_dtype")
        dtype = stored if stored in ("float32", "bfloat16", "float16") else "float32"
        return from_hf_config(path).replace(param_dtype=dtype, dtype=dtype), str(path)
    known = sorted({p.stem for p in PRESETS_DIR.glob("*.json")} | set(HUB_PRESETS))
    raise FileNotFoundError(f"model {model!r}: not a local HF directory, grm-jax checkpoint or known preset "
                            f"(presets: {', '.join(known)})")


def shard_bytes(shape, dtype, names, mesh_shape: dict) -> int:
    """Bytes of one device's shard of an array with these logical axis names."""
    mesh = AbstractMesh(tuple(mesh_shape[a] for a in MESH_AXES), MESH_AXES)
    spec = logical_to_spec(names, shape, mesh, RULES)
    n = 1
    for dim, axes in zip(shape, spec):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        n *= dim // math.prod(mesh_shape[a] for a in axes)
    return n * np.dtype(dtype).itemsize


def _tree_bytes(abstract, names, mesh_shape) -> int:
    return sum(shard_bytes(a.shape, a.dtype, n, mesh_shape)
               for a, n in zip(jax.tree.leaves(abstract), jax.tree.leaves(names, is_leaf=_is_names)))


def _optimizer_bytes(opt_state, params, names, mesh_shape) -> int:
    """Optimizer leaves that follow a param (Adam's moments) are sharded like it, as
    `init_train_state` places them; the rest (step counts) are replicated."""
    per_leaf = follow_params(opt_state, params, names, (), is_leaf=_is_names)
    return sum(shard_bytes(a.shape, a.dtype, n or (None,) * len(a.shape), mesh_shape)
               for a, n in zip(jax.tree.leaves(opt_state), jax.tree.leaves(per_leaf, is_leaf=_is_names)))


def _is_names(x) -> bool:
    return type(x) is tuple and all(isinstance(n, (str, type(None))) for n in x)


def _split(n: int, ways: int) -> int:
    return n // ways if n % ways == 0 else n


def layer_bytes(cfg: ModelConfig, rows: int, length: int, keys: int, tensor: int) -> int:
    """Activation bytes of one layer on one device for `rows` rows of `length` queries over
    `keys` key positions: what autodiff keeps of a layer for the backward pass, and (as an upper
    bound) what a forward holds live in one layer. Per token: the norms' inputs and outputs (4 D),
    q, k, v and the attention output ((2 N + 2 K) H), the MLP's gate, up and product (3 F), in the
    compute dtype; plus the attention logits and probabilities in float32 (2 × N × keys per
    token). Heads and F are split over `tensor` where it divides them."""
    b = np.dtype(dtype_of(cfg.dtype)).itemsize
    N, K, F = _split(cfg.num_heads, tensor), _split(cfg.num_kv_heads, tensor), _split(cfg.mlp_dim, tensor)
    per_token = b * (4 * cfg.embed_dim + (2 * N + 2 * K) * cfg.head_dim + 3 * F)
    scores = 4 * 2 * N * keys
    return rows * length * (per_token + scores)


def lm_head_bytes(cfg: ModelConfig, rows: int, chunk: int, tensor: int) -> int:
    """The chunked LM head: float32 logits of one chunk, their softmax and its gradient."""
    return 3 * 4 * rows * chunk * _split(cfg.vocab_size, tensor)


@dataclasses.dataclass
class Plan:
    kind: str
    model: str
    params: int
    mesh: dict
    items: dict          # component -> bytes per device
    phases: dict         # phase -> list of components in it

    def phase_bytes(self) -> dict:
        return {p: sum(self.items[c] for c in comps) for p, comps in self.phases.items()}

    def peak(self) -> int:
        return max(self.phase_bytes().values())

    def fits(self, accelerator: str) -> bool:
        return self.peak() <= USABLE * ACCELERATORS[accelerator]


def check_run_config(kind: str, raw: dict) -> None:
    """ValueError naming the field when the run config's values break their bounds
    (`grm_jax.config.BOUNDS`): it is built as the typed config its command would build."""
    from grm_jax.config import from_dict

    if kind in ("sft", "grpo"):
        from grm_jax.train.grpo import GRPOConfig
        from grm_jax.train.sft import SFTConfig

        from_dict(SFTConfig if kind == "sft" else GRPOConfig, raw)
    elif kind == "score":
        from grm_jax.eval.score import ScoreOptions

        from_dict(ScoreOptions, raw)
    elif kind == "judge":
        from grm_jax.eval.judge import JudgeOptions

        from_dict(JudgeOptions, raw)
        if int(raw.get("max_prompt_length", 1)) < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {raw['max_prompt_length']}")


def plan_run(kind: str, raw: dict, mesh_shape: dict, model_cfg: ModelConfig | None = None) -> Plan:
    """The memory plan of a run config (`raw`, the YAML as a dict) on a mesh {data, fsdp, tensor}."""
    from grm_jax.train.optim import OptimConfig, make_optimizer

    check_run_config(kind, raw)
    cfg = model_cfg or resolve_model_config(str(raw["model"]))[0]
    dp = mesh_shape["data"] * mesh_shape["fsdp"]
    tensor = mesh_shape["tensor"]
    abstract, names = abstract_params(cfg)
    p_bytes = _tree_bytes(abstract, names, mesh_shape)
    items, phases = {"params": p_bytes}, {}
    chunk = int(raw.get("chunk", 512))
    remat = bool(raw.get("remat", False))

    def per_device(rows):
        return -(-rows // dp)

    def decode_items(prompts, samples, prompt, length, layout):
        """The sampler's own items (its params resharded for decoding, KV cache, prefill) on the
        mesh it decodes on (`grm_jax.sharding.decode_mesh`); their names."""
        shape = decode_mesh_shape(mesh_shape, cfg.num_heads, cfg.num_kv_heads, layout)
        d_rows = -(-prompts // (shape["data"] * shape["fsdp"]))
        rows = d_rows * shape["data"] * shape["fsdp"]
        # With samples > 1 the prompts' cache and its copy per sample are both alive at once.
        cache_rows = rows * samples + (rows if samples > 1 else 0)
        shapes = jax.eval_shape(lambda: init_cache(cfg, cache_rows, length))
        out = []
        if shape != mesh_shape:
            spec = ",".join(f"{k}={v}" for k, v in shape.items())
            out.append(f"params for decoding ({spec})")
            items[out[-1]] = _tree_bytes(abstract, names, shape)
        out += [f"KV cache ({rows * samples} rows x {length})", "prefill activations"]
        items[out[-2]] = _tree_bytes(shapes, CACHE_LOGICAL_NAMES, shape)
        items[out[-1]] = layer_bytes(cfg, d_rows, prompt, length, shape["tensor"])
        return out

    def training(rows_global, length, accum):
        optim = OptimConfig(**{k: v for k, v in dict(raw.get("optim") or {}).items()})
        opt = jax.eval_shape(make_optimizer(optim).init, abstract)
        items["optimizer state"] = _optimizer_bytes(opt, abstract, names, mesh_shape)
        f32 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), abstract)
        items["gradients (float32 sum + one microbatch)"] = _tree_bytes(f32, names, mesh_shape) + p_bytes
        rows = per_device(rows_global // accum)
        one = layer_bytes(cfg, rows, length, length, tensor)
        if remat:  # the layer inputs, then one layer recomputed with its gradient
            acts = cfg.num_layers * rows * length * cfg.embed_dim * np.dtype(dtype_of(cfg.dtype)).itemsize + 2 * one
        else:
            acts = cfg.num_layers * one
        name = f"activations ({rows} rows x {length} per device{', remat' if remat else ''})"
        items[name] = acts + lm_head_bytes(cfg, rows, min(chunk, length), tensor)
        return ["params", "optimizer state", "gradients (float32 sum + one microbatch)", name]

    if kind == "grpo":
        G, P = int(raw.get("group_size", 4)), int(raw.get("prompts_per_step", 8))
        prompt, new = int(raw.get("max_prompt_length", 1024)), int(raw.get("max_new_tokens", 256))
        accum = int((raw.get("optim") or {}).get("grad_accum", 1))
        R, T = P * G, prompt + new
        items["reference params"] = p_bytes
        if raw.get("reward") == "endogenous" and raw.get("reward_model"):
            items["reward model params"] = p_bytes
        update = training(R, T, accum) + ["reference params"]
        base = ["params", "reference params", "optimizer state"]
        sampling = decode_items(P, G, prompt, T, raw.get("decode_layout", "tensor"))
        rows = per_device(R // accum)  # the reference and reward forwards run per microbatch
        forward = f"reference forward ({rows} rows x {T} per device)"
        items[forward] = layer_bytes(cfg, rows, T, T, tensor) + lm_head_bytes(
            cfg, rows, min(chunk, T), tensor) // 3
        extra = ["reward model params"] if "reward model params" in items else []
        phases = {
            "sampling": base + extra + sampling,
            "reference/reward forward": base + extra + [forward],
            "update": update + extra}
    elif kind == "judge":
        prompt, new = int(raw.get("max_prompt_length", 2048)), int(raw.get("max_new_tokens", 512))
        rows = per_device(int(raw.get("batch_size", 32))) * dp
        phases = {"sampling": ["params"] + decode_items(rows, 1, prompt, prompt + new,
                                                        raw.get("decode_layout", "tensor"))}
    elif kind == "sft":
        phases = {"update": training(int(raw.get("batch_size", 8)), int(raw.get("max_length", 1024)),
                                     int((raw.get("optim") or {}).get("grad_accum", 1)))}
    elif kind == "score":
        rows, T = per_device(int(raw.get("batch_size", 8))), int(raw.get("max_length", 2048))
        items[f"forward ({rows} rows x {T} per device)"] = (
            layer_bytes(cfg, rows, T, T, tensor) + lm_head_bytes(cfg, rows, min(chunk, T), tensor) // 3)
        phases = {"forward": ["params", f"forward ({rows} rows x {T} per device)"]}
    else:
        raise ValueError(f"unknown run kind {kind!r}")
    return Plan(kind, str(raw["model"]), cfg.num_params(), dict(mesh_shape), items, phases)


def run_kind(raw: dict) -> str:
    """grpo, sft, judge or score, from the keys of a run config (`kind: judge` or a `k` key
    marks the sampling of `grm-jax judge`)."""
    from grm_jax.train.grpo import REWARD_KINDS

    if raw.get("kind") == "judge" or "k" in raw:
        return "judge"
    if {"group_size", "prompts_per_step", "max_new_tokens"} & set(raw) or raw.get("reward") in REWARD_KINDS:
        return "grpo"
    if "steps" in raw and "batch_size" in raw:
        return "sft"
    return "score"


def full_mesh(spec: str | dict, devices: int | None) -> dict:
    """{data, fsdp, tensor} from a '--mesh' string; -1 takes what `devices` leaves."""
    sizes = {"data": 1, "fsdp": -1, "tensor": 1, **(parse_mesh_spec(spec) if isinstance(spec, str) else spec)}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {spec!r}: at most one axis may be -1")
    if free:
        if devices is None:
            raise ValueError(f"mesh {spec!r} has an axis of -1: give --devices")
        if devices % fixed:
            raise ValueError(f"mesh {spec!r} does not fit {devices} devices")
        sizes[free[0]] = devices // fixed
    if devices is not None and math.prod(sizes.values()) != devices:
        raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices, not {devices}")
    return sizes


def candidate_meshes(devices: int):
    """Every (data, fsdp, tensor) over `devices` with power-of-two tensor <= 8 and data a power of two."""
    for tensor in (1, 2, 4, 8):
        if devices % tensor:
            continue
        rest = devices // tensor
        data = 1
        while data <= rest:
            if rest % data == 0:
                yield {"data": data, "fsdp": rest // data, "tensor": tensor}
            data *= 2


def suggest_mesh(kind: str, raw: dict, devices: int, accelerator: str, model_cfg=None):
    """The fitting mesh with the least tensor parallelism, then the most data parallelism; or None."""
    best = None
    for mesh in candidate_meshes(devices):
        plan = plan_run(kind, raw, mesh, model_cfg)
        if plan.fits(accelerator):
            key = (mesh["tensor"], -mesh["data"])
            if best is None or key < best[0]:
                best = (key, mesh, plan)
    return None if best is None else best[1:]


def format_plan(plan: Plan, accelerator: str | None) -> str:
    gib = 2**30
    mesh = ",".join(f"{a}={plan.mesh[a]}" for a in MESH_AXES)
    lines = [f"{plan.kind} run of {plan.model} ({plan.params / 1e9:.2f}B params) on mesh {mesh} "
             f"({math.prod(plan.mesh.values())} devices); per-device memory:"]
    for name, b in plan.items.items():
        lines.append(f"  {name:<58} {b / gib:9.2f} GiB")
    for phase, total in plan.phase_bytes().items():
        lines.append(f"  = {phase + ' phase':<56} {total / gib:9.2f} GiB")
    if accelerator:
        cap = ACCELERATORS[accelerator]
        verdict = "fits" if plan.fits(accelerator) else "does NOT fit"
        lines.append(f"peak {plan.peak() / gib:.2f} GiB: {verdict} {accelerator} "
                     f"({cap / gib:.1f} GiB HBM, {USABLE:.0%} usable = {USABLE * cap / gib:.1f} GiB)")
    return "\n".join(lines)


def plan_json(plan: Plan, accelerator: str | None) -> dict:
    out = {"kind": plan.kind, "model": plan.model, "params": plan.params, "mesh": plan.mesh,
           "bytes_per_device": plan.items, "phases": plan.phase_bytes(), "peak": plan.peak()}
    if accelerator:
        out.update(accelerator=accelerator, fits=plan.fits(accelerator))
    return json.loads(json.dumps(out))
