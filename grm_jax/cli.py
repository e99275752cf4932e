"""The `grm-jax` command line. Each subcommand parses its flags and calls library code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_DTYPES = ("float32", "bfloat16", "float16")
_MESH_HELP = ("device mesh as axis=size over data, fsdp, tensor; -1 takes the remaining devices "
              "(default: fsdp=-1, i.e. params sharded over all devices)")


def _import_hf(args) -> int:
    from grm_jax.hf import TOKENIZER_FILES, load_hf
    from grm_jax.sharding import mesh_from_spec
    from grm_jax.train.checkpoint import save_model

    out = Path(args.ckpt_dir)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    cfg, params = load_hf(args.hf_dir, mesh=mesh_from_spec(args.mesh), param_dtype=args.dtype)
    tokenizer = [Path(args.hf_dir) / f for f in TOKENIZER_FILES if (Path(args.hf_dir) / f).is_file()]
    save_model(out, params, cfg, tokenizer_files=tokenizer, overwrite=args.overwrite)
    print(f"imported {cfg.family} ({cfg.num_params():,} params, {cfg.param_dtype}) to {out}")
    return 0


def _export_hf(args) -> int:
    from grm_jax.hf import export_hf
    from grm_jax.loading import load_any
    from grm_jax.sharding import mesh_from_spec

    out = Path(args.out_dir)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    cfg, params, tokenizer = load_any(args.src, mesh=mesh_from_spec(args.mesh))
    export_hf(params, cfg, out, dtype=args.dtype, shard_size=args.shard_size,
              tokenizer_from=tokenizer, overwrite=args.overwrite)
    print(f"exported {cfg.family} ({cfg.num_params():,} params, {args.dtype or cfg.param_dtype}) to {out}")
    return 0


def _bench(args) -> int:
    from grm_jax.bench import bench_forward

    result = bench_forward(args.model, batch=args.batch, length=args.length, dtype=args.dtype,
                           steps=args.steps, rounds=args.rounds, mesh_spec=args.mesh,
                           with_torch=not args.no_torch)
    print(json.dumps(result, indent=2))
    line = f"grm-jax forward: {result['jax_tokens_per_s']:,.0f} tokens/s"
    if "torch_tokens_per_s" in result:
        line += (f"; transformers: {result['torch_tokens_per_s']:,.0f} tokens/s; "
                 f"ratio {result['ratio_jax_over_torch']:.2f}x")
    line += f"; MFU {result['jax_mfu']:.1%}" if "jax_mfu" in result else "; MFU n/a (device peak unknown)"
    print(line)
    return 0


def _random_model(args) -> int:
    from grm_jax.hf.tiny import save_random_hf_model, tiny_hf_config

    out = Path(args.out_dir)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    save_random_hf_model(tiny_hf_config(args.family, **overrides), out, seed=args.seed, dtype=args.dtype)
    print(f"wrote a random {args.family} model to {out}")
    return 0


def _demo(args) -> int:
    from grm_jax.demo import run_demo

    return 0 if run_demo(args.out)["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grm-jax",
        description="Reward modeling and RL post-training of language models in JAX. Models "
                    "come in from and go back out to the Hugging Face format (Llama, Qwen2/2.5, "
                    "Qwen3, Mistral, Gemma 2, Gemma 3 text).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("import-hf", help="convert an HF model directory to a grm-jax checkpoint",
                       description="Load an HF directory (config.json + safetensors, single file or "
                                   "sharded index), streaming each tensor into its sharded device "
                                   "array, and save an Orbax checkpoint with the model config and "
                                   "tokenizer files.")
    s.add_argument("hf_dir", help="Hugging Face model directory")
    s.add_argument("ckpt_dir", help="output checkpoint directory (must not exist)")
    s.add_argument("--dtype", choices=_DTYPES, help="param dtype (default: the checkpoint's own)")
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace an existing ckpt_dir")
    s.set_defaults(fn=_import_hf)

    s = sub.add_parser("export-hf", help="write a model as an HF directory",
                       description="Write a grm-jax checkpoint (or re-write an HF directory) as "
                                   "config.json, generation_config.json and safetensors shards that "
                                   "transformers' AutoModelForCausalLM.from_pretrained loads. The "
                                   "directory is written under a temporary name and renamed when "
                                   "complete.")
    s.add_argument("src", help="grm-jax checkpoint directory or HF directory")
    s.add_argument("out_dir", help="output HF directory (must not exist)")
    s.add_argument("--dtype", choices=_DTYPES, help="tensor dtype to write (default: the params')")
    s.add_argument("--shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    s.set_defaults(fn=_export_hf)

    s = sub.add_parser("bench", help="benchmarks against transformers on the same machine",
                       description="Benchmarks that report grm-jax throughput beside transformers "
                                   "(PyTorch) measured in the same run, with their ratio, and MFU "
                                   "where the device's peak FLOP/s is known.")
    bsub = s.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bsub.add_parser("forward", help="jitted forward (all-position logits) tokens/s",
                        description="Tokens/s of the jitted forward over a random batch, and of "
                                    "transformers' forward on the same model and batch.")
    b.add_argument("--model", required=True, help="HF directory (or grm-jax checkpoint, then no torch)")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--length", type=int, default=512)
    b.add_argument("--dtype", choices=_DTYPES, help="param/compute dtype (default: the checkpoint's)")
    b.add_argument("--steps", type=int, default=3, help="timed calls per round")
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    b.add_argument("--mesh", help=_MESH_HELP)
    b.add_argument("--no-torch", action="store_true", help="skip the transformers comparison")
    b.set_defaults(fn=_bench)

    s = sub.add_parser("random-model", help="write a random-init HF model of a family (needs torch)",
                       description="Build a randomly initialized transformers model from the tiny "
                                   "preset of FAMILY with --set overrides of HF config fields, and "
                                   "save it as an HF directory. For tests and benchmarks.")
    s.add_argument("family", help="llama, qwen2, qwen3, mistral, gemma2 or gemma3_text")
    s.add_argument("out_dir")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="HF config override, e.g. --set hidden_size=512 (repeatable)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=_DTYPES, default="float32")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_random_model)

    s = sub.add_parser("demo", help="the main job: HF round trip of every family, checked",
                       description="Build a tiny random model of every supported family with "
                                   "transformers, import it, export it back, reload it with "
                                   "transformers, and check tensors and logits. Needs torch.")
    s.add_argument("--out", help="results folder (default: a new runs/demo-TIME)")
    s.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"grm-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
