"""`grm-jax grpo`: the GRPO run — prompts, rewards, sampling, updates, checkpoints, metrics."""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from grm_jax.data.chat import ChatFormatter, PromptError
from grm_jax.data.preference import BadRow, DataError, check_prompt, read_row_subset
from grm_jax.train.grpo import (GRPOConfig, build_batch, build_shared_batch, grpo_loss_fn, grpo_normalizer,
                                policy_logprobs)
from grm_jax.train.rl import group_advantages


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    row: int
    ids: list
    answer: str | None = None
    rewards: tuple | None = None      # grm: ground truth of the shown responses' original order
    perm: tuple | None = None         # grm: the shuffle the prompt shows


def load_prompts(cfg: GRPOConfig, formatter: ChatFormatter, log=print, select=None) -> list[RLPrompt]:
    """The run's prompts; bad rows are reported by row number and skipped. Only rows for which
    `select(row)` holds (this process's data shards) are rendered, tokenized and checked."""
    from grm_jax.data.grm_items import read_items

    select = select or (lambda row: True)
    prompts, bad = [], {}
    if cfg.reward == "grm":
        from grm_jax.eval.judge import FORMATS
        from grm_jax.rewards.grm import load_template, render

        fmt = FORMATS[cfg.grm_format]
        template = load_template(cfg.grm_template or fmt.template)
        items, bad, _ = read_items(cfg.data, keep=select)
        for item in items:
            if item.rewards is None:
                bad[item.row] = f"{cfg.data}: row {item.row}: the grm reward needs 'rewards'"
                continue
            # The shuffle shown is seeded by the item's row (and RM-Bench style pair): the same
            # whichever process reads it.
            key = [cfg.seed, item.row - 1] + ([3 * item.pair[0] + item.pair[1]] if item.pair else [])
            perm = np.random.default_rng(key).permutation(len(item.responses))
            text = render(template, item.prompt, [item.responses[p] for p in perm])
            try:
                ids = formatter.prompt_ids(text)
            except PromptError as e:
                bad[item.row] = f"{cfg.data}: row {item.row}: {e}"
                continue
            prompts.append(RLPrompt(item.row, ids, rewards=item.rewards, perm=tuple(int(p) for p in perm)))
    else:
        for i, row in read_row_subset(cfg.data, select):
            prompt = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
            why = "field 'prompt' (or 'messages') is missing" if prompt is None else check_prompt(prompt)
            why = row.error if isinstance(row, BadRow) else why
            if why is None and cfg.reward == "math" and row.get("answer") is None:
                why = "field 'answer' is missing (the math reward needs it)"
            if why is not None:
                bad[i] = f"{cfg.data}: row {i}: {why}"
                continue
            try:
                ids = formatter.prompt_ids(prompt)
            except PromptError as e:
                bad[i] = f"{cfg.data}: row {i}: {e}"
                continue
            prompts.append(RLPrompt(i, ids, answer=None if row.get("answer") is None else str(row["answer"])))
    kept = []
    for p in prompts:
        if len(p.ids) > cfg.max_prompt_length:
            bad[p.row] = f"{cfg.data}: row {p.row}: prompt has {len(p.ids)} tokens > max_prompt_length"
        else:
            kept.append(p)
    for i in sorted(bad)[:20]:
        log(f"bad row: {bad[i]}")
    if not kept:
        raise DataError(f"{cfg.data}: no usable prompts ({len(bad)} bad rows)")
    return kept


