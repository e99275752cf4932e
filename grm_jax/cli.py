"""The `grm-jax` command line. Each subcommand parses its flags and calls library code."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

_DTYPES = ("float32", "bfloat16", "float16")
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error before any model loads, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


_MESH_HELP = ("device mesh as axis=size over data, fsdp, tensor; -1 takes the remaining devices "
              "(default: fsdp=-1, i.e. params sharded over all devices)")


def _import_hf(args) -> int:
    from grm_jax.hf import load_hf, tokenizer_files
    from grm_jax.sharding import mesh_from_spec
    from grm_jax.train.checkpoint import save_model

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


def _bench(args) -> int:
    from grm_jax import bench

    common = dict(batch=args.batch, dtype=args.dtype, rounds=args.rounds, mesh_spec=args.mesh,
                  with_torch=not args.no_torch)
    if args.bench == "forward":
        result = bench.bench_forward(args.model, length=args.length, steps=args.steps, **common)
        what = "forward"
    elif args.bench == "score":
        result = bench.bench_score(args.model, length=args.length, response=args.response,
                                   chunk=args.chunk, steps=args.steps, **common)
        what = "scoring"
    else:
        result = bench.bench_generate(args.model, prompt=args.prompt, new_tokens=args.new_tokens,
                                      steps=args.steps, bandwidth=args.peak_bandwidth, **common)
        what = "greedy decode"
    print(json.dumps(result, indent=2))
    line = f"grm-jax {what}: {result['jax_tokens_per_s']:,.0f} tokens/s"
    if "torch_tokens_per_s" in result:
        line += (f"; transformers: {result['torch_tokens_per_s']:,.0f} tokens/s; "
                 f"ratio {result['ratio_jax_over_torch']:.2f}x")
    if args.bench == "generate":
        line += (f"; memory-bandwidth fraction {result['jax_hbm_fraction']:.1%}" if "jax_hbm_fraction" in result
                 else "; bandwidth fraction n/a (device peak unknown)")
    else:
        line += f"; MFU {result['jax_mfu']:.1%}" if "jax_mfu" in result else "; MFU n/a (device peak unknown)"
    print(line)
    return 0


def _mesh(spec):
    from grm_jax.sharding import mesh_from_spec

    return mesh_from_spec(spec)


def _template_flag(args):
    return False if args.no_chat_template else None


def _score_config(parser, args, argv):
    """Re-parses a `score` command line with the YAML's values as the defaults."""
    from omegaconf import OmegaConf

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config file {args.config} not found")
    values = OmegaConf.to_container(OmegaConf.load(args.config))
    score = parser.score_parser
    known = {a.dest for a in score._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown score option(s) {', '.join(unknown)}")
    score.set_defaults(**values)
    return parser.parse_args(argv)


def _score(args) -> int:
    from grm_jax.eval.score import ScoreOptions, format_summary, score_file

    missing = [f"--{k}" for k in ("model", "data", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (on the command line or in --config)")

    system = Path(args.system_prompt_file).read_text() if args.system_prompt_file else args.system_prompt
    opts = ScoreOptions(reward=args.reward, batch_size=args.batch_size, max_length=args.max_length,
                        system_prompt=system, use_template=_template_flag(args),
                        token_rewards=args.token_rewards, alpha=args.alpha, chunk=args.chunk)
    summary = score_file(args.model, args.data, args.out, summary_path=args.summary, options=opts,
                         mesh=_mesh(args.mesh), overwrite=args.overwrite)
    print(format_summary(summary))
    return 0


def _generate(args) -> int:
    from grm_jax.eval.generate import generate_file
    from grm_jax.sampling import strategy_from_args

    strategy = strategy_from_args(args.temperature, args.top_k, args.top_p)
    summary = generate_file(args.model, args.prompts, args.out, strategy=strategy,
                            max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                            batch_size=args.batch_size, seed=args.seed, system_prompt=args.system_prompt,
                            use_template=_template_flag(args), mesh=_mesh(args.mesh),
                            overwrite=args.overwrite)
    print(f"generated {summary['samples']} samples for {summary['generated_rows']}/{summary['rows']} rows "
          f"({summary['new_tokens']:,} tokens in {summary['seconds']:.1f}s); bad rows: {summary['bad_rows']}")
    for m in summary["bad_row_messages"]:
        print(f"  bad: {m}")
    print(f"wrote {summary['out']}")
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


def _demo(args) -> int:
    from grm_jax.config import load_config
    from grm_jax.demo import DemoConfig, run_demo

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(DemoConfig, args.config, overrides)
    run_demo(cfg, overwrite=args.overwrite)
    return 0


def _judge(args) -> int:
    from grm_jax.eval.judge import JudgeOptions, format_summary, judge_file

    try:
        ks = [int(x) for x in str(args.k).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--k takes an integer or a comma-separated list, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--k values must be >= 1, got {args.k!r}")
    opts = JudgeOptions(k=max(ks), temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, seed=args.seed, vote=args.vote, format=args.format,
                        template=args.template, k_meta=args.k_meta, system_prompt=args.system_prompt)
    summary = judge_file(args.model, args.data, args.out, opts=opts, ks=ks, meta_rm=args.meta_rm,
                         summary_path=args.summary, plot_path=args.plot, mesh=_mesh(args.mesh),
                         overwrite=args.overwrite)
    print(format_summary(summary))
    return 0


def _sft(args) -> int:
    from grm_jax.config import load_config
    from grm_jax.train.sft import SFTConfig, run_sft

    cfg = load_config(SFTConfig, args.config, args.overrides)
    summary, _ = run_sft(cfg)
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] in ("done", "stopped") else 3


def _grpo(args) -> int:
    from grm_jax.config import load_config
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.grpo_run import run_grpo

    cfg = load_config(GRPOConfig, args.config, args.overrides)
    summary, _ = run_grpo(cfg)
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] in ("done", "stopped") else 3


def _rft(args) -> int:
    from grm_jax.eval.judge import JudgeOptions
    from grm_jax.train.rft import run_rft

    opts = JudgeOptions(k=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, seed=args.seed, format=args.format,
                        template=args.template, system_prompt=args.system_prompt)
    counts = run_rft(args.model, args.data, args.out, n=args.n, hinted=args.hint, opts=opts,
                     mesh=_mesh(args.mesh), overwrite=args.overwrite)
    print(json.dumps(counts, indent=2))
    if args.sft_out:
        from grm_jax.config import load_config
        from grm_jax.train.sft import SFTConfig, run_sft

        cfg = load_config(SFTConfig, args.sft_config, [f"model={args.model}", f"data={args.out}",
                                                       f"out={args.sft_out}", *args.sft])
        summary, _ = run_sft(cfg)
        print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grm-jax",
        description="Reward modeling and RL post-training of language models in JAX. Models "
                    "come in from and go back out to the Hugging Face format (Llama, Qwen2/2.5, "
                    "Qwen3, Mistral, Gemma 2, Gemma 3 text).")
    from grm_jax.cli_scale import add_distributed_options, add_plan_parser

    add_distributed_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_plan_parser(sub)

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
    def bench_args(b, steps):
        b.add_argument("--model", required=True, help="HF directory (or grm-jax checkpoint, then no torch)")
        b.add_argument("--batch", type=int, default=8)
        b.add_argument("--dtype", choices=_DTYPES, help="param/compute dtype (default: the checkpoint's)")
        b.add_argument("--steps", type=int, default=steps, help="timed calls per round")
        b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
        b.add_argument("--mesh", help=_MESH_HELP)
        b.add_argument("--no-torch", action="store_true", help="skip the transformers comparison")
        b.set_defaults(fn=_bench)

    b = bsub.add_parser("forward", help="jitted forward (all-position logits) tokens/s",
                        description="Tokens/s of the jitted forward over a random batch, and of "
                                    "transformers' forward on the same model and batch.")
    bench_args(b, 3)
    b.add_argument("--length", type=int, default=512)
    b = bsub.add_parser("score", help="endogenous-reward scoring tokens/s vs transformers forward",
                        description="Tokens/s of one jitted endogenous-reward call (forward, LM head "
                                    "in chunks, rewards of the last --response tokens of each row) "
                                    "against transformers' plain forward (all-position logits, no "
                                    "reward math) on the same random batch.")
    bench_args(b, 3)
    b.add_argument("--length", type=int, default=512)
    b.add_argument("--response", type=int, help="response tokens per row (default: half)")
    b.add_argument("--chunk", type=positive_int, default=512, help="positions per LM-head chunk")
    b = bsub.add_parser("generate", help="greedy decode tokens/s vs transformers generate",
                        description="New tokens/s of greedy sampling (prefill included; every row "
                                    "runs --new-tokens, no stop token) against transformers' "
                                    "generate(do_sample=False) on the same random prompts. Reports "
                                    "the fraction of the HBM-bandwidth bound on known accelerators.")
    bench_args(b, 1)
    b.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--peak-bandwidth", type=float, metavar="BYTES_PER_S",
                   help="memory bandwidth to take as the bound (default: the vendor figure of a "
                        "known GPU/TPU; none on CPU)")

    s = p.score_parser = sub.add_parser("score", help="endogenous rewards of a preference or response file",
                       description="Score every response in FILE with the endogenous reward of "
                                   "MODEL (logits as a soft Q-function; the reward of a response is "
                                   "the sum of its token rewards r = Q(s,a) - V(s'), arXiv "
                                   "2506.23235). The layout is detected from the fields: "
                                   "RewardBench (prompt, chosen, rejected, subset), RM-Bench "
                                   "(chosen/rejected as lists of 3, domain), or plain (prompt, "
                                   "response). Writes one JSONL line per input row, in order (bad "
                                   "rows get an 'error' line), and a summary JSON with accuracy "
                                   "per subset/domain and RM-Bench hard/normal/easy.")
    s.add_argument("--config", help="YAML of these options by their long names (batch_size: 64, "
                                    "mesh: fsdp=8, ...); options given on the command line win. "
                                    "See configs/paper/")
    s.add_argument("--model", help="HF directory or grm-jax checkpoint (with tokenizer); required")
    s.add_argument("--data", help="JSON, JSONL or Parquet file; required")
    s.add_argument("--out", help="output JSONL (must not exist); required")
    s.add_argument("--summary", help="summary JSON (default: OUT with suffix .summary.json)")
    s.add_argument("--reward", default="sum", choices=("sum", "mean", "logprob"),
                   help="sum: the paper's R = sum of token rewards; mean: R / response tokens "
                        "(extension); logprob: sum of response log-probs (extension)")
    s.add_argument("--system-prompt", help="system message placed before every prompt (domain "
                                           "conditioning of the reward)")
    s.add_argument("--system-prompt-file", help="read the system prompt from this file")
    s.add_argument("--no-chat-template", action="store_true",
                   help="plain [BOS] prompt + response [EOS] even when the tokenizer has a template")
    s.add_argument("--batch-size", type=positive_int, default=8)
    s.add_argument("--max-length", type=positive_int, default=2048,
                   help="longest prompt + response (default 2048). A longer row keeps the last "
                        "max(L - response, min(prompt, L/2)) tokens of its prompt, then its "
                        "response is cut from the right to fit; such rows are counted")
    s.add_argument("--token-rewards", action="store_true", help="add per-token rewards to each line")
    s.add_argument("--alpha", type=float, default=1.0, help="soft-Q temperature (1 for an ordinary LM)")
    s.add_argument("--chunk", type=positive_int, default=512, help="positions per LM-head chunk (memory bound)")
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(fn=_score)

    s = sub.add_parser("generate", help="sample responses to the prompts of a file",
                       description="Sample responses to every row of PROMPTS (field 'prompt': a "
                                   "string or a list of {role, content} messages, or 'messages') "
                                   "through the tokenizer's chat template. Writes one JSONL line "
                                   "per (row, sample) with the text, token count, finish reason "
                                   "and summed log-prob under the model.")
    s.add_argument("--model", required=True, help="HF directory or grm-jax checkpoint (with tokenizer)")
    s.add_argument("--prompts", required=True, help="JSON, JSONL or Parquet file")
    s.add_argument("--out", required=True, help="output JSONL (must not exist)")
    s.add_argument("--max-new-tokens", type=positive_int, default=256)
    s.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt (one shared prefill)")
    s.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=positive_int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=positive_int, default=8, help="prompts per call")
    s.add_argument("--system-prompt")
    s.add_argument("--no-chat-template", action="store_true")
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_generate)

    s = sub.add_parser("judge", help="score items with a generative reward model, k samples + voting",
                       description="A generative reward model (DeepSeek-GRM layout) writes specific "
                                   "criteria, an analysis and boxed scores for each item, k times "
                                   "with the responses shuffled by a seeded permutation each time; "
                                   "the parsed scores are mapped back and summed (Eq. 14), "
                                   "optionally after a meta RM keeps the k_meta best samples. "
                                   "Input (detected by fields): GRM items {prompt|messages, "
                                   "responses, rewards, subset, id}, RewardBench/RM-Bench pairs, "
                                   "PPE correctness (response_1.., scores) or preference (winner) "
                                   "rows. Writes one JSONL line per item with every sampled text, "
                                   "its scores or parse-failure reason, the permutation, votes and "
                                   "choice; and a summary with Accuracy@1, pairwise accuracy per "
                                   "subset and the parse-failure rate.")
    s.add_argument("--model", required=True, help="the GRM: HF directory or grm-jax checkpoint")
    s.add_argument("--data", required=True, help="JSON, JSONL or Parquet file")
    s.add_argument("--out", required=True, help="output JSONL (must not exist)")
    s.add_argument("--k", default="8", help="samples per item, or a list such as 1,2,4,8,16,32: the "
                                            "largest is sampled once and smaller k vote over random "
                                            "subsets of it (a scaling curve, table and PNG)")
    s.add_argument("--temperature", type=nonnegative_float, default=0.5, help="sampling temperature when k > 1 "
                                                                   "(k = 1 is greedy)")
    s.add_argument("--max-new-tokens", type=positive_int, default=512)
    s.add_argument("--batch-size", type=positive_int, default=32, help="prompts per sampler call")
    s.add_argument("--vote", default="sum", choices=("sum", "mean", "majority"),
                   help="sum: Eq. 14; mean and majority are extensions")
    s.add_argument("--format", default="multi", choices=("multi", "single", "judge"),
                   help="multi: scores 1..10 per response; single: one response scored 0/1; judge: "
                        "the LLM-as-judge baseline naming the best response")
    s.add_argument("--template", help="a Jinja template file replacing the format's default "
                                      "(configs/prompts/)")
    s.add_argument("--meta-rm", help="meta reward model (checkpoint with value_head.npz) that keeps "
                                     "the k_meta best samples before voting")
    s.add_argument("--k-meta", type=positive_int, help="samples the meta RM keeps (default k/2)")
    s.add_argument("--system-prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--summary", help="summary JSON (default: OUT with suffix .summary.json)")
    s.add_argument("--plot", help="scaling PNG (default: OUT with suffix .scaling.png)")
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_judge)

    s = sub.add_parser("sft", help="supervised fine-tuning on response tokens (resumable)",
                       description="Fine-tune a model on the response tokens of SFT rows "
                                   "({messages: [..., assistant]} or {prompt, response}): the cold "
                                   "start, and the second half of rejective fine-tuning. Settings "
                                   "come from the SFTConfig defaults, then --config YAML, then "
                                   "KEY=VALUE overrides (e.g. optim.lr=1e-5 steps=900). OUT holds "
                                   "checkpoints/ (Orbax: params, optimizer, step, RNG, data "
                                   "iterator, config), metrics.jsonl and, when done, final/. "
                                   "Rerunning resumes from the last checkpoint; SIGTERM saves and "
                                   "exits (status 3).")
    s.add_argument("--config", help="YAML file (see configs/train/)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="model=DIR data=FILE out=DIR steps=N batch_size=N max_length=N "
                        "save_every=N keep=N seed=N system_prompt=TEXT mesh=SPEC optim.lr=X "
                        "optim.schedule=cosine|constant optim.warmup_steps=N optim.grad_accum=N "
                        "optim.clip_norm=X optim.weight_decay=X optim.fp32_moments=true|false")
    s.set_defaults(fn=_sft)

    s = sub.add_parser("rft", help="rejective fine-tuning data from GRM items (then optionally SFT)",
                       description="SPCT stage 1: for each GRM item (with ground-truth rewards) "
                                   "sample --n trajectories with the GRM template, keep those "
                                   "correct by Eq. 10, drop items where all were correct (too "
                                   "easy); --hint adds one sample whose prompt names the best "
                                   "response, kept only if correct (stored without the hint). "
                                   "Writes the kept trajectories as SFT rows to OUT and the counts "
                                   "(kept, too easy, all wrong, parse failures) to "
                                   "OUT.summary.json; --sft-out DIR then runs `sft` on them.")
    s.add_argument("--model", required=True, help="the GRM being trained (HF dir or checkpoint)")
    s.add_argument("--data", required=True, help="GRM items (JSONL with rewards) or preference pairs")
    s.add_argument("--out", required=True, help="output JSONL of kept trajectories (SFT rows)")
    s.add_argument("--n", type=positive_int, default=3, help="N_RFT samples per item (default 3)")
    s.add_argument("--hint", action="store_true", help="hinted sampling")
    s.add_argument("--temperature", type=nonnegative_float, default=1.0)
    s.add_argument("--max-new-tokens", type=positive_int, default=512)
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--format", default="multi", choices=("multi", "single"))
    s.add_argument("--template")
    s.add_argument("--system-prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mesh", help=_MESH_HELP)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--sft-out", help="then fine-tune MODEL on OUT into this run directory")
    s.add_argument("--sft-config", help="SFT YAML for --sft-out")
    s.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE", help="SFT override (repeatable)")
    s.set_defaults(fn=_rft)

    s = sub.add_parser("grpo", help="GRPO with a KL penalty: rule rewards or an endogenous reward",
                       description="Online RL by GRPO (PAPERS.md): each step samples group_size "
                                   "responses to prompts_per_step prompts from the current policy, "
                                   "scores them (reward=grm: +1/-1 by Eq. 10 on GRM items; math: "
                                   "+1/-1 final-answer check against 'answer'; endogenous: the "
                                   "endogenous reward of a frozen model, by default the initial "
                                   "policy; token_rate: a toy), normalizes rewards within each "
                                   "group and applies inner_iters clipped-surrogate updates with "
                                   "beta * KL(k3) to the initial policy. Per-step metrics go to "
                                   "OUT/metrics.jsonl (reward, accuracy, KL, clip fraction, "
                                   "entropy estimate, response length, tokens/s, the sampling / "
                                   "reward / reference / update time split, update MFU). Resumes "
                                   "from OUT's last checkpoint; SIGTERM saves and exits (status 3).")
    s.add_argument("--config", help="YAML file (see configs/train/)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="model=DIR data=FILE out=DIR reward=grm|math|endogenous|token_rate "
                        "reward_model=DIR steps=N prompts_per_step=N group_size=G max_new_tokens=N "
                        "temperature=X inner_iters=N eps=X eps_high=X beta=X kl=k1|k2|k3 "
                        "aggregation=sequence_mean|token_mean|sequence_sum optim.lr=X ...")
    s.set_defaults(fn=_grpo)

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

    s = sub.add_parser(
        "demo", help="the main job: the whole method from nothing on a synthetic judging task",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The embedded default. From nothing, on CPU: build a synthetic arithmetic judging "
                    "task and a BPE tokenizer, pretrain a tiny Qwen2-family model on it, then rejective "
                    "fine-tuning, GRPO with the Eq. 10 rule reward, a meta RM, evaluation on held-out "
                    "items (greedy, Voting@k and MetaRM@k for k = 1..32, a scalar Bradley-Terry RM and "
                    "LLM-as-judge baselines), the endogenous reward experiments, and an HF export "
                    "checked against transformers. Prints the results table and writes it, with plots, "
                    "into the run folder.\n\n"
                    "Default settings take about 10 minutes on 2 CPU cores; configs/demo/fast.yaml "
                    "takes about 2 (a smoke test: too little training for the claims to show).",
        epilog="examples:\n  grm-jax demo\n  grm-jax demo --seed 1 --out runs/demo-seed1\n"
               "  grm-jax demo --config configs/demo/fast.yaml\n  grm-jax demo pretrain_steps=800 k=16")
    s.add_argument("--config", help="YAML of DemoConfig fields (see configs/demo/)")
    s.add_argument("--out", help="run folder (default: a new runs/demo-TIME)")
    s.add_argument("--seed", type=int, help="seed of everything (data, init, sampling); default 0")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="DemoConfig field overrides")
    s.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from grm_jax.cli_scale import start_distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) and args.command == "score":
            args = _score_config(parser, args, argv)
        start_distributed(args)
        return args.fn(args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"grm-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
