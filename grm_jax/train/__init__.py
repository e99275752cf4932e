"""Training: train state, optimizer, losses, steps and checkpoints."""

from grm_jax.train.model_checkpoint import is_model_checkpoint, load_model, save_model

__all__ = ["is_model_checkpoint", "load_model", "save_model"]
