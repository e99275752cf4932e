"""grm-jax: generative and endogenous reward modeling, and RL post-training, in JAX."""

__version__ = "0.1.0"
