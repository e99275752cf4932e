"""`demo`: the main job on the embedded default."""

from __future__ import annotations

import argparse


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


def add_commands(sub) -> None:
    s = sub.add_parser(
        "demo", help="the main job: the whole method from nothing on a synthetic judging task",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The embedded default. From nothing, on CPU: build a synthetic arithmetic judging "
                    "task and a BPE tokenizer, pretrain a tiny Qwen2-family model on it, then rejective "
                    "fine-tuning, GRPO with the Eq. 10 rule reward, a meta RM, evaluation on held-out "
                    "items (greedy, Voting@k and MetaRM@k for k = 1, 2, 4, .., K, a scalar Bradley-Terry RM and "
                    "LLM-as-judge baselines), the endogenous reward experiments, and an HF export "
                    "checked against transformers. Prints the results table and writes it, with plots, "
                    "into the run folder.\n\n"
                    "The default settings' time on 2 CPU cores is in the README (configs/demo/EXPERIMENTS.md "
                    "says why they are what they are); configs/demo/fast.yaml takes about 2 minutes (a "
                    "smoke test: too little training for the claims to show).",
        epilog="examples:\n  grm-jax demo\n  grm-jax demo --seed 1 --out runs/demo-seed1\n"
               "  grm-jax demo --config configs/demo/fast.yaml\n  grm-jax demo pretrain_steps=800 k=8 val_items=1000")
    s.add_argument("--config", help="YAML of DemoConfig fields (see configs/demo/)")
    s.add_argument("--out", help="run folder (default: a new runs/demo-TIME)")
    s.add_argument("--seed", type=int, help="seed of everything (data, init, sampling); default 0")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="DemoConfig field overrides")
    s.set_defaults(fn=_demo)
