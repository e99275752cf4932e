"""Jitted sampling: one prefill over left-padded prompts, then a `lax.while_loop` decode.

Everything between the prompt tokens going in and the sampled tokens coming out is one compiled
function: prefill writes the prompts into an explicit KV cache, the cache is broadcast to the
`num_samples` rows of each prompt, and the loop samples a token per row and runs the decoder on
it until every row has hit a stop token or `max_new_tokens`.

The returned log-prob of each token is under the model's own, untruncated distribution
(log_softmax of the logits, temperature 1), whatever strategy picked it: exactly what the
trainer recomputes with `grm_jax.models.logprobs.token_logprobs`, so GRPO's old log-probs can
come from the sampler.

Prompt lengths (`prompt_bucket`) and batch sizes are rounded up to buckets, so calls with
varying prompts reuse a handful of compiled programs.

By default the layers run unrolled on per-layer weights, split from the stacked params once per
call (outside the loop): on CPU this halved the decode step, because XLA copied every layer's
weights out of the stack inside the scan on every step. The split costs one extra copy of the
layer weights while sampling; `unroll_layers=False` keeps the scan and no copy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from grm_jax import distributed
from grm_jax.models.config import ModelConfig
from grm_jax.models.decoder import (Decoder, abstract_params, cache_logical_names, init_cache, lm_head_logits,
                                    positions_from_mask, repeat_cache, unstack_layers)
from grm_jax.sharding import DECODE_LAYOUTS, _is_names, batch_sharding, constrain, decode_mesh, tree_shardings

_NEG = -1e30


def categorical(rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
    """A sample from softmax(logits) per row [B], by inverting the row's cumulative distribution
    at one uniform draw (`jax.random.categorical` draws a Gumbel variate per vocabulary entry:
    on CPU that cost 12% of a decode step of the demo's sampler). A token of probability 0 (a
    logit of -inf, or far below the row's largest) is never picked: the draw lands strictly
    above the mass before it."""
    logits_BV = logits_BV.astype(jnp.float32)
    weights_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True))
    cdf_BV = jnp.cumsum(weights_BV, axis=-1)
    u_B1 = 1.0 - jax.random.uniform(rng, (logits_BV.shape[0], 1), jnp.float32)  # in (0, 1]
    return jnp.sum(cdf_BV < u_B1 * cdf_BV[:, -1:], axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The most likely token."""

    def choose(self, rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
        del rng
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """A sample from softmax(logits / temperature)."""

    temperature: float = 1.0

    def __post_init__(self):
        _check_temperature(self.temperature)

    def choose(self, rng, logits_BV):
        return categorical(rng, logits_BV / self.temperature)


@dataclasses.dataclass(frozen=True)
class TopK:
    """A sample from the `k` most likely tokens, at `temperature`."""

    k: int
    temperature: float = 1.0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"top-k needs k >= 1, got {self.k}")
        _check_temperature(self.temperature)

    def choose(self, rng, logits_BV):
        top_BK, index_BK = jax.lax.top_k(logits_BV, min(self.k, logits_BV.shape[-1]))
        pick_B = categorical(rng, top_BK / self.temperature)
        return jnp.take_along_axis(index_BK, pick_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Nucleus sampling: a sample from the smallest set of most likely tokens whose probability
    (at `temperature`) reaches `p`."""

    p: float
    temperature: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"top-p needs 0 < p <= 1, got {self.p}")
        _check_temperature(self.temperature)

    def choose(self, rng, logits_BV):
        sorted_BV, index_BV = jax.lax.top_k(logits_BV, logits_BV.shape[-1])
        sorted_BV = sorted_BV / self.temperature
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of strictly likelier tokens
        kept_BV = jnp.where(before_BV < self.p, sorted_BV, _NEG)
        pick_B = categorical(rng, kept_BV)
        return jnp.take_along_axis(index_BV, pick_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


Strategy = Greedy | Temperature | TopK | TopP


def _check_temperature(t: float):
    if not t > 0:
        raise ValueError(f"temperature must be > 0 (use Greedy for argmax), got {t}")


def strategy_from_args(temperature: float = 0.0, top_k: int | None = None,
                       top_p: float | None = None) -> Strategy:
    """The strategy for the usual knobs: temperature 0 is greedy; top-k and top-p are exclusive."""
    if top_k is not None and top_p is not None:
        raise ValueError("choose one of top-k and top-p")
    if temperature == 0.0:
        if top_k is not None or top_p is not None:
            raise ValueError("top-k / top-p need a temperature > 0")
        return Greedy()
    if top_k is not None:
        return TopK(top_k, temperature)
    if top_p is not None:
        return TopP(top_p, temperature)
    return Temperature(temperature)


class Samples(NamedTuple):
    """Host arrays; row i * num_samples + j is sample j of prompt i.

    tokens: [R, max_new_tokens] int32, the pad id after each row's end.
    lengths: [R] tokens generated, counting the stop token when one was hit.
    logprobs: [R, max_new_tokens] float32 log-prob of each token under the model (0 after the end).
    stopped: [R] bool, True when the row ended on a stop token (False: hit max_new_tokens).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    stopped: np.ndarray

    def body(self, row: int) -> np.ndarray:
        """Row `row`'s generated tokens without its stop token (the text to decode)."""
        n = int(self.lengths[row])
        return self.tokens[row, :n - 1] if self.stopped[row] else self.tokens[row, :n]


def prompt_bucket(n: int) -> int:
    """The length `generate` pads prompts of up to n tokens to: `bucket` with powers of two only
    up to 64, then four buckets per doubling (70 tokens pad to 80, not 128: on short prompts the
    prefill is most of a call, and it took 1.27 s for 256 GRM prompts of 56–70 tokens at 128
    against 0.71 s at 70, the demo's model on 2 CPU cores)."""
    return bucket(n, powers_up_to=64)


def bucket(n: int, minimum: int = 16, powers_up_to: int = 128, per_doubling: int = 4) -> int:
    """n rounded up: powers of two from `minimum` up to `powers_up_to`, then `per_doubling` evenly
    spaced buckets per doubling (128 < n <= 256 rounds to a multiple of 32, up to 512 of 64, ...),
    so padding stays under 1/per_doubling of the length while the number of buckets (compiled
    programs) grows with log n."""
    if n <= powers_up_to:
        b = minimum
        while b < n:
            b *= 2
        return b
    step = max(1, (1 << (n - 1).bit_length()) // 2 // per_doubling)
    return -(-n // step) * step


class LoopState(NamedTuple):
    """The decode loop's carry: `step` tokens written so far, the last token of each row, the
    KV cache, which rows are done, their lengths, which stopped on a stop token, the output
    buffers (tokens, log-probs), the RNG and each row's next position."""

    step: jax.Array
    token_R: jax.Array
    cache: dict
    done_R: jax.Array
    length_R: jax.Array
    stopped_R: jax.Array
    out: tuple
    rng: jax.Array
    next_pos_R: jax.Array


def sampling_mesh(config: ModelConfig, mesh: Mesh | None, layout: str = "tensor") -> Mesh | None:
    """The mesh the sampler runs on (`grm_jax.sharding.decode_mesh`): with the "tensor" layout,
    `mesh`'s devices as a tensor-parallel view, so a decode step reads each device's own slice of
    the weights instead of all-gathering them over fsdp."""
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"decode layout must be one of {DECODE_LAYOUTS}, got {layout!r}")
    if mesh is None:
        return None
    return decode_mesh(mesh, config.num_heads, config.num_kv_heads, layout)


def reshard_params(params, config: ModelConfig, mesh: Mesh | None):
    """Inside a jitted function: the (stacked) params laid out for `mesh` by the logical rules
    (a no-op when they already are)."""
    if mesh is None:
        return params
    abstract, names = abstract_params(config)
    return jax.lax.with_sharding_constraint(params, tree_shardings(names, abstract, mesh))


def sampler_parts(config: ModelConfig, mesh: Mesh | None, strategy: Strategy, max_new: int,
                  num_samples: int, stop: tuple[int, ...], pad_id: int, unroll: bool, layout: str = "tensor"):
    """The sampler as pure functions: `prefill(params, prompt_BT, mask_BT, rng) -> LoopState`
    (the prompts into the cache, the first token picked), `step(params, state) -> state` (one
    decode step: the while loop's body), `cond(state)` and `finish(state)` (the outputs). With
    `unroll`, `params` are per-layer (`unstack_layers`). Split apart so `grm-jax plan` can
    compile and cost the decode step on its own.

    Prefill and decode run on `sampling_mesh(config, mesh, layout)` and expect `params` laid out
    for it; prompts come in and outputs go out split by rows over `mesh`'s batch axes."""
    run_mesh = sampling_mesh(config, mesh, layout)
    model = Decoder(config, run_mesh, unrolled=unroll)

    def constrain_cache(cache):
        names = cache_logical_names(cache)
        return jax.tree.map(lambda n, a: constrain(a, n, run_mesh), names, cache, is_leaf=_is_names)

    stop_S = jnp.asarray(stop if stop else (-1,), jnp.int32)

    def pick(step, logits_RV, done_R, out, rng):
        tokens_RN, logp_RN = out
        rng, sub = jax.random.split(rng)
        token_R = strategy.choose(sub, logits_RV)
        logp_R = jnp.take_along_axis(jax.nn.log_softmax(logits_RV, axis=-1), token_R[:, None], axis=-1)[:, 0]
        token_R = jnp.where(done_R, pad_id, token_R)
        logp_R = jnp.where(done_R, 0.0, logp_R)
        tokens_RN = jax.lax.dynamic_update_slice_in_dim(tokens_RN, token_R[:, None], step, 1)
        logp_RN = jax.lax.dynamic_update_slice_in_dim(logp_RN, logp_R[:, None], step, 1)
        stops_R = jnp.isin(token_R, stop_S) & ~done_R
        return token_R, (tokens_RN, logp_RN), done_R | stops_R, stops_R, rng

    def prefill(params, prompt_BT, mask_BT, rng) -> LoopState:
        B, T = prompt_BT.shape
        R = B * num_samples
        prompt_BT, mask_BT = (constrain(a, ("batch", None), run_mesh) for a in (prompt_BT, mask_BT))
        positions_BT = positions_from_mask(mask_BT)
        # Unrolled layers keep one cache buffer per layer: a decode step touches only its own.
        cache = constrain_cache(init_cache(config, B, T + max_new, per_layer=unroll))
        h_BTD, cache = model.apply({"params": params}, prompt_BT, positions_BT, cache, hidden_only=True,
                                   fresh_cache=True)
        # Rows are left-padded, so every prompt ends at slot T - 1: only its logits are needed.
        logits_B1V = lm_head_logits(params, config, h_BTD[:, -1:])
        logits_RV = jnp.repeat(logits_B1V[:, 0], num_samples, axis=0)
        next_pos_R = jnp.repeat(positions_BT[:, -1] + 1, num_samples, axis=0)
        if num_samples > 1:
            cache = constrain_cache(repeat_cache(cache, num_samples))
        out = (jnp.full((R, max_new), pad_id, jnp.int32), jnp.zeros((R, max_new), jnp.float32))
        done_R = jnp.zeros((R,), bool)
        token_R, out, new_done, _, rng = pick(0, logits_RV, done_R, out, rng)
        return LoopState(jnp.ones((), jnp.int32), token_R, cache, new_done, jnp.ones((R,), jnp.int32),
                         new_done, out, rng, next_pos_R)

    def cond(state: LoopState):
        return (state.step < max_new) & ~jnp.all(state.done_R)

    def step(params, state: LoopState, read_slots: int | None = None) -> LoopState:
        pos_R = state.next_pos_R + state.step - 1
        logits_R1V, cache = model.apply({"params": params}, state.token_R[:, None], pos_R[:, None], state.cache,
                                        read_slots=read_slots)
        token_R, out, new_done, stops_R, rng = pick(state.step, logits_R1V[:, 0], state.done_R, state.out, state.rng)
        length_R = state.length_R + (~state.done_R).astype(jnp.int32)
        return LoopState(state.step + 1, token_R, cache, new_done, length_R, state.stopped_R | stops_R, out, rng,
                         state.next_pos_R)

    def finish(state: LoopState):
        tokens_RN, logp_RN = state.out
        # Rows stay split over the batch axes, so each process can read back its own rows.
        return (constrain(tokens_RN, ("batch", None), mesh), constrain(state.length_R, ("batch",), mesh),
                constrain(logp_RN, ("batch", None), mesh), constrain(state.stopped_R, ("batch",), mesh))

    return prefill, cond, step, finish


def default_phases(max_new: int) -> int:
    """Decode phases by default: one per 256 new tokens, at most 4 (each is a loop of its own in
    the program, so more phases mean a larger program for a smaller saving)."""
    return max(1, min(4, max_new // 256))


def phase_windows(prompt_len: int, max_new: int, phases: int) -> list[int]:
    """The cache slots each decode phase attends over, ascending; the last is the whole cache.

    Decode step s (1 <= s < max_new) writes slot prompt_len + s - 1 and attends over slots
    [0, prompt_len + s), so a phase of window W runs the steps with s <= W - prompt_len. Windows
    split the new tokens evenly, rounded up to 128 slots (the TPU's tile)."""
    total = prompt_len + max_new
    if phases < 1:
        raise ValueError(f"decode phases must be >= 1, got {phases}")
    windows = []
    for j in range(1, phases + 1):
        w = min(total, -(-(prompt_len + -(-j * max_new // phases)) // 128) * 128)
        if not windows or w > windows[-1]:
            windows.append(w)
    windows[-1] = total
    return windows


def phase_steps(prompt_len: int, max_new: int, windows: Sequence[int]) -> list[int]:
    """How many decode steps each phase runs when no row stops early."""
    out, done = [], 0
    for w in windows:
        last = min(max_new - 1, w - prompt_len)
        out.append(max(0, last - done))
        done = max(done, last)
    return out


def sampler_fn(config: ModelConfig, mesh: Mesh | None, strategy: Strategy, max_new: int,
               num_samples: int, stop: tuple[int, ...], pad_id: int, unroll: bool, layout: str = "tensor",
               phases: int | None = None):
    """The jitted sampler: fn(params, prompt_BT, mask_BT, rng) -> (tokens, lengths, logprobs, stopped).
    `params` are laid out for `mesh` (the training layout); the sampler reshards them once per call
    to the sampling mesh of `layout`. The decode runs in `phases` loops (default
    `default_phases`), each attending over only the cache slots its steps can have filled
    (`phase_windows`): a step reads the live part of the cache rounded up to its phase's window,
    not the whole buffer."""
    phases = default_phases(max_new) if phases is None else int(phases)
    return _compiled(config, mesh, strategy, int(max_new), int(num_samples), tuple(int(s) for s in stop),
                     int(pad_id), bool(unroll), layout, phases)


@functools.lru_cache(maxsize=64)
def _compiled(config: ModelConfig, mesh: Mesh | None, strategy: Strategy, max_new: int,
              num_samples: int, stop: tuple[int, ...], pad_id: int, unroll: bool, layout: str, phases: int):
    prefill, cond, step, finish = sampler_parts(config, mesh, strategy, max_new, num_samples, stop, pad_id, unroll,
                                                layout)
    run_mesh = sampling_mesh(config, mesh, layout)

    def run(params, prompt_BT, mask_BT, rng):
        if run_mesh is not mesh:
            params = reshard_params(params, config, run_mesh)  # once per call, outside the loop
        if unroll:
            params = unstack_layers(params)  # one copy of the layer weights, outside the loop
        state = prefill(params, prompt_BT, mask_BT, rng)
        T = prompt_BT.shape[1]
        windows = phase_windows(T, max_new, phases)
        for w in windows:
            read = None if w == windows[-1] else w
            state = jax.lax.while_loop(lambda s, w=w: cond(s) & (s.step <= w - T),
                                       lambda s, read=read: step(params, s, read), state)
        return finish(state)

    return jax.jit(run)


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]], *,
             strategy: Strategy = Greedy(), max_new_tokens: int = 128,
             stop_tokens: Sequence[int] = (), num_samples: int = 1, seed: int = 0,
             pad_id: int | None = None, mesh: Mesh | None = None,
             bucket_prompts: bool = True, unroll_layers: bool = True, layout: str = "tensor",
             decode_phases: int | None = None) -> Samples:
    """Samples `num_samples` continuations of each prompt.

    Args:
      params: decoder params (sharded over `mesh` if one is given).
      config: the model's config.
      prompts: token ids per prompt (no padding), each non-empty. In a multi-host run, this
        process's prompts: every process calls `generate` with the same number of prompts, the
        global batch is their concatenation in process order, and each gets its own rows back.
      strategy: Greedy(), Temperature(t), TopK(k, t) or TopP(p, t).
      max_new_tokens: tokens to generate at most per row.
      stop_tokens: ids that end a row (the stop token is kept and counted in its length).
      num_samples: continuations per prompt; they share the prompt's prefill.
      seed: the sampling seed; the same seed, prompts and buckets give the same samples (a
        multi-host run equals a single-host one on the same global batch when each process's
        block needs no padding rows).
      pad_id: id written after a row ends (default: the config's pad id, else 0).
      mesh: device mesh; the batch is sharded over its data and fsdp axes.
      layout: "tensor" (decode on a tensor-parallel view of `mesh`'s devices: the params are
        resharded once per call, and a step reads only each device's slice of the weights) or
        "train" (decode on `mesh` itself: an FSDP mesh then gathers the weights every step);
        see `grm_jax.sharding.decode_mesh`.
      decode_phases: decode loops, each attending over only the cache slots its steps can have
        filled (default: `default_phases(max_new_tokens)`); the samples do not depend on it.
      bucket_prompts: round prompt length and batch size up to buckets (fewer compilations).
      unroll_layers: run the layers unrolled on a per-call copy of the layer weights (faster
        decode on CPU) rather than as a scan over the stacked params (no copy).

    Returns:
      Samples with rows in prompt-major order.
    """
    if not prompts:
        raise ValueError("no prompts to sample from")
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(f"max_new_tokens and num_samples must be >= 1, got {max_new_tokens}, {num_samples}")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty")
    B = len(prompts)
    counts = distributed.allgather([B, max(lengths)])  # [processes, 2]
    if (counts[:, 0] != B).any():
        raise ValueError(f"every process must sample from the same number of prompts; got {counts[:, 0].tolist()}")
    longest = int(counts[:, 1].max())
    T = prompt_bucket(longest) if bucket_prompts else longest
    multiple = math.lcm(distributed.local_batch_multiple(mesh),
                        distributed.local_batch_multiple(sampling_mesh(config, mesh, layout)))
    B_pad = bucket(B, minimum=1) if bucket_prompts else B
    B_pad = -(-B_pad // multiple) * multiple
    if T + max_new_tokens > config.max_position:
        raise ValueError(f"prompt ({longest} tokens, bucket {T}) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's max_position {config.max_position}")
    pad = config.pad_token_id if pad_id is None else pad_id
    pad = 0 if pad is None else pad
    tokens = np.full((B_pad, T), pad, np.int32)
    mask = np.zeros((B_pad, T), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p):] = p
        mask[i, T - len(p):] = 1
    if mesh is not None:
        shape = (B_pad * jax.process_count(), T)
        tokens = distributed.to_global(tokens, batch_sharding(mesh, shape))
        mask = distributed.to_global(mask, batch_sharding(mesh, shape))
    fn = sampler_fn(config, mesh, strategy, max_new_tokens, num_samples, stop_tokens, pad, unroll_layers, layout,
                    decode_phases)
    out = fn(params, tokens, mask, jax.random.key(seed))
    R = B * num_samples
    return Samples(*(distributed.to_local(a)[:R] for a in out))
