"""Training data: rows read through `datasets`, encoded once, then fed by a grain pipeline that
shuffles per epoch, splits by JAX process and pads each batch to a length bucket. The iterator's
state is a small dict saved in the run checkpoint, so a resumed run sees exactly the batches an
uninterrupted one would have.

SFT rows: {"messages": [..., {"role": "assistant", "content": ...}]} (the last turn is the
response) or {"prompt": ..., "response": ...}. The loss covers the response tokens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from grm_jax.data.chat import ChatFormatter, Encoded, PromptError
from grm_jax.data.preference import DataError, check_prompt, read_rows
from grm_jax.sampling import bucket


def _sft_pair(row: dict):
    messages = row.get("messages")
    if messages is not None:
        if (why := check_prompt(messages)) is not None:
            raise PromptError(f"field 'messages' {why}")
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise PromptError("field 'messages' must end with an assistant turn after the prompt")
        return messages[:-1], messages[-1]["content"]
    if row.get("prompt") is None or not isinstance(row.get("response"), str):
        raise PromptError("needs 'messages' or 'prompt' + 'response' (a string)")
    if (why := check_prompt(row["prompt"])) is not None:
        raise PromptError(f"field 'prompt' {why}")
    return row["prompt"], row["response"]


def read_sft(path: str | Path, formatter: ChatFormatter, max_length: int):
    """(encoded examples, {row: message} for bad rows, number truncated)."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    examples, bad, truncated = [], {}, 0
    for i, row in enumerate(rows, 1):
        try:
            prompt, response = _sft_pair(row)
            e = formatter.encode(prompt, response, max_length)
        except PromptError as err:
            bad[i] = f"{path}: row {i}: {err}"
            continue
        truncated += e.truncated
        examples.append(e)
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
