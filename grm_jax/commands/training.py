"""Training: `sft`, `rft` (rejective fine-tuning data, then optionally SFT), `grpo`."""

from __future__ import annotations

import json

from grm_jax.commands.common import MESH_HELP, mesh, nonnegative_float, positive_int


def _train(config_cls, run, config_file, overrides) -> int:
    """Loads a run config (defaults, YAML, key=value), runs it, prints its summary; the exit
    status is 0 when done or stopped (SIGTERM), 3 otherwise."""
    from grm_jax.config import load_config

    summary, _ = run(load_config(config_cls, config_file, overrides))
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] in ("done", "stopped") else 3


def _sft(args) -> int:
    from grm_jax.train.sft import SFTConfig, run_sft

    return _train(SFTConfig, run_sft, args.config, args.overrides)


def _rft(args) -> int:
    from grm_jax.eval.judge import JudgeOptions
    from grm_jax.train.rft import run_rft

    opts = JudgeOptions(k=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, seed=args.seed, format=args.format,
                        template=args.template, system_prompt=args.system_prompt)
    counts = run_rft(args.model, args.data, args.out, n=args.n, hinted=args.hint, opts=opts,
                     mesh=mesh(args.mesh), overwrite=args.overwrite)
    print(json.dumps(counts, indent=2))
    if args.sft_out:
        from grm_jax.train.sft import SFTConfig, run_sft

        return _train(SFTConfig, run_sft, args.sft_config,
                      [f"model={args.model}", f"data={args.out}", f"out={args.sft_out}", *args.sft])
    return 0


def _grpo(args) -> int:
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.grpo_run import run_grpo

    return _train(GRPOConfig, run_grpo, args.config, args.overrides)


def add_commands(sub) -> None:
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
    s.add_argument("--mesh", help=MESH_HELP)
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
