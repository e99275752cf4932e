"""`grm-jax plan --topology`: the run's own programs, compiled by XLA's TPU compiler for an
abstract TPU topology on any CPU host (libtpu installed, JAX_PLATFORMS=cpu).

The programs are the jitted functions the run executes (`sft_step_program`, the sampler,
`reference_program`, `endogenous_reward_program`, `update_program`, `jitted_rewards`), lowered
with the run's mesh, shardings, dtypes and shapes. Per program the compiler reports per-device
argument / output / temp bytes (`memory_analysis`) and FLOPs and bytes accessed
(`cost_analysis`).

Cost analysis counts a while loop's body once, and the runs have three kinds of loop: the
scanned layer stack, gradient-accumulation microbatches and the decode loop. FLOPs and bytes are
therefore taken from small companion programs with the layers unrolled: one microbatch on 1
and 2 layers of the first layer kind (and 1 layer of the other kind, for models that mix full
and sliding layers), extrapolated linearly to the model's layer counts, times the microbatch
count; the sampler is its prefill plus (max_new_tokens − 1) decode steps, each compiled on its
own. (The optimizer update is counted once per microbatch: under 0.1% of a step at these sizes.)

A sampler's decode figure is read from the compiled sampler itself: the HBM bytes of one
iteration of each of its decode loops (`hlo_traffic.loop_step_bytes`), weighted by the steps each
decode phase runs, against the weights plus the mean live KV cache (`decode_step_hbm`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grm_jax import flops as F
from grm_jax.config import from_dict
from grm_jax.models import ModelConfig, abstract_params
from grm_jax.models.config import FULL, SLIDING
from grm_jax.sharding import _is_names, batch_sharding, follow_params, tree_shardings
from grm_jax.topology import quiet_stderr

# ---- abstract inputs ------------------------------------------------------------------------

def _sds(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_sharded_params(cfg: ModelConfig, mesh: Mesh):
    abstract, names = abstract_params(cfg)
    shardings = tree_shardings(names, abstract, mesh)
    return jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), abstract, shardings), names


def _unstacked(params, names, mesh: Mesh):
    """Abstract per-layer params (what the unrolled sampler reads) with their own shardings."""
    from grm_jax.models.decoder import unstack_layers

    abstract = jax.eval_shape(unstack_layers, params)
    layer_names = jax.tree.map(lambda n: n[1:], names["layers"], is_leaf=_is_names)
    out_names = {k: v for k, v in names.items() if k != "layers"}
    for key in abstract:
        if key.startswith("layer_"):
            out_names[key] = layer_names
    shardings = tree_shardings(out_names, abstract, mesh)
    return jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), abstract, shardings)


def abstract_train_state(params, optimizer, mesh: Mesh):
    from grm_jax.train.state import TrainState

    replicated = NamedSharding(mesh, PartitionSpec())
    opt = jax.eval_shape(optimizer.init, params)
    shardings = follow_params(opt, params, jax.tree.map(lambda x: x.sharding, params), replicated)
    opt = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), opt, shardings)
    return TrainState(params, opt, _sds((), jnp.int32, replicated), _sds((2,), jnp.uint32, replicated))


def _batch(mesh: Mesh, rows: int, length: int, **dtypes) -> dict:
    return {k: _sds((rows, length), d, batch_sharding(mesh, (rows, length))) for k, d in dtypes.items()}


def cache_bytes(cfg: ModelConfig, mesh: Mesh, rows: int, length: int) -> int:
    """Per-device bytes of the sampler's KV cache for `rows` x `length`."""
    from grm_jax.models.decoder import cache_logical_names, init_cache

    shapes = jax.eval_shape(lambda: init_cache(cfg, rows, length))
    shardings = tree_shardings(cache_logical_names(shapes), shapes, mesh)
    return tree_bytes(jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), shapes, shardings))


def tree_bytes(tree) -> int:
    """Largest per-device bytes of a pytree of sharded ShapeDtypeStructs."""
    from grm_jax.sharding import bytes_per_device

    return bytes_per_device(tree, [x.sharding for x in jax.tree.leaves(tree)])


# ---- the run's programs ---------------------------------------------------------------------

