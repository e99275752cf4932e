"""`grm-jax plan --topology`'s report: compiled programs as JSON and as a table."""

from __future__ import annotations

from grm_jax import flops as F
from grm_jax.aot import Compiled
from grm_jax.topology import Topology


def compiled_json(c: Compiled, topo: Topology) -> dict:
    chip = topo.per_device
    d = {"name": c.name, "phase": c.phase, "compile_seconds": round(c.compile_seconds, 2)}
    if c.error:
        return {**d, "error": c.error, "fits": False, "total_bytes": None, "flops": None,
                "model_flops": c.model_flops, "seconds_lower_bound": None, "attention": c.attention}
    counted = c.flops is not None
    return {**d, "argument_bytes": c.argument_bytes, "output_bytes": c.output_bytes, "alias_bytes": c.alias_bytes,
            "temp_bytes": c.temp_bytes, "program_bytes": c.program_bytes, "resident_bytes": c.resident_bytes,
            "total_bytes": c.total_bytes, "hbm_bytes": chip.hbm_bytes, "fits": c.total_bytes <= chip.hbm_bytes,
            "flops": c.flops, "bytes_accessed": c.bytes_accessed, "model_flops": c.model_flops,
            "flop_ratio": c.flops / c.model_flops if counted and c.model_flops else None,
            "seconds_lower_bound": F.roofline_seconds(c.flops, c.bytes_accessed, chip) if counted else None,
            "attention": c.attention, "cost_excludes_attention_kernel": c.attention == "splash",
            **_decode_json(c)}


def _decode_json(c: Compiled) -> dict:
    """A sampler's decode step: compiled bytes accessed per step against an ideal step's reads
    (the weights plus the live KV cache, once)."""
    if c.decode is None or c.decode_hbm is None:
        return {}
    weights, kv, live, steps = c.decode
    ideal = weights + kv * live
    return {"decode_step_hbm_bytes": c.decode_hbm, "decode_ideal_bytes": ideal, "decode_phases": len(steps),
            "decode_bytes_ratio": c.decode_hbm / ideal, "decode_weight_bytes": weights,
            "decode_live_kv_bytes": kv * live}


def format_compiled(results: list[dict], topo: Topology, mesh_shape: dict) -> str:
    gib = 2**30
    chip = topo.per_device
    mesh = ",".join(f"{k}={v}" for k, v in mesh_shape.items())
    lines = [f"compiled for {topo.name} ({len(topo.devices)} x {topo.chip}, {chip.hbm_bytes / gib:.1f} GiB HBM, "
             f"{chip.peak_flops / 1e12:.0f} TFLOP/s, {chip.hbm_bandwidth / 1e12:.2f} TB/s per device) on mesh {mesh}:",
             f"  {'program':<38} {'attn':<6} {'args':>8} {'temp':>8} {'+other':>8} {'total':>8} {'estim.':>8}  fits  "
             f"{'TFLOP':>8} {'ratio':>6} {'bound s':>9} {'compile':>8}"]
    for r in results:
        if r.get("error"):
            lines.append(f"  {r['name']:<38} {r.get('attention', ''):<6} did not compile: {r['error']}")
            continue
        cost = (f"{r['flops'] / 1e12:8.2f} {r['flop_ratio']:6.2f} {r['seconds_lower_bound']:9.4f}"
                if r["flops"] is not None else f"{'-':>8} {'-':>6} {'-':>9}")
        lines.append(
            f"  {r['name']:<38} {r.get('attention', ''):<6} {r['argument_bytes'] / gib:7.2f}G "
            f"{r['temp_bytes'] / gib:7.2f}G {r['resident_bytes'] / gib:7.2f}G {r['total_bytes'] / gib:7.2f}G "
            f"{(r.get('estimated_bytes') or 0) / gib:7.2f}G  {'yes' if r['fits'] else 'NO ':<4} "
            f"{cost} {r['compile_seconds']:7.1f}s")
        if "decode_step_hbm_bytes" in r:
            lines.append(f"    mean decode step ({r['decode_phases']} phases) moves {r['decode_step_hbm_bytes'] / gib:.3f}G "
                         f"of HBM; weights {r['decode_weight_bytes'] / gib:.3f}G + mean live KV cache "
                         f"{r['decode_live_kv_bytes'] / gib:.3f}G = {r['decode_ideal_bytes'] / gib:.3f}G "
                         f"(ratio {r['decode_bytes_ratio']:.2f})")
    lines.append("  (per device; total = args + outputs - donated + temp + other state resident meanwhile; estim. = "
                 "the shape-only plan's figure for the program's phase; TFLOP with loop trip counts; ratio = "
                 "compiled / model FLOPs; bound = roofline lower bound)")
    if any(r.get("flops") is None and not r.get("error") for r in results):
        lines.append("  (-: not costed; FLOPs and bytes are counted for the first --attention listed)")
    if any(r.get("attention") == "splash" and r.get("flops") is not None for r in results):
        lines.append("  (splash rows: XLA's cost analysis gives a Pallas kernel no FLOPs or bytes, so their TFLOP, "
                     "ratio and bound leave out the attention kernel: compare the xla rows for those)")
    return "\n".join(lines)
