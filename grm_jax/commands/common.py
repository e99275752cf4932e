"""What the subcommands share: argparse types, the mesh flag, dtype choices."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")
MESH_HELP = ("device mesh as axis=size over data, fsdp, tensor; -1 takes the remaining devices "
             "(default: fsdp=-1, i.e. params sharded over all devices)")


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


def mesh(spec):
    """The device mesh a --mesh flag names (None: the default)."""
    from grm_jax.sharding import mesh_from_spec

    return mesh_from_spec(spec)


def template_flag(args):
    """ChatFormatter's use_template for --no-chat-template: False, else None (use one if any)."""
    return False if args.no_chat_template else None