@dataclasses.dataclass
class Program:
    """One jitted program of a run with its abstract arguments.

    `resident` are the bytes per device of other state that stays in HBM while it runs (the
    reference params during the update, say). `cost_parts(cfg)` rebuilds it for the FLOP count
    on a model config with fewer layers: [(jitted fn, args, times it runs)] with the layers
    unrolled and one microbatch.
    """

    name: str
    phase: str
    fn: Callable
    args: tuple
    model_flops: float          # per device
    resident: int
    cost_parts: Callable[[ModelConfig], list]
    static: tuple = ()          # static arguments, passed after args
    # A sampler's decode: (weight bytes, KV cache bytes per device, the mean live fraction of the
    # cache over the decode, steps per decode phase): what an ideal step reads, and how the
    # program's decode loops (one per phase, `sampling.phase_windows`) split the steps.
    decode: tuple[int, int, float, tuple[int, ...]] | None = None


def _micro(rows: int, accum: int) -> int:
    return rows // accum


def _companion(run, length: int):
    """A run config for a cost companion: unrolled layers, one LM-head chunk, one microbatch."""
    return dataclasses.replace(run, unroll_layers=True, chunk=length,
                               optim=dataclasses.replace(run.optim, grad_accum=1))


def build_programs(kind: str, raw: dict, cfg: ModelConfig, mesh: Mesh) -> list[Program]:
    """The programs a run of `kind` ('sft', 'grpo', 'score', 'judge') executes, from its config dict."""
    n_dev = mesh.devices.size
    params, names = abstract_sharded_params(cfg, mesh)
    if kind == "sft":
        return _sft_programs(raw, cfg, mesh, params, n_dev)
    if kind == "grpo":
        return _grpo_programs(raw, cfg, mesh, params, names, n_dev)
    if kind == "score":
        return _score_programs(raw, cfg, mesh, params, n_dev)
    if kind == "judge":
        return _judge_programs(raw, cfg, mesh, params)
    raise ValueError(f"unknown run kind {kind!r}")


def _sft_programs(raw, cfg, mesh, params, n_dev):
    from grm_jax.sampling import bucket
    from grm_jax.train.optim import make_optimizer
    from grm_jax.train.sft import SFTConfig, sft_step_program

    run = from_dict(SFTConfig, raw)
    B, T, accum = run.batch_size, bucket(run.max_length), run.optim.grad_accum
    optimizer = make_optimizer(run.optim)

    def step_for(c: ModelConfig, rows: int, companion: bool):
        r = _companion(run, T) if companion else run
        p, _ = abstract_sharded_params(c, mesh)
        state = abstract_train_state(p, optimizer, mesh)
        batch = _batch(mesh, rows, T, tokens=jnp.int32, positions=jnp.int32, loss_mask=jnp.int32)
        return sft_step_program(c, r, mesh, optimizer), (state, batch)

    fn, args = step_for(cfg, B, False)
    return [Program("sft train step", "update", fn, args, F.train_flops(cfg, B, T) / n_dev, 0,
                    lambda c: [(*step_for(c, _micro(B, accum), True), accum)])]


