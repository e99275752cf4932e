"""GRPO (PAPERS.md part A, stage 2; and part B's RL on an endogenous reward).

One step: take P prompts, sample G responses each from the current policy through the sampler
(the train state's own params; its log-probs are the old log-probs), score them with a pluggable
reward, normalize the rewards within each group, compute the frozen reference's log-probs, then
run `inner_iters` jitted updates of the clipped surrogate with a KL penalty (PAPERS.md: β = 0.08,
k3 estimator, per-sequence token mean then mean over sequences).

Rewards: "grm" (+1/−1 by Eq. 10 on a GRM reply; the prompt is a GRM item rendered with a shuffle
of its responses), "math" (+1/−1 final-answer check against the row's `answer`), "endogenous"
(the endogenous reward R of a frozen model, by default the initial policy: part B's Q3), and
"token_rate" (a toy: the fraction of response tokens with ids below `reward_target`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from omegaconf import MISSING

from grm_jax.config import validate
from grm_jax.models.config import ModelConfig
from grm_jax.models.logprobs import shared_prompt_logprobs, token_logprobs
from grm_jax.train.optim import OptimConfig
from grm_jax.train.rl import clipped_surrogate, kl_estimate

REWARD_KINDS = ("grm", "math", "endogenous", "token_rate")


@dataclasses.dataclass
class GRPOConfig:
    """`grm-jax grpo`."""

    model: str = MISSING                 # the policy: HF directory or grm-jax checkpoint
    data: str = MISSING                  # prompts: {prompt|messages, answer} / GRM items / prompts
    out: str = MISSING                   # run directory
    reward: str = "math"                 # grm | math | endogenous | token_rate
    reward_model: Optional[str] = None   # endogenous: the frozen model (default: the initial policy)
    reward_target: int = 0               # token_rate: response tokens with ids below this are rewarded
    grm_format: str = "multi"            # grm: multi | single | judge
    grm_template: Optional[str] = None   # grm: a template replacing the format's default
    steps: int = 100
    prompts_per_step: int = 8
    group_size: int = 4                  # G
    max_new_tokens: int = 256
    max_prompt_length: int = 1024
    temperature: float = 1.0
    # Layers as a Python loop in the update and the reference/reward forwards (faster on CPU). The
    # sampler always decodes unrolled, on per-layer weights and caches: in a layer scan each decode
    # step copies every layer's cache slice out of the stack (on CPU, and in TPU programs).
    unroll_layers: bool = False
    decode_layout: str = "tensor"        # sampler's layout: tensor (reshard once per step) | train (see sharding.decode_mesh)
    remat: bool = False                  # recompute each layer in the backward pass (long sequences, big models)
    # Run each prompt once per step, not once per sample: its G responses attend to one KV cache
    # of it (`shared_prompt_logprobs`; the same log-probs, about (Tp + G·N) / (G·(Tp + N)) of the
    # tokens). Our extension, for speed; off, every sample is a row prompt + response.
    shared_prompt: bool = False
    data_shards: Optional[int] = None    # prompt shards (default: one per process); see grpo_run
    inner_iters: int = 1
    eps: float = 0.2
    eps_high: Optional[float] = None
    beta: float = 0.08
    kl: str = "k3"
    aggregation: str = "sequence_mean"
    seed: int = 0
    save_every: int = 50
    keep: int = 3
    chunk: int = 512
    system_prompt: Optional[str] = None
    mesh: Optional[str] = None
    rollouts: bool = False               # write every sample, its reward and its step to OUT/rollouts.jsonl
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-6, b2=0.999))

    def __post_init__(self):
        validate(self)
        if self.prompts_per_step * self.group_size % self.optim.grad_accum:
            raise ValueError("prompts_per_step * group_size must split into optim.grad_accum microbatches")
        if self.shared_prompt and self.prompts_per_step % self.optim.grad_accum:
            raise ValueError("with shared_prompt, prompts_per_step must split into optim.grad_accum microbatches")
        if self.shared_prompt and self.aggregation == "sequence_sum":
            raise ValueError("shared_prompt does not support aggregation=sequence_sum (its normalizer is the "
                             "length of a prompt + response row); use sequence_mean or token_mean")


def policy_logprobs(params, config: ModelConfig, cfg: GRPOConfig, batch: dict, mesh: Mesh | None = None):
    """Token log-probs [R, T] of a batch (or microbatch) as `build_batch` or, with
    `cfg.shared_prompt`, `build_shared_batch` lays it out; 0 where the mask is 0 or before."""
    if cfg.shared_prompt:
        return shared_prompt_logprobs(params, config, batch["prompt_tokens"], batch["prompt_positions"],
                                      batch["tokens"], batch["positions"], cfg.group_size, chunk=cfg.chunk,
                                      mesh=mesh, unrolled=cfg.unroll_layers, remat=cfg.remat)
    return token_logprobs(params, config, batch["tokens"], batch["positions"], chunk=cfg.chunk, mesh=mesh,
                          unrolled=cfg.unroll_layers, remat=cfg.remat)


def grpo_loss_fn(config: ModelConfig, cfg: GRPOConfig, mesh: Mesh | None = None):
    """loss(params, microbatch, norm) with norm = {"seqs", "tokens"} of the whole batch."""
    def loss(params, mb, norm):
        logp_BT = policy_logprobs(params, config, cfg, mb, mesh)
        mask = mb["mask"].astype(jnp.float32)
        objective, clipped = clipped_surrogate(logp_BT, mb["old_logp"], mb["adv"], cfg.eps, cfg.eps_high)
        kl_BT = kl_estimate(logp_BT, mb["ref_logp"], cfg.kl)
        x = (objective - cfg.beta * kl_BT) * mask
        length_B = jnp.maximum(mask.sum(axis=1), 1.0)
        if cfg.aggregation == "sequence_mean":
            total = (x.sum(axis=1) / length_B).sum() / norm["seqs"]
        elif cfg.aggregation == "token_mean":
            total = x.sum() / norm["tokens"]
        else:
            total = x.sum() / x.shape[1] / norm["seqs"]
        metrics = {  # each a share of a whole-batch mean, so microbatch sums add up
            "kl": ((kl_BT * mask).sum(axis=1) / length_B).sum() / norm["seqs"],
            "clip_fraction": (clipped * mask).sum() / norm["tokens"],
            "entropy_estimate": -(logp_BT * mask).sum() / norm["tokens"],
            "ratio_mean": (jnp.exp(logp_BT - mb["old_logp"]) * mask).sum() / norm["tokens"],
        }
        return -total, metrics
    return loss


def grpo_normalizer(batch) -> dict:
    mask = batch["mask"].astype(jnp.float32)
    return {"seqs": jnp.asarray(mask.shape[0], jnp.float32), "tokens": jnp.maximum(mask.sum(), 1.0)}


def build_batch(prompts: list[list[int]], samples, group_size: int, pad_id: int = 0,
                length: int | None = None) -> dict:
    """Right-padded prompt + response rows with the response mask and the sampler's log-probs
    aligned to the tokens they score; T is a length bucket of the longest row (or `length`)."""
    from grm_jax.sampling import bucket

    R = len(samples.lengths)
    rows = []
    for r in range(R):
        p = prompts[r // group_size]
        n = int(samples.lengths[r])
        rows.append((p, samples.tokens[r, :n], samples.logprobs[r, :n]))
    T = length or bucket(max(len(p) + len(t) for p, t, _ in rows))
    tokens = np.full((R, T), pad_id, np.int32)
    positions = np.full((R, T), -1, np.int32)
    mask = np.zeros((R, T), np.int32)
    old = np.zeros((R, T), np.float32)
    for r, (p, t, lp) in enumerate(rows):
        L = len(p) + len(t)
        tokens[r, :len(p)] = p
        tokens[r, len(p):L] = t
        positions[r, :L] = np.arange(L)
        mask[r, len(p):L] = 1
        old[r, len(p):L] = lp
    return {"tokens": tokens, "positions": positions, "mask": mask, "old_logp": old}


def build_shared_batch(prompts: list[list[int]], samples, group_size: int, pad_id: int = 0,
                       prompt_length: int | None = None, length: int | None = None) -> dict:
    """The batch of `build_batch` with each prompt once (`GRPOConfig.shared_prompt`): left-padded
    prompts [P, Tp] ("prompt_tokens", "prompt_positions"), and one row per sample of its response
    alone [P·G, N] (right-padded "tokens", positions continuing the prompt's, "mask" 1 at every
    response token, "old_logp"); Tp and N are length buckets of the longest prompt and response (or
    the lengths given). Left-padding keeps each row's cache slots a constant offset from its
    positions, so a sliding window over slots is the window over positions."""
    from grm_jax.sampling import bucket, prompt_bucket

    P, R = len(prompts), len(samples.lengths)
    if R != P * group_size:
        raise ValueError(f"{R} samples are not {group_size} per prompt of {P}")
    Tp = prompt_length or prompt_bucket(max(len(p) for p in prompts))
    N = length or bucket(max(1, int(max(samples.lengths))))
    prompt_tokens = np.full((P, Tp), pad_id, np.int32)
    prompt_positions = np.full((P, Tp), -1, np.int32)
    for i, p in enumerate(prompts):
        prompt_tokens[i, Tp - len(p):] = p
        prompt_positions[i, Tp - len(p):] = np.arange(len(p))
    tokens = np.full((R, N), pad_id, np.int32)
    positions = np.full((R, N), -1, np.int32)
    mask = np.zeros((R, N), np.int32)
    old = np.zeros((R, N), np.float32)
    for r in range(R):
        n, start = int(samples.lengths[r]), len(prompts[r // group_size])
        tokens[r, :n] = samples.tokens[r, :n]
        positions[r, :n] = start + np.arange(n)
        mask[r, :n] = 1
        old[r, :n] = samples.logprobs[r, :n]
    return {"prompt_tokens": prompt_tokens, "prompt_positions": prompt_positions, "tokens": tokens,
            "positions": positions, "mask": mask, "old_logp": old}
