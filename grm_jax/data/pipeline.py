"""Training data: rows read through `datasets`, encoded once, then fed by a grain pipeline that
shuffles per epoch, splits by JAX process and pads each batch to a length bucket. The iterator's
state is a small dict saved in the run checkpoint, so a resumed run sees exactly the batches an
uninterrupted one would have.

SFT rows: {"messages": [..., {"role": "assistant", "content": ...}]} (the last turn is the
response) or {"prompt": ..., "response": ...}. The loss covers the response tokens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from grm_jax.data.chat import ChatFormatter, Encoded, PromptError
from grm_jax.data.preference import BadRow, DataError, check_prompt, read_row_subset, read_rows
from grm_jax.sampling import bucket


def _sft_pair(row: dict):
    if isinstance(row, BadRow):
        raise PromptError(row.error)
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or check_prompt(messages) is not None:
            raise PromptError("field 'messages' must be a list of {role, content} messages")
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise PromptError("field 'messages' must end with an assistant turn after the prompt")
        return messages[:-1], messages[-1]["content"]
    if row.get("prompt") is None or not isinstance(row.get("response"), str):
        raise PromptError("needs 'messages' or 'prompt' + 'response' (a string)")
    if (why := check_prompt(row["prompt"])) is not None:
        raise PromptError(f"field 'prompt' {why}")
    return row["prompt"], row["response"]


def read_sft(path: str | Path, formatter: ChatFormatter, max_length: int, *,
             select: Callable[[int], bool] | None = None):
    """([(row, encoded example)], {row: message} for bad rows, number truncated).

    Only rows for which `select(row)` holds are validated and tokenized (a process's shards).
    """
    numbered = list(enumerate(read_rows(path), 1)) if select is None else read_row_subset(path, select)
    if not numbered:
        raise DataError(f"{path}: no rows" + ("" if select is None else " in this process's data shards"))
    examples, bad, truncated = [], {}, 0
    for i, row in numbered:
        try:
            prompt, response = _sft_pair(row)
            e = formatter.encode(prompt, response, max_length)
        except PromptError as err:
            bad[i] = f"{path}: row {i}: {err}"
            continue
        truncated += e.truncated
        examples.append((i, e))
    return examples, bad, truncated


def collate(examples: Sequence[Encoded], pad_id: int = 0, length: int | None = None,
            rows: int | None = None) -> dict:
    """Right-padded arrays: tokens, positions (-1 at padding) and loss_mask (1 at the response);
    T is a length bucket (or `length`), and `rows` >= len(examples) adds all-padding rows."""
    T = length or bucket(max(e.end for e in examples))
    B = rows or len(examples)
    tokens = np.full((B, T), pad_id, np.int32)
    positions = np.full((B, T), -1, np.int32)
    loss_mask = np.zeros((B, T), np.int32)
    for r, e in enumerate(examples):
        tokens[r, :e.end] = e.ids
        positions[r, :e.end] = np.arange(e.end)
        loss_mask[r, e.start:e.end] = 1
    return {"tokens": tokens, "positions": positions, "loss_mask": loss_mask}


class BatchStream:
    """Endless, per-epoch-shuffled batches of this process's share of `examples`.

    `state()` / `restore(state)` capture the position exactly (a JSON-able dict).
    """

    def __init__(self, examples: Sequence, batch_size: int, *, seed: int = 0, pad_id: int = 0,
                 process_index: int = 0, process_count: int = 1, collate_fn=None):
        import grain

        share = list(examples)[process_index::process_count]
        if len(share) < batch_size:
            raise DataError(f"{len(share)} examples on process {process_index} cannot fill a batch of "
                            f"{batch_size}")
        fn = collate_fn or (lambda xs: collate(xs, pad_id))
        ds = grain.MapDataset.source(share).shuffle(seed=seed).repeat()
        self._iter = iter(ds.batch(batch_size, drop_remainder=True, batch_fn=fn).to_iter_dataset())

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._iter)

    def state(self) -> dict:
        return dict(self._iter.get_state())

    def restore(self, state: dict) -> None:
        self._iter.set_state(state)


def shard_of(row: int, num_shards: int) -> int:
    """The data shard of a (1-based) row number."""
    return (row - 1) % num_shards


def pad_length(batch: dict, length: int, pad_id: int = 0) -> dict:
    """A collated batch right-padded to `length` positions (padding: pad id, position -1, 0)."""
    extra = length - batch["tokens"].shape[1]
    if extra < 0:
        raise ValueError(f"batch of length {batch['tokens'].shape[1]} is longer than {length}")
    fill = {"tokens": pad_id, "positions": -1}
    return {k: np.pad(v, ((0, 0), (0, extra)), constant_values=fill.get(k, 0)) for k, v in batch.items()}


class ShardedStream:
    """Lockstep batches drawn from `num_shards` data shards, of which this process owns some.

    Shard s holds the rows with (row - 1) mod num_shards == s. Each step takes
    batch_size / num_shards items from every shard, each shard through its own per-epoch-shuffled
    grain pipeline (seed + s); the global batch is the concatenation in shard order and a process
    gets the draws of the shards it owns (a contiguous block, `distributed.owned_shards`). So the
    batches depend on num_shards, not on the number of processes sharing them: a one-process run
    with num_shards = 2 sees exactly the global batches of a two-process run. With one shard it is
    BatchStream over all items.

    `shards` maps each owned shard to its items; `collate_fn` turns this process's items into
    arrays. All shards advance together, so one iterator state (saved by process 0) restores all.
    """

    def __init__(self, shards: dict[int, Sequence], batch_size: int, num_shards: int, *,
                 seed: int = 0, collate_fn: Callable = list):
        if batch_size % num_shards:
            raise DataError(f"a batch of {batch_size} does not split over {num_shards} data shards")
        per = batch_size // num_shards
        self._collate = collate_fn
        self._streams = []
        for s in sorted(shards):
            if len(shards[s]) < per:
                raise DataError(f"data shard {s} of {num_shards} has {len(shards[s])} usable examples, "
                                f"fewer than its {per} per batch")
            self._streams.append(BatchStream(shards[s], per, seed=seed + s, collate_fn=list))

    def __iter__(self):
        return self

    def __next__(self):
        return self._collate([x for stream in self._streams for x in next(stream)])

    def state(self) -> dict:
        states = [stream.state() for stream in self._streams]
        if any(st != states[0] for st in states):
            raise RuntimeError(f"data shards out of step: {states}")
        return states[0]

    def restore(self, state: dict) -> None:
        for stream in self._streams:
            stream.restore(state)
