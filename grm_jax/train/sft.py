"""Supervised fine-tuning: next-token loss on response tokens only (cold start, and RFT data).

Batch: "tokens", "positions" [B, T] (negative position = padding) and "loss_mask" [B, T], 1 at
the tokens whose prediction is trained (the response, end-of-turn included). The loss is the
mean negative log-likelihood over all loss tokens of the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
from omegaconf import MISSING
from jax.sharding import Mesh

from grm_jax.config import validate
from grm_jax.models.config import ModelConfig
from grm_jax.models.logprobs import token_logprobs
from grm_jax.train.optim import OptimConfig


def sft_loss_fn(config: ModelConfig, *, chunk: int = 512, mesh: Mesh | None = None, unrolled: bool = False,
                remat: bool = False):
    """loss(params, microbatch, n_tokens) -> (Σ NLL / n_tokens, {"tokens", "nll_sum"})."""
    def loss(params, mb, n_tokens):
        logp_BT = token_logprobs(params, config, mb["tokens"], mb["positions"], chunk=chunk, mesh=mesh,
                                 unrolled=unrolled, remat=remat)
        mask_BT = mb["loss_mask"].astype(jnp.float32)
        nll = -(logp_BT * mask_BT).sum()
        return nll / n_tokens, {"tokens": mask_BT.sum(), "nll_sum": nll}
    return loss


def sft_normalizer(batch) -> jnp.ndarray:
    """The batch's loss-token count (at least 1)."""
    return jnp.maximum(batch["loss_mask"].astype(jnp.float32).sum(), 1.0)


@dataclasses.dataclass
class SFTConfig:
    """`grm-jax sft`: fine-tune on response tokens (cold start, or RFT trajectories)."""

    model: str = MISSING            # HF directory or grm-jax checkpoint
    data: str = MISSING             # JSON/JSONL/Parquet with messages or prompt + response
    out: str = MISSING              # run directory: checkpoints/, metrics.jsonl, final/
    steps: int = 100
    batch_size: int = 8
    max_length: int = 1024
    seed: int = 0
    save_every: int = 50
    keep: int = 3
    chunk: int = 512
    system_prompt: Optional[str] = None
    chat_template: bool = True
    unroll_layers: bool = False     # layers as a Python loop, not a scan (faster on CPU for small models)
    remat: bool = False             # recompute each layer in the backward pass (long sequences, big models)
    data_shards: Optional[int] = None  # row shards, batch_size / data_shards from each (default: one per process)
    mesh: Optional[str] = None
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

    def __post_init__(self):
        validate(self)
        if self.batch_size % self.optim.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must split into optim.grad_accum "
                             f"({self.optim.grad_accum}) microbatches")


def sft_step_program(model_cfg: ModelConfig, cfg: SFTConfig, mesh: Mesh | None, optimizer):
    """The jitted SFT train step(state, batch) -> (state, metrics)."""
    from grm_jax.train.state import make_train_step

    return make_train_step(sft_loss_fn(model_cfg, chunk=cfg.chunk, mesh=mesh, unrolled=cfg.unroll_layers,
                                       remat=cfg.remat), sft_normalizer, optimizer, grad_accum=cfg.optim.grad_accum)


def run_sft(cfg: SFTConfig, *, progress: bool = True, stop_after: int | None = None, log=print):
    """Trains per `cfg`, resuming from the run directory's last checkpoint; at the end writes the
    model as a grm-jax checkpoint in OUT/final. Returns (summary, final train state)."""
    import jax
    from grm_jax.data.chat import ChatFormatter
    from grm_jax import distributed
    from grm_jax.data.pipeline import ShardedStream, collate, pad_length, read_sft, shard_of
    from grm_jax.sampling import bucket
    from grm_jax.sharding import batch_sharding
    from grm_jax.hf import tokenizer_files
    from grm_jax.train.model_checkpoint import save_model
    from grm_jax.train.run_checkpoint import RunCheckpointer, config_json
    from grm_jax.train.loop import open_run, run_loop
    from grm_jax.train.optim import make_optimizer
    from grm_jax.train.state import init_train_state

    out, mesh, model_cfg, params, tok_dir, tokenizer = open_run(cfg.out, cfg.model, cfg.mesh, progress=progress)
    formatter = ChatFormatter(tokenizer, system_prompt=cfg.system_prompt,
                              use_template=None if cfg.chat_template else False)
    S = cfg.data_shards or jax.process_count()
    owned = set(distributed.owned_shards(S))
    examples, bad, truncated = read_sft(cfg.data, formatter, min(cfg.max_length, model_cfg.max_position),
                                        select=lambda row: shard_of(row, S) in owned)
    for message in list(bad.values())[:20]:
        log(f"bad row: {message}")
    pad = tokenizer.pad_token_id or 0
    shards = {s: [e for row, e in examples if shard_of(row, S) == s] for s in owned}
    stream = ShardedStream(shards, cfg.batch_size, S, seed=cfg.seed, collate_fn=lambda xs: collate(xs, pad))
    streams = [stream]
    if jax.process_count() > 1:
        # Every process must pad to the global batch's length bucket. The lengths of all shards'
        # examples are gathered once; a stream over them, in lockstep with the data, gives each
        # step's longest example without a collective (and a host sync) per step.
        lengths = distributed.gather_shard_values({s: [e.end for e in xs] for s, xs in shards.items()}, S)
        streams.append(ShardedStream(lengths, cfg.batch_size, S, seed=cfg.seed, collate_fn=max))
    optimizer = make_optimizer(dataclasses.replace(cfg.optim, total_steps=cfg.steps))  # schedule spans the run
    state = init_train_state(params, optimizer, cfg.seed)
    step_fn = sft_step_program(model_cfg, cfg, mesh, optimizer)

    def batches():
        for b in stream:
            if len(streams) > 1:
                b = pad_length(b, bucket(next(streams[1])), pad)  # the global batch's bucket, as collate picks it
            rows = b["tokens"].shape[0] * jax.process_count()
            yield {k: distributed.to_global(v, batch_sharding(mesh, (rows,) + v.shape[1:])) for k, v in b.items()}

    checkpointer = RunCheckpointer(out / "checkpoints", keep=cfg.keep)
    state, history, status = run_loop(
        step_fn, state, batches(), checkpointer=checkpointer, run_config=config_json(cfg),
        total_steps=cfg.steps, save_every=cfg.save_every, run_dir=out, data_state=stream.state,
        restore_data=lambda state: [x.restore(state) for x in streams], stop_after=stop_after,
        progress=progress, log=log)
    checkpointer.close()
    summary = {"status": status, "steps": int(state.step), "examples": len(examples), "bad_rows": len(bad),
               "truncated": truncated, "last": history[-1] if history else None}
    if status == "done":
        save_model(out / "final", state.params, model_cfg, tokenizer_files=tokenizer_files(tok_dir))
        summary["final"] = str(out / "final")
    return summary, state