def _grpo_programs(raw, cfg, mesh, params, names, n_dev):
    from grm_jax.sampling import Temperature, bucket, prompt_bucket
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.grpo_run import endogenous_reward_program, reference_inputs, reference_program, update_program
    from grm_jax.train.optim import make_optimizer

    run = from_dict(GRPOConfig, raw)
    P, G, accum = run.prompts_per_step, run.group_size, run.optim.grad_accum
    R, T_p, new = P * G, prompt_bucket(run.max_prompt_length), run.max_new_tokens
    T = bucket(run.max_prompt_length + new)
    optimizer = make_optimizer(run.optim)
    state = abstract_train_state(params, optimizer, mesh)
    p_bytes, opt_bytes = tree_bytes(params), tree_bytes(state.opt_state)
    reward_model = run.reward == "endogenous" and bool(run.reward_model)
    extra = p_bytes if reward_model else 0  # a separate endogenous reward model stays loaded

    def samples_batch(rows: int, **dtypes) -> dict:
        """Arrays of `rows` samples: prompt + response rows of T, or with shared_prompt the
        responses alone (`new`) and their rows // G prompts (T_p) apart."""
        if not run.shared_prompt:
            return _batch(mesh, rows, T, **dtypes)
        return {**_batch(mesh, rows // G, T_p, prompt_tokens=jnp.int32, prompt_positions=jnp.int32),
                **_batch(mesh, rows, new, **dtypes)}

    def model_flops(flops, rows: int) -> float:
        return flops(cfg, rows, new) + flops(cfg, rows // G, T_p) if run.shared_prompt else flops(cfg, rows, T)

    def ref_for(c: ModelConfig, companion: bool, rows: int):
        r = _companion(run, T) if companion else run
        p, _ = abstract_sharded_params(c, mesh)
        b = samples_batch(rows, tokens=jnp.int32, positions=jnp.int32)
        return reference_program(c, r, mesh), (p, *(b[k] for k in reference_inputs(r)))

    def reward_for(c: ModelConfig, companion: bool, rows: int):
        r = _companion(run, T) if companion else run
        p, _ = abstract_sharded_params(c, mesh)
        b = _batch(mesh, rows, T, tokens=jnp.int32, positions=jnp.int32, mask=jnp.int32)
        return endogenous_reward_program(c, r, mesh), (p, b["tokens"], b["positions"], b["mask"])

    def update_for(c: ModelConfig, companion: bool, rows: int):
        r = _companion(run, T) if companion else run
        p, _ = abstract_sharded_params(c, mesh)
        s = abstract_train_state(p, optimizer, mesh)
        b = samples_batch(rows, tokens=jnp.int32, positions=jnp.int32, mask=jnp.int32, old_logp=jnp.float32,
                          ref_logp=jnp.float32)
        b["adv"] = _sds((rows,), jnp.float32, batch_sharding(mesh, (rows,)))
        return update_program(c, r, mesh, optimizer), (s, b)

    programs = [_sampler_program("grpo sample (prefill + decode loop)", cfg, mesh, params, P, T_p, new, G,
                                 Temperature(run.temperature), True, p_bytes + opt_bytes + extra,
                                 run.decode_layout)]
    ref = ref_for(cfg, False, R)
    programs.append(Program("grpo reference log-probs", "reference/reward forward", *ref,
                            model_flops(F.forward_flops, R) / n_dev, p_bytes + opt_bytes + extra,
                            lambda c: [(*ref_for(c, True, _micro(R, accum)), accum)]))
    if run.reward == "endogenous":
        rew = reward_for(cfg, False, R)
        programs.append(Program("grpo endogenous reward", "reference/reward forward", *rew,
                                F.forward_flops(cfg, R, T) / n_dev, 2 * p_bytes + opt_bytes - (0 if extra else p_bytes),
                                lambda c: [(*reward_for(c, True, _micro(R, accum)), accum, (T,))], static=(T,)))
    upd = update_for(cfg, False, R)
    programs.append(Program("grpo update step", "update", *upd, model_flops(F.train_flops, R) * run.inner_iters / n_dev,
                            p_bytes + extra, lambda c: [(*update_for(c, True, _micro(R, accum)), accum)]))
    return programs


def _sampler_program(name, cfg, mesh, params, prompts_n, T_p, new, samples, strategy, unroll, resident, layout):
    """The sampler (prefill + decode loop) over `prompts_n` prompts of `T_p` tokens, `samples`
    continuations each of up to `new` tokens; costed as prefill + (new - 1) decode steps, each on
    the params as the sampler lays them out (`layout`, see `grm_jax.sharding.decode_mesh`)."""
    from grm_jax.sampling import default_phases, phase_steps, phase_windows, sampler_fn, sampler_parts, sampling_mesh

    n_dev, R = mesh.devices.size, prompts_n * samples
    stop, pad = (0,), 0
    rng = _sds((), jax.random.key(0).dtype, NamedSharding(mesh, PartitionSpec()))
    prompts = _batch(mesh, prompts_n, T_p, tokens=jnp.int32, mask=jnp.int32)
    run_mesh = sampling_mesh(cfg, mesh, layout)

    def sampler_cost(c: ModelConfig):
        p, n = abstract_sharded_params(c, run_mesh)
        prefill, _, step, _ = sampler_parts(c, mesh, strategy, new, samples, stop, pad, True, layout)
        up = _unstacked(p, n, run_mesh)
        first = _compile(jax.jit(prefill), (up, prompts["tokens"], prompts["mask"], rng))
        # The decode step's input is the loop state as the prefill leaves it, shardings included.
        state0 = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s),
                              jax.eval_shape(prefill, up, prompts["tokens"], prompts["mask"], rng),
                              first.output_shardings)
        # Donated: inside the while loop the state is carried in place, not copied per step.
        return [(first, None, 1), (jax.jit(step, donate_argnums=1), (up, state0), new - 1)]

    fn = sampler_fn(cfg, mesh, strategy, new, samples, stop, pad, unroll, layout)
    decode_flops = sum(F.forward_flops(cfg, R, 1, keys=T_p + i) for i in range(1, new))
    steps = tuple(phase_steps(T_p, new, phase_windows(T_p, new, default_phases(new))))
    return Program(name, "sampling", fn, (params, prompts["tokens"], prompts["mask"], rng),
                   (F.forward_flops(cfg, prompts_n, T_p) + decode_flops) / n_dev, resident, sampler_cost,
                   decode=(tree_bytes(abstract_sharded_params(cfg, run_mesh)[0]), cache_bytes(cfg, run_mesh, R, T_p + new),
                           (T_p + new / 2) / (T_p + new), steps))