def make_reward_fn(cfg: GRPOConfig, tokenizer, model_cfg, reward_params, mesh):
    """fn(prompts, samples, batch) -> rewards [P * G] (numpy) of this process's rows.

    Rule rewards parse this process's own decoded samples; the endogenous reward runs on the
    devices over the global batch (prompt + response rows, `build_batch`) and each process reads
    back its own rows.
    """
    from grm_jax.eval.judge import FORMATS
    from grm_jax.rewards.rules import grm_rule_reward, math_answer_reward, token_rate_reward

    G = cfg.group_size

    def texts(samples):
        return [tokenizer.decode(samples.body(r), skip_special_tokens=True) for r in range(len(samples.lengths))]

    if cfg.reward == "math":
        return lambda prompts, s, _: np.asarray([math_answer_reward(t, prompts[r // G].answer)
                                                 for r, t in enumerate(texts(s))], np.float32)
    if cfg.reward == "grm":
        fmt = FORMATS[cfg.grm_format]
        return lambda prompts, s, _: np.asarray([
            grm_rule_reward(t, prompts[r // G].rewards, prompts[r // G].perm, fmt, truncated=not s.stopped[r])
            for r, t in enumerate(texts(s))], np.float32)
    if cfg.reward == "token_rate":
        return lambda prompts, s, _: np.asarray([token_rate_reward(s.tokens[r, :int(s.lengths[r])], cfg.reward_target)
                                                 for r in range(len(s.lengths))], np.float32)

    from grm_jax import distributed
    from grm_jax.sampling import bucket

    fn = endogenous_reward_program(model_cfg, cfg, mesh)

    def endogenous(prompts, s, batch):
        window = min(bucket(distributed.global_max(int(s.lengths.max()))), batch["tokens"].shape[1])
        out = fn(reward_params, batch["tokens"], batch["positions"], batch["mask"], window)
        return distributed.to_local(out)[:len(s.lengths)].astype(np.float32)
    return endogenous


def endogenous_reward_program(model_cfg, cfg: GRPOConfig, mesh):
    """jitted fn(params, tokens, positions, mask, window) -> the sequence reward of each row,
    over `optim.grad_accum` microbatches; `window` (static) bounds the response length."""
    from grm_jax.rewards.endogenous import endogenous_rewards

    @functools.partial(jax.jit, static_argnums=4)
    def fn(params, tokens, positions, mask, window):
        return in_microbatches(lambda p, *xs: endogenous_rewards(p, model_cfg, *xs, chunk=cfg.chunk, window=window,
                                                                 mesh=mesh, unrolled=cfg.unroll_layers)["sum"],
                               cfg.optim.grad_accum)(params, tokens, positions, mask)
    return fn


REFERENCE_INPUTS = ("tokens", "positions")
SHARED_REFERENCE_INPUTS = ("prompt_tokens", "prompt_positions", "tokens", "positions")


def reference_program(model_cfg, cfg: GRPOConfig, mesh):
    """jitted fn(params, *batch arrays named by `reference_inputs(cfg)`) -> token log-probs under
    the frozen reference, over `optim.grad_accum` microbatches."""
    names = reference_inputs(cfg)
    no_remat = dataclasses.replace(cfg, remat=False)  # no gradient: nothing to rematerialize
    return jax.jit(in_microbatches(
        lambda p, *xs: policy_logprobs(p, model_cfg, no_remat, dict(zip(names, xs)), mesh), cfg.optim.grad_accum))


def reference_inputs(cfg: GRPOConfig) -> tuple[str, ...]:
    return SHARED_REFERENCE_INPUTS if cfg.shared_prompt else REFERENCE_INPUTS


def update_program(model_cfg, cfg: GRPOConfig, mesh, optimizer):
    """The jitted GRPO update step(state, batch) -> (state, metrics)."""
    from grm_jax.train.state import make_train_step

    return make_train_step(grpo_loss_fn(model_cfg, cfg, mesh), grpo_normalizer, optimizer,
                           grad_accum=cfg.optim.grad_accum)


def in_microbatches(fn, count: int):
    """fn(params, *[R, ...] arrays) -> [R, ...], run over `count` microbatches of rows in turn (a
    `lax.map`), so a forward over the whole GRPO batch holds one microbatch's activations."""
    if count == 1:
        return fn

    from grm_jax.train.state import split_microbatches

    def run(params, *arrays):
        out = jax.lax.map(lambda xs: fn(params, *xs), split_microbatches(arrays, count))
        return out.reshape(-1, *out.shape[2:])
    return run


def rollout_rows(step: int, prompts: list[RLPrompt], samples, rewards, tokenizer, group_size: int) -> list[dict]:
    """rollouts.jsonl rows: one per sample of `prompts` (this process's) at `step` (1-based, as in
    metrics.jsonl), with its prompt's data row, its text and reward, and the shuffle the prompt
    showed (GRM rewards)."""
    rewards, rows = np.asarray(rewards), []  # one device-to-host copy, not one per sample
    for r in range(len(samples.lengths)):
        p = prompts[r // group_size]
        row = {"step": step, "row": p.row, "sample": r % group_size,
               "text": tokenizer.decode(samples.body(r), skip_special_tokens=True), "reward": float(rewards[r]),
               "tokens": int(samples.lengths[r]), "finish": "stop" if samples.stopped[r] else "length"}
        if p.perm is not None:
            row["permutation"] = list(p.perm)
        rows.append(row)
    return rows


def run_grpo(cfg: GRPOConfig, *, progress: bool = True, stop_after: int | None = None, log=print):
    """Trains per `cfg`, resuming from OUT's last checkpoint; writes OUT/final when done."""
    from grm_jax.flops import matmul_peak_flops, peak_flops, train_flops
    from grm_jax import distributed
    from grm_jax.data.pipeline import ShardedStream, shard_of
    from grm_jax.loading import load_any
    from grm_jax.sampling import Temperature, bucket, generate, prompt_bucket
    from grm_jax.sharding import batch_sharding
    from grm_jax.hf import tokenizer_files
    from grm_jax.train.model_checkpoint import save_model
    from grm_jax.train.run_checkpoint import RunCheckpointer, config_json
    from grm_jax.train.loop import open_run, run_loop
    from grm_jax.train.optim import make_optimizer
    from grm_jax.train.state import init_train_state

    out, mesh, model_cfg, params, tok_dir, tokenizer = open_run(cfg.out, cfg.model, cfg.mesh, progress=progress)
    formatter = ChatFormatter(tokenizer, system_prompt=cfg.system_prompt)
    S = cfg.data_shards or jax.process_count()
    owned = set(distributed.owned_shards(S))
    prompts = load_prompts(cfg, formatter, log=log, select=lambda row: shard_of(row, S) in owned)
    stop = formatter.stop_ids()
    pad = tokenizer.pad_token_id or 0

    ref_params = jax.tree.map(jnp.copy, params)  # frozen π_ref: the initial policy
    reward_params, reward_cfg = ref_params, model_cfg
    if cfg.reward == "endogenous" and cfg.reward_model:
        reward_cfg, reward_params, _ = load_any(cfg.reward_model, mesh=mesh, progress=progress)
        if reward_cfg.vocab_size != model_cfg.vocab_size:
            raise ValueError("the endogenous reward model must share the policy's tokenizer")
    reward_fn = make_reward_fn(cfg, tokenizer, reward_cfg, reward_params, mesh)

    optimizer = make_optimizer(dataclasses.replace(cfg.optim, total_steps=cfg.steps))
    state = init_train_state(params, optimizer, cfg.seed)
    update = update_program(model_cfg, cfg, mesh, optimizer)
    ref_logp = reference_program(model_cfg, cfg, mesh)
    peak = peak_flops(jax.devices()[0], len(jax.devices())) or matmul_peak_flops()
    shards = {s: [p for p in prompts if shard_of(p.row, S) == s] for s in owned}
    stream = ShardedStream(shards, cfg.prompts_per_step, S, seed=cfg.seed)
    G = cfg.group_size
    # Each process writes its own samples (only it has their texts).
    rollouts = out / ("rollouts.jsonl" if jax.process_count() == 1 else f"rollouts.{jax.process_index()}.jsonl")

    def put(x):
        rows = x.shape[0] * jax.process_count()
        return distributed.to_global(x, batch_sharding(mesh, (rows,) + x.shape[1:]))

    def step_fn(state, batch_prompts):
        t0 = time.perf_counter()
        ids = [p.ids for p in batch_prompts]
        s = generate(state.params, model_cfg, ids, strategy=Temperature(cfg.temperature),
                     max_new_tokens=cfg.max_new_tokens, stop_tokens=stop, num_samples=G,
                     seed=cfg.seed * 1_000_003 + int(state.step), pad_id=pad, mesh=mesh,
                     layout=cfg.decode_layout)  # unrolled layers: see GRPOConfig.unroll_layers
        t1 = time.perf_counter()

        def rows():  # prompt + response rows (`build_batch`), one T for all processes
            longest = max(len(ids[r // G]) + int(n) for r, n in enumerate(s.lengths))
            return build_batch(ids, s, G, pad, length=bucket(distributed.global_max(longest)))

        if cfg.shared_prompt:  # one Tp and one N for all processes
            batch = build_shared_batch(ids, s, G, pad,
                                       prompt_length=prompt_bucket(distributed.global_max(max(map(len, ids)))),
                                       length=bucket(distributed.global_max(max(1, int(s.lengths.max())))))
            real = (batch["positions"] >= 0).sum() + (batch["prompt_positions"] >= 0).sum()
        else:
            batch = rows()
            real = (batch["positions"] >= 0).sum()
        n_tokens = int(distributed.allgather(real).sum())
        batch = {k: put(v) for k, v in batch.items()}
        # The endogenous reward's program reads prompt + response rows.
        reward_batch = {k: put(v) for k, v in rows().items()} if cfg.shared_prompt and cfg.reward == "endogenous" \
            else batch
        rewards = reward_fn(batch_prompts, s, reward_batch)
        if cfg.rollouts:
            with rollouts.open("a") as f:
                f.writelines(json.dumps(row) + "\n" for row in
                             rollout_rows(int(state.step) + 1, batch_prompts, s, rewards, tokenizer, G))
        batch["adv"] = put(np.asarray(group_advantages(jnp.asarray(rewards), G)))
        t2 = time.perf_counter()
        batch["ref_logp"] = ref_logp(ref_params, *(batch[k] for k in reference_inputs(cfg)))
        jax.block_until_ready(batch["ref_logp"])
        t3 = time.perf_counter()
        for _ in range(cfg.inner_iters):
            state, m = update(state, batch)
        m = jax.device_get(m)
        t4 = time.perf_counter()
        R, T = batch["tokens"].shape
        flops = train_flops(model_cfg, R, T) * cfg.inner_iters
        if cfg.shared_prompt:  # the prompts' forward and backward (their keys and values read by every response)
            flops += train_flops(model_cfg, *batch["prompt_tokens"].shape) * cfg.inner_iters
        # Rewards, lengths and stops of the whole global batch, in process order.
        rewards, lengths, stopped = (distributed.allgather(x).reshape(-1) for x in
                                     (rewards, s.lengths.astype(np.float32), s.stopped))
        metrics = {k: float(v) for k, v in m.items()}
        metrics.update({
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "accuracy": float((rewards > 0).mean()), "response_length": float(lengths.mean()),
            "stopped_fraction": float(stopped.mean()), "sampling_s": t1 - t0, "reward_s": t2 - t1,
            "reference_s": t3 - t2, "update_s": t4 - t3,
            "tokens_per_s": n_tokens / (t4 - t0),
            "update_mfu": flops / (t4 - t3) / peak})
        return state, metrics

    checkpointer = RunCheckpointer(out / "checkpoints", keep=cfg.keep)
    state, history, status = run_loop(
        step_fn, state, stream, checkpointer=checkpointer, run_config=config_json(cfg),
        total_steps=cfg.steps, save_every=cfg.save_every, run_dir=out, data_state=stream.state,
        restore_data=stream.restore, stop_after=stop_after, progress=progress, log=log,
        step_files=(rollouts,) if cfg.rollouts else ())
    checkpointer.close()
    summary = {"status": status, "steps": int(state.step), "prompts": len(prompts),
               "update_mfu_peak": "device peak" if peak_flops(jax.devices()[0]) else
               f"measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s", "last": history[-1] if history else None}
    if status == "done":
        save_model(out / "final", state.params, model_cfg,
                   tokenizer_files=tokenizer_files(tok_dir))
        summary["final"] = str(out / "final")
    return summary, history
