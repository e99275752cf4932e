"""Stage `grpo`: rule-based online RL of the RFT model (PAPERS.md A, SPCT stage 2): GRPO with the
Eq. 10 reward (+1 / -1) and a k3 KL penalty to the RFT model, on the train items."""

from __future__ import annotations

from pathlib import Path


def run_grpo(run, data, rft_model: Path) -> Path:
    """Returns the GRPO model's folder (the final GRM)."""
    c = run.cfg
    return run.grpo("grpo", rft_model, data.train_path, reward="grm", steps=c.grpo_steps, prompts=c.grpo_prompts,
                    group_size=c.group_size, lr=c.grpo_lr, beta=c.grpo_beta, max_new_tokens=c.max_new_tokens)
