"""The embedded default: `grm-jax demo` runs the whole method on a synthetic judging task."""

from grm_jax.demo.config import DemoConfig

__all__ = ["DemoConfig", "run_demo"]


def __getattr__(name):
    # run_demo is imported on first use, so `python -m grm_jax.demo.report` does not import the
    # report module twice (through run) before running it.
    if name == "run_demo":
        from grm_jax.demo.run import run_demo
        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
