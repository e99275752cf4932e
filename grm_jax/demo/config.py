"""The demo's settings (configs/demo/*.yaml; any field can be overridden as key=value)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from grm_jax.synthetic import TaskConfig

# Prompt templates (configs/prompts/) of the GRM, the LLM-as-judge baseline and the meta RM.
GRM_TEMPLATE = "grm_compact"
JUDGE_TEMPLATE = "judge_compact"
META_TEMPLATE = "meta_rm"
# Where the meta RM's decoder starts: the pretrained LM or the trained GRM (`meta_init`).
META_INITS = ("pretrained", "grm")
# How the meta RM's class-balanced batches are drawn (`meta_batches`): one at a time, at random, or
# rows of like length together (configs/demo/EXPERIMENTS.md row X).
META_BATCHES = ("random", "by_length")


@dataclasses.dataclass
class DemoConfig:
    """Settings of `grm-jax demo` (configs/demo/*.yaml; any field can be overridden as key=value)."""

    out: Optional[str] = None          # run folder (default: runs/demo-TIME)
    seed: int = 0
    # task and corpus
    train_items: int = 1500
    eval_items: int = 500
    val_items: int = 0                 # validation items: greedy accuracy per GRM stage, for searches
    ops: str = "+-*"                   # operations of the arithmetic queries
    max_operand: int = 5               # operands 0..max_operand: 108 distinct queries
    teacher_error: float = 0.25        # teacher GRM replies built on a miscomputed result
    misconceived: float = 0.5          # queries on which the teacher holds one fixed wrong result
    misconception_rate: float = 0.6    # replies to those queries built on that wrong result
    qa_error: float = 0.2              # demonstrator answers that are wrong
    qa_repeats: int = 4                # plain Q/A rows per query (every query)
    plus_one_repeats: int = 1          # Q/A rows under the "add one" system prompt, per query
    grm_shuffles: int = 2              # teacher GRM trajectories per train item
    judge_shuffles: int = 1            # teacher LLM-as-judge trajectories per train item
    # tokenizer and model (Qwen2 family)
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_size: int = 512
    # pretraining
    pretrain_steps: int = 550
    batch_size: int = 32
    pretrain_lr: float = 3e-3
    # rejective fine-tuning
    rft_items: int = 1500             # the first rft_items train items (all of them by default)
    n_rft: int = 3
    rft_temperature: float = 1.0
    rft_steps: int = 80
    rft_lr: float = 5e-4
    # rule-based GRPO
    grpo_steps: int = 120
    grpo_prompts: int = 16
    group_size: int = 8
    grpo_lr: float = 1.5e-4
    grpo_beta: float = 0.08
    grpo_mixed_only: bool = True       # GRPO only on the RFT items whose N_RFT samples disagreed
    # meta RM (trajectories: the non-hinted RFT samples + meta_samples per item from the GRPO model)
    meta_items: int = 300
    meta_samples: int = 3
    meta_rft_items: int = 400          # the RFT samples of the first meta_rft_items RFT items
    meta_steps: int = 600
    meta_lr: float = 3e-4
    meta_init: str = "pretrained"      # the meta RM's decoder starts from: pretrained (the LM) | grm
    meta_mixed_only: bool = False      # train only on items whose samples disagree (right and wrong ones)
    meta_batches: str = "random"       # the meta RM's balanced batches: random | by_length (rows of like length)
    # scalar Bradley-Terry RM baseline
    scalar_steps: int = 150
    scalar_lr: float = 1e-3
    # evaluation
    k: int = 16
    temperature: float = 0.5
    max_new_tokens: int = 64
    judge_batch: int = 256
    # endogenous reward
    endo_steps: int = 30
    endo_prompts: int = 16
    endo_group_size: int = 4
    endo_lr: float = 1e-4
    endo_beta: float = 0.01
    endo_samples: int = 8

    def __post_init__(self):
        from grm_jax.config import validate

        validate(self)
        if self.k & (self.k - 1):
            raise ValueError(f"k must be a power of two, got {self.k}")

    @property
    def task(self) -> TaskConfig:
        return TaskConfig(max_operand=self.max_operand, ops=tuple(self.ops), teacher_error=self.teacher_error,
                          misconceived=self.misconceived, misconception_rate=self.misconception_rate)
