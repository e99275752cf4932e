"""The embedded default: `grm-jax demo` runs the whole method on a synthetic judging task."""

from grm_jax.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
