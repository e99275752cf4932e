"""Model conversion: `import-hf` (HF directory or GGUF file in), `export-hf`, `random-model`, `roundtrip`."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from grm_jax.commands.common import DTYPES, MESH_HELP


def _import_hf(args) -> int:
    from grm_jax.hf import load_hf, tokenizer_files
    from grm_jax.sharding import mesh_from_spec
    from grm_jax.train.model_checkpoint import save_model

    out = Path(args.ckpt_dir)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    with _hf_source(args.hf_dir) as source:
        cfg, params = load_hf(source, mesh=mesh_from_spec(args.mesh), param_dtype=args.dtype)
        save_model(out, params, cfg, tokenizer_files=tokenizer_files(source), overwrite=args.overwrite)
    print(f"imported {cfg.family} ({cfg.num_params():,} params, {cfg.param_dtype}) to {out}")
    return 0


@contextlib.contextmanager
def _hf_source(path: str):
    """An HF directory for `path`: itself, or a GGUF file (or a directory holding one) converted
    into a temporary HF directory, removed afterwards."""
    from grm_jax.hf.gguf import gguf_to_hf, is_gguf

    if not is_gguf(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="grm-jax-gguf-") as tmp:
        yield str(gguf_to_hf(path, Path(tmp) / "hf"))


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
    tokenizer = None
    if args.tokenizer_vocab:
        from grm_jax.data.tokenizers import SAMPLE_TEXTS, train_bpe_tokenizer
        from grm_jax.rewards.grm import PROMPTS_DIR

        texts = [f.read_text() for f in sorted(PROMPTS_DIR.glob("*.jinja"))] + list(SAMPLE_TEXTS)
        tokenizer = train_bpe_tokenizer(texts, args.tokenizer_vocab)
        overrides["vocab_size"] = len(tokenizer)
    save_random_hf_model(tiny_hf_config(args.family, **overrides), out, seed=args.seed, dtype=args.dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    print(f"wrote a random {args.family} model to {out}" +
          (f" with a {len(tokenizer)}-token BPE tokenizer (ChatML template)" if tokenizer is not None else ""))
    return 0


def _roundtrip(args) -> int:
    from grm_jax.hf.roundtrip import run_round_trip

    return 0 if run_round_trip(args.out)["ok"] else 1


def add_commands(sub) -> None:
    s = sub.add_parser("import-hf", help="convert an HF model directory (or a GGUF file) to a grm-jax checkpoint",
                       description="Load an HF directory (config.json + safetensors, single file or "
                                   "sharded index), streaming each tensor into its sharded device "
                                   "array, and save an Orbax checkpoint with the model config and "
                                   "tokenizer files. A llama.cpp GGUF file (or a directory holding one; "
                                   "llama and qwen2 architectures) is dequantized to float32 first, "
                                   "with its tokenizer and chat template; needs the gguf package "
                                   "(pip install 'grm-jax[gguf]').")
    s.add_argument("hf_dir", help="Hugging Face model directory, or a .gguf file")
    s.add_argument("ckpt_dir", help="output checkpoint directory (must not exist)")
    s.add_argument("--dtype", choices=DTYPES, help="param dtype (default: the checkpoint's own)")
    s.add_argument("--mesh", help=MESH_HELP)
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
    s.add_argument("--dtype", choices=DTYPES, help="tensor dtype to write (default: the params')")
    s.add_argument("--shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    s.add_argument("--mesh", help=MESH_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    s.set_defaults(fn=_export_hf)

    s = sub.add_parser("random-model", help="write a random-init HF model of a family (needs torch)",
                       description="Build a randomly initialized transformers model from the tiny "
                                   "preset of FAMILY with --set overrides of HF config fields, and "
                                   "save it as an HF directory. For tests and benchmarks.")
    s.add_argument("family", help="llama, qwen2, qwen3, mistral, gemma2 or gemma3_text")
    s.add_argument("out_dir")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="HF config override, e.g. --set hidden_size=512 (repeatable)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=DTYPES, default="float32")
    s.add_argument("--tokenizer-vocab", type=int, metavar="N",
                   help="also train a byte-level BPE tokenizer of up to N tokens (on the GRM templates "
                        "and a few built-in texts, ChatML chat template) and size the vocabulary to it")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_random_model)

    s = sub.add_parser("roundtrip", help="HF round trip of every family, checked (needs torch)",
                       description="Build a tiny random model of every supported family with "
                                   "transformers, import it, export it back, reload it with "
                                   "transformers, and check tensors and logits. Needs torch.")
    s.add_argument("--out", help="results folder (default: a new runs/roundtrip-TIME)")
    s.set_defaults(fn=_roundtrip)