def _judge_programs(raw, cfg, mesh, params):
    """`grm-jax judge`: the sampler over `batch_size` GRM prompts of `max_prompt_length` tokens
    (each of the k samples of an item is its own prompt), `max_new_tokens` each."""
    from grm_jax.sampling import Greedy, Temperature, prompt_bucket

    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    B = -(-int(raw.get("batch_size", 32)) // multiple) * multiple
    T_p, new = prompt_bucket(int(raw.get("max_prompt_length", 2048))), int(raw.get("max_new_tokens", 512))
    k, temperature = int(raw.get("k", 8)), float(raw.get("temperature", 0.5))
    strategy = Greedy() if k == 1 else Temperature(temperature)
    return [_sampler_program("judge sample (prefill + decode loop)", cfg, mesh, params, B, T_p, new, 1,
                             strategy, True, 0, raw.get("decode_layout", "tensor"))]


def _score_programs(raw, cfg, mesh, params, n_dev):
    from grm_jax.rewards.endogenous import jitted_rewards
    from grm_jax.sampling import bucket

    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    B = -(-int(raw.get("batch_size", 8)) // multiple) * multiple
    T = bucket(int(raw.get("max_length", 2048)))
    alpha, chunk = float(raw.get("alpha", 1.0)), int(raw.get("chunk", 512))

    def forward_for(c: ModelConfig, companion: bool):
        p, _ = abstract_sharded_params(c, mesh)
        b = _batch(mesh, B, T, tokens=jnp.int32, positions=jnp.int32, loss_mask=jnp.int32)
        fn = jitted_rewards(c, mesh, alpha, T, True) if companion else jitted_rewards(c, mesh, alpha, chunk)
        return fn, (p, b["tokens"], b["positions"], b["loss_mask"])

    fn, args = forward_for(cfg, False)
    return [Program("score forward (endogenous rewards)", "forward", fn, args, F.forward_flops(cfg, B, T) / n_dev, 0,
                    lambda c: [(*forward_for(c, True), 1, (T,))], static=(T,))]


# ---- compiling and costing ------------------------------------------------------------------

@dataclasses.dataclass
class Compiled:
    name: str
    phase: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    resident_bytes: int
    compile_seconds: float
    flops: float
    bytes_accessed: float
    model_flops: float
    error: str | None = None
    attention: str = ""
    decode: tuple | None = None         # Program.decode
    decode_hbm: float | None = None     # HBM bytes of the mean decode step (`decode_step_hbm`)

    @property
    def program_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def total_bytes(self) -> int:
        return self.program_bytes + self.resident_bytes


def _compile(fn, args, static=()):
    lowered = fn.lower(*args, *static)
    with quiet_stderr():
        return lowered.compile()


def _cost(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) per device of a compiled program."""
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0))


def _compile_all(items: list) -> list:
    """Compiles lowered programs (or passes compiled ones through) on a thread per core: XLA's
    compiler releases the GIL, and a plan's companion programs are independent."""
    from concurrent.futures import ThreadPoolExecutor

    def one(x):
        return x.compile() if hasattr(x, "compile") else x
    with quiet_stderr(), ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
        return list(pool.map(one, items))


def layer_variants(cfg: ModelConfig) -> list[tuple[ModelConfig, dict]]:
    """Small configs and how their costs combine: [(config, {"base": a, kind: b, ...})] such that
    cost(model) = Σ_v cost(v) · (a + Σ_kind b · layers of that kind)."""
    kinds = cfg.kinds
    first = kinds[0]
    other = SLIDING if first == FULL else FULL
    n_first, n_other = kinds.count(first), kinds.count(other)

    def variant(types):
        return cfg.replace(num_layers=len(types), layer_types=tuple(types) if cfg.layer_types else ())
    # A = cost(1 first) = c0 + c_f, B = cost(2 first) = c0 + 2 c_f, C = cost(1 other) = c0 + c_o, so
    # c_f = B - A, c0 = 2A - B, c_o = C - 2A + B and the model's c0 + n_f c_f + n_o c_o is
    # (2 - n_f - 2 n_o)·A + (n_f + n_o - 1)·B + n_o·C.
    out = [(variant([first]), 2 - n_first - 2 * n_other), (variant([first, first]), n_first + n_other - 1)]
    if n_other:
        out.append((variant([other]), n_other))
    return out


def program_cost(p: Program, cfg: ModelConfig) -> tuple[float, float]:
    """(FLOPs, bytes accessed) per device of one run of `p`, loops counted."""
    weights, programs = [], []
    for variant, weight in layer_variants(cfg):
        for part in p.cost_parts(variant):
            fn, args, times = part[:3]
            static = part[3] if len(part) > 3 else ()
            weights.append(weight * times)
            programs.append(fn if args is None else fn.lower(*args, *static))
    costs = [_cost(c) for c in _compile_all(programs)]
    return sum(w * f for w, (f, _) in zip(weights, costs)), sum(w * b for w, (_, b) in zip(weights, costs))


def attention_of(cfg: ModelConfig) -> str:
    """The attention a TPU program of `cfg` runs ('auto' is splash there)."""
    return "splash" if cfg.attention_impl == "auto" else cfg.attention_impl


def compile_programs(programs: list[Program], cfg: ModelConfig, *, progress: bool = True,
                     cost: bool = True) -> list[Compiled]:
    """Compiles each program; with `cost`, also its loop-counted FLOPs and bytes (the companion
    programs: several more compiles), else those are None."""
    from tqdm.auto import tqdm

    out = []
    for p in tqdm(programs, desc="compiling", unit="program", disable=not progress):
        t0 = time.perf_counter()
        try:
            compiled = _compile(p.fn, p.args, p.static)
        except Exception as e:  # the TPU compiler's own verdict, e.g. RESOURCE_EXHAUSTED
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            out.append(Compiled(p.name, p.phase, 0, 0, 0, 0, p.resident, time.perf_counter() - t0, 0.0, 0.0,
                                p.model_flops, error=msg[:500], attention=attention_of(cfg)))
            continue
        seconds = time.perf_counter() - t0
        m = compiled.memory_analysis()
        flops, nbytes = program_cost(p, cfg) if cost else (None, None)
        out.append(Compiled(p.name, p.phase, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                            int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), p.resident, seconds,
                            flops, nbytes, p.model_flops, attention=attention_of(cfg), decode=p.decode,
                            decode_hbm=decode_step_hbm(compiled, p.decode) if p.decode else None))
    return out


def decode_step_hbm(compiled, decode: tuple) -> float | None:
    """HBM bytes per device of the mean decode step of a compiled sampler: one iteration of each
    of its decode loops (`hlo_traffic.loop_step_bytes`), weighted by the steps each runs. The
    loops are matched to the phases by size (a wider window reads more of the cache). None when
    the program's loops are not one per phase."""
    from grm_jax.hlo_traffic import loop_step_bytes

    steps = decode[3]
    loops = list(loop_step_bytes(compiled.as_text()).values())
    if len(loops) != len(steps) or any(b is None for b in loops) or not sum(steps):
        return None
    return sum(n * b for n, b in zip(steps, sorted(loops))) / sum(steps)
