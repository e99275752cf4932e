"""`bench forward|score|generate`: throughput beside transformers measured in the same run."""

from __future__ import annotations

import json

from grm_jax.commands.common import DTYPES, MESH_HELP, positive_int


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


def add_commands(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks against transformers on the same machine",
                       description="Benchmarks that report grm-jax throughput beside transformers "
                                   "(PyTorch) measured in the same run, with their ratio, and MFU "
                                   "where the device's peak FLOP/s is known.")
    bsub = s.add_subparsers(dest="bench", required=True, metavar="BENCH")
    def bench_args(b, steps):
        b.add_argument("--model", required=True, help="HF directory (or grm-jax checkpoint, then no torch)")
        b.add_argument("--batch", type=int, default=8)
        b.add_argument("--dtype", choices=DTYPES, help="param/compute dtype (default: the checkpoint's)")
        b.add_argument("--steps", type=int, default=steps, help="timed calls per round")
        b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
        b.add_argument("--mesh", help=MESH_HELP)
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
