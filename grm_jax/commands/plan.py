"""Scale-out: `grm-jax plan` (memory, and with --topology the TPU compiler's figures) and the
multi-host options that come before the command (`grm-jax --distributed grpo ...`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from grm_jax.commands.common import positive_int

DISTRIBUTED_HELP = (
    "join a multi-host run through jax.distributed before the command: start the same command on "
    "every host. The coordinator, process count and process id come from --coordinator / "
    "--num-processes / --process-id, else from GRM_JAX_COORDINATOR / GRM_JAX_NUM_PROCESSES / "
    "GRM_JAX_PROCESS_ID, else from JAX's own detection (TPU VM metadata, SLURM, Open MPI)")


def add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host")
    g.add_argument("--distributed", action="store_true", help=DISTRIBUTED_HELP)
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the run (one per host)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..N-1")


# Commands whose host-side work is split per process and whose writes are process 0's.
MULTI_HOST_COMMANDS = ("sft", "grpo", "import-hf", "export-hf", "plan")


def start_distributed(args) -> None:
    if not (args.distributed or args.coordinator or args.num_processes is not None):
        return
    import jax

    from grm_jax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if jax.process_count() > 1 and args.command not in MULTI_HOST_COMMANDS:
        raise ValueError(f"'{args.command}' runs on one host (one process driving all its devices); "
                         f"multi-host commands: {', '.join(MULTI_HOST_COMMANDS)}")


def add_commands(sub) -> None:
    from grm_jax.plan import ACCELERATORS, USABLE

    s = sub.add_parser(
        "plan", help="per-device memory of a run config on a mesh; whether it fits an accelerator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per-device memory of the run a config describes (GRPO, SFT or endogenous-reward "
                    "scoring, told apart by its keys) on a mesh, without allocating anything: params, "
                    "optimizer state and gradients (exact, from jax.eval_shape and the sharding rules), "
                    "activations at the configured batch and length (an estimate: attention scores "
                    "materialized in float32; per-layer remat when the config sets remat: true) and "
                    "the sampler's KV cache (exact). With --accelerator: whether the peak fits in "
                    f"{USABLE:.0%} of the chip's HBM, and the mesh over the same devices that would "
                    "fit (least tensor parallelism, then most data parallelism).\n\n"
                    f"accelerators: {', '.join(ACCELERATORS)}",
        epilog="examples:\n  grm-jax plan --config configs/paper/spct_gemma2_27b_grpo.yaml --accelerator tpu-v5p\n"
               "  grm-jax plan --config configs/paper/spct_gemma2_27b_grpo.yaml --topology v5p:4x4x4\n"
               "  grm-jax plan --config configs/paper/spct_gemma2_27b_grpo.yaml --mesh fsdp=-1 --devices 64 "
               "--accelerator tpu-v5p\n  grm-jax plan --config C.yaml --mesh fsdp=8 model=Qwen/Qwen2.5-7B")
    s.add_argument("--config", required=True, help="a run config (YAML)")
    s.add_argument("--mesh", help="data=..,fsdp=..,tensor=.. (default: the config's mesh, else fsdp=-1)")
    s.add_argument("--devices", type=positive_int, help="devices in the run (needed when an axis is -1)")
    s.add_argument("--accelerator", choices=sorted(ACCELERATORS), help="check the peak against this chip")
    s.add_argument("--topology", metavar="NAME",
                   help="also compile the run's programs for this TPU topology with XLA's TPU compiler "
                        "(libtpu, on any CPU host), e.g. v5p:4x4x4, v5p:2x2x1, v5e:2x2, v6e:2x4; reports "
                        "per-device bytes, fits, FLOPs with loop trip counts, model FLOPs and a roofline "
                        "bound per program beside the shape-only estimate")
    s.add_argument("--attention", default="auto", metavar="IMPL[,IMPL]",
                   help="with --topology: the attention the programs compile with, or a comma list to "
                        "compare memory (e.g. xla,splash: FLOPs and bytes are counted for the first); "
                        "auto (the default) is splash on TPU")
    s.add_argument("--programs", metavar="TEXT[,TEXT]",
                   help="with --topology: compile only the programs whose name contains one of these "
                        "(e.g. sample, update), not all of the run's")
    s.add_argument("--json", action="store_true", help="print the plan as JSON (with --topology: a 'programs' list)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. model=google/gemma-2-27b optim.grad_accum=16")
    s.set_defaults(fn=plan_command)


def _attention_impls(spec: str) -> list[str]:
    from grm_jax.models.config import ATTENTION_IMPLS

    impls = [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in impls if a not in ("auto", "xla", "splash")]
    if not impls or bad:
        raise ValueError(f"--attention {spec!r}: use auto, xla or splash (comma-separated to compare); "
                         f"{', '.join(a for a in ATTENTION_IMPLS if a not in ('auto', 'xla', 'splash'))} "
                         "are not TPU paths")
    return impls


def _compile_for_topology(kind, raw, model_cfg, topo, mesh_shape, plan, impls, progress, only=None):
    """Per-program compiler figures (JSON-able), each beside the shape-only estimate of its phase,
    for each attention implementation in `impls`; FLOPs and bytes for the first of them only.
    `only`: a comma list; just the programs whose name contains one of its items."""
    from grm_jax.aot import build_programs, compile_programs
    from grm_jax.topology import topology_mesh
    from grm_jax.aot_report import compiled_json

    mesh = topology_mesh(topo, mesh_shape)
    estimates = plan.phase_bytes()
    wanted = [w.strip() for w in (only or "").split(",") if w.strip()]
    out = []
    for i, impl in enumerate(impls):
        cfg = model_cfg.replace(attention_impl=impl)
        programs = build_programs(kind, raw, cfg, mesh)
        if wanted:
            names = [p.name for p in programs]
            programs = [p for p in programs if any(w in p.name for w in wanted)]
            if not programs:
                raise ValueError(f"--programs {only!r} matches none of this run's programs: {names}")
        for r in compile_programs(programs, cfg, progress=progress, cost=i == 0):
            d = compiled_json(r, topo)
            d["estimated_bytes"] = estimates.get(r.phase)
            out.append(d)
    return out


def plan_command(args) -> int:
    from omegaconf import OmegaConf

    from grm_jax.plan import format_plan, full_mesh, plan_json, plan_run, resolve_model_config, run_kind, suggest_mesh

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config file {args.config} not found")
    raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(args.config),
                                                 OmegaConf.from_dotlist(list(args.overrides))))
    if not raw.get("model") or str(raw["model"]) == "???":
        raise ValueError(f"{args.config}: no model (set model=DIR, a preset or a hub id)")
    kind = run_kind(raw)
    model_cfg, source = resolve_model_config(str(raw["model"]))
    topo = None
    if args.programs and not args.topology:
        raise ValueError("--programs needs --topology (it picks the programs to compile)")
    if args.topology:
        from grm_jax.topology import get_topology

        impls = _attention_impls(args.attention)
        topo = get_topology(args.topology)  # before any work: a missing libtpu is one clear line
        args.devices = args.devices or len(topo.devices)
        args.accelerator = args.accelerator or topo.chip
        if args.devices != len(topo.devices):
            raise ValueError(f"--devices {args.devices}, but topology {args.topology} has {len(topo.devices)}")
    mesh = full_mesh(args.mesh or raw.get("mesh") or "fsdp=-1", args.devices)
    plan = plan_run(kind, raw, mesh, model_cfg)
    suggestion = None
    if args.accelerator:
        suggestion = suggest_mesh(kind, raw, math.prod(mesh.values()), args.accelerator, model_cfg)
    programs = None
    if topo is not None:
        programs = _compile_for_topology(kind, raw, model_cfg, topo, mesh, plan, impls, progress=not args.json,
                                         only=args.programs)
    if args.json:
        out = plan_json(plan, args.accelerator)
        out["model_config"] = source
        if args.accelerator:
            out["suggested_mesh"] = suggestion[0] if suggestion else None
        if programs is not None:
            out.update(topology=topo.name, programs=programs)
        print(json.dumps(out, indent=2))
        return 0
    print(f"model config: {source}")
    print(format_plan(plan, args.accelerator))
    if programs is not None:
        from grm_jax.aot_report import format_compiled

        print(format_compiled(programs, topo, mesh))
    if args.accelerator:
        devices = math.prod(mesh.values())
        if suggestion is None:
            print(f"no mesh over {devices} {args.accelerator} devices fits; use more devices, remat: true, "
                  "a larger optim.grad_accum or fewer prompts per step")
        else:
            m, p = suggestion
            spec = ",".join(f"{k}={v}" for k, v in m.items())
            print(f"suggested mesh over {devices} {args.accelerator} devices: {spec} "
                  f"(peak {p.peak() / 2**30:.2f} GiB)")
    return 0
