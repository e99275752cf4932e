"""Scoring and sampling: `score` (endogenous rewards), `generate`, `judge` (a generative RM)."""

from __future__ import annotations

import functools
from pathlib import Path

from grm_jax.commands.common import MESH_HELP, mesh, nonnegative_float, positive_int, template_flag


def _score_config(score, parser, args, argv):
    """Re-parses a `score` command line (`parser`, whose `score` subparser this is) with the
    YAML's values as the defaults."""
    from omegaconf import OmegaConf

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config file {args.config} not found")
    values = OmegaConf.to_container(OmegaConf.load(args.config))
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
                        system_prompt=system, use_template=template_flag(args),
                        token_rewards=args.token_rewards, alpha=args.alpha, chunk=args.chunk)
    summary = score_file(args.model, args.data, args.out, summary_path=args.summary, options=opts,
                         mesh=mesh(args.mesh), overwrite=args.overwrite)
    print(format_summary(summary))
    return 0


def _generate(args) -> int:
    from grm_jax.eval.generate import generate_file
    from grm_jax.sampling import strategy_from_args

    strategy = strategy_from_args(args.temperature, args.top_k, args.top_p)
    summary = generate_file(args.model, args.prompts, args.out, strategy=strategy,
                            max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                            batch_size=args.batch_size, seed=args.seed, system_prompt=args.system_prompt,
                            use_template=template_flag(args), mesh=mesh(args.mesh),
                            overwrite=args.overwrite)
    print(f"generated {summary['samples']} samples for {summary['generated_rows']}/{summary['rows']} rows "
          f"({summary['new_tokens']:,} tokens in {summary['seconds']:.1f}s); bad rows: {summary['bad_rows']}")
    for m in summary["bad_row_messages"]:
        print(f"  bad: {m}")
    print(f"wrote {summary['out']}")
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
                         summary_path=args.summary, plot_path=args.plot, mesh=mesh(args.mesh),
                         overwrite=args.overwrite)
    print(format_summary(summary))
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("score", help="endogenous rewards of a preference or response file",
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
    s.add_argument("--mesh", help=MESH_HELP)
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(fn=_score, reconfigure=functools.partial(_score_config, s))

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
    s.add_argument("--mesh", help=MESH_HELP)
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
    s.add_argument("--mesh", help=MESH_HELP)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_judge)
