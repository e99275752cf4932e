"""The embedded default: `grm-jax demo` runs the whole method on a synthetic judging task."""

from grm_jax.demo.config import DemoConfig
from grm_jax.demo.run import run_demo

__all__ = ["DemoConfig", "run_demo"]
