"""Rewards: endogenous (soft-Q) rewards read from a model's own logits."""

from grm_jax.rewards.endogenous import (REWARDS, endogenous_rewards, jitted_rewards, response_logprobs,
                                        token_rewards)

__all__ = ["REWARDS", "endogenous_rewards", "jitted_rewards", "response_logprobs",
           "token_rewards"]
