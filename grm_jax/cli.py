"""The `grm-jax` command line. Each subcommand's parser sits beside its handler in a module of
`grm_jax.commands` (models, scoring, training, bench, plan, demo); this file puts them together."""

from __future__ import annotations

import argparse
import sys

from grm_jax.commands import bench, demo, models, plan, scoring, training
from grm_jax.host_memory import keep_freed_memory
from grm_jax.topology import cpu_only_without_tpu, jax_uses_cpu_only

# In the order `grm-jax --help` lists them.
COMMAND_MODULES = (plan, models, bench, scoring, training, demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grm-jax",
        description="Reward modeling and RL post-training of language models in JAX. Models "
                    "come in from and go back out to the Hugging Face format (Llama, Qwen2/2.5, "
                    "Qwen3, Mistral, Gemma 2, Gemma 3 text).")
    p.epilog = ("environment: on a run where JAX uses the CPU alone, grm-jax has glibc's malloc keep the "
                "memory XLA frees for the next step (faster training steps, same results; the process "
                "keeps its peak heap); GRM_JAX_MALLOC=system leaves malloc as it comes.")
    plan.add_distributed_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) and getattr(args, "reconfigure", None):
            args = args.reconfigure(parser, args, argv)  # a --config YAML as the defaults (score)
        cpu_only_without_tpu()  # before JAX starts: no libtpu noise on a host without a TPU
        if jax_uses_cpu_only():
            keep_freed_memory()  # XLA's CPU buffers reused, not faulted in again at every step
        plan.start_distributed(args)
        return args.fn(args)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"grm-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
