"""`grm-jax score`: endogenous rewards of every response in a preference or response file.

Reads the rows, encodes each prompt + response through the chat template, scores sequences in
length-sorted, length-bucketed batches with one jitted function, and writes one JSONL line per
input row in input order (bad rows get an "error" line, nothing is dropped), plus a summary.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from grm_jax.atomic import atomic_write_text, check_writable
from grm_jax.data.chat import ChatFormatter, Encoded, PromptError
from grm_jax.data.pipeline import collate
from grm_jax.data.preference import detect_layout, read_rows, validate
from grm_jax.eval.preference import pair_accuracy, rmbench_summary
from grm_jax.models.config import ModelConfig
from grm_jax.rewards.endogenous import jitted_rewards
from grm_jax.sampling import bucket
from grm_jax.sharding import batch_sharding

# How many bad-row messages the summary and the console list (all are in the output file).
_SHOW_BAD = 20


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    reward: str = "sum"
    batch_size: int = 8
    max_length: int = 2048
    system_prompt: str | None = None
    use_template: bool | None = None   # None: the tokenizer's template when it has one
    token_rewards: bool = False
    alpha: float = 1.0
    chunk: int = 512

    def __post_init__(self):
        from grm_jax.config import validate

        validate(self)


def score_encoded(params, config: ModelConfig, encoded: Sequence[Encoded], *, batch_size: int = 8,
                  alpha: float = 1.0, chunk: int = 512, mesh: Mesh | None = None,
                  progress: bool = False) -> list[dict]:
    """Endogenous rewards of encoded sequences (in their order): dicts with sum, mean, logprob,
    value (V(s_1)), count and tokens (per-token rewards of the response)."""
    fn = jitted_rewards(config, mesh, float(alpha), int(chunk))
    multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    B = -(-batch_size // multiple) * multiple
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    batches = [order[i:i + B] for i in range(0, len(order), B)]
    results: list[dict | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc="scoring", unit="seq", disable=not progress)
    for idx in batches:
        b = collate([encoded[i] for i in idx], rows=B)
        arrays = [b["tokens"], b["positions"], b["loss_mask"]]
        if mesh is not None:
            arrays = [jax.device_put(a, batch_sharding(mesh, a.shape)) for a in arrays]
        window = min(bucket(max(encoded[i].end - encoded[i].start for i in idx)), b["tokens"].shape[1])
        out = jax.device_get(fn(params, *arrays, window))
        for row, i in enumerate(idx):
            e = encoded[i]
            results[i] = {k: float(out[k][row]) for k in ("sum", "mean", "logprob", "value", "count")}
            results[i]["tokens"] = out["tokens"][row, :e.end - e.start].tolist()
        bar.update(len(idx))
    bar.close()
    return results


def _row_output(row, layout: str, rewards: list[dict], opts: ScoreOptions) -> dict:
    out = {"row": row.index}
    if row.id is not None:
        out["id"] = row.id
    if row.group is not None:
        out["subset" if layout == "rewardbench" else "domain"] = row.group
    values = [r[opts.reward] for r in rewards]
    tokens = [r["tokens"] for r in rewards]
    if layout == "plain":
        out["reward"] = values[0]
        if opts.token_rewards:
            out["token_rewards"] = tokens[0]
    elif layout == "rewardbench":
        out["chosen_reward"], out["rejected_reward"] = values
        out["correct"] = values[0] > values[1]
        if opts.token_rewards:
            out["chosen_token_rewards"], out["rejected_token_rewards"] = tokens
    else:
        out["chosen_reward"], out["rejected_reward"] = values[:3], values[3:]
        if opts.token_rewards:
            out["chosen_token_rewards"], out["rejected_token_rewards"] = tokens[:3], tokens[3:]
    return out


def summarize(layout: str, outputs: list[dict]) -> dict:
    """Accuracy figures from the scored output rows (rows with an error are skipped)."""
    ok = [o for o in outputs if "error" not in o]
    if not ok:
        return {}
    if layout == "rewardbench":
        return pair_accuracy([o["chosen_reward"] for o in ok], [o["rejected_reward"] for o in ok],
                             [o.get("subset") for o in ok])
    if layout == "rmbench":
        return rmbench_summary([o["chosen_reward"] for o in ok], [o["rejected_reward"] for o in ok],
                               [o["domain"] for o in ok])
    rewards = np.asarray([o["reward"] for o in ok])
    return {"mean_reward": float(rewards.mean()), "std_reward": float(rewards.std())}


def score_file(model: str | Path, data: str | Path, out: str | Path, *, summary_path=None,
               options: ScoreOptions = ScoreOptions(), mesh: Mesh | None = None,
               overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Scores every row of `data` with the endogenous reward of `model`; writes `out` (JSONL) and
    the summary JSON (default: OUT with suffix .summary.json). Returns the summary."""
    from grm_jax.loading import load_with_tokenizer

    out = Path(out)
    summary_path = Path(summary_path) if summary_path else out.with_suffix(".summary.json")
    check_writable(out, summary_path, overwrite=overwrite)
    rows = read_rows(data)
    layout = detect_layout(rows, data)
    good, errors = validate(rows, layout, data)

    cfg, params, _, tokenizer = load_with_tokenizer(model, mesh=mesh, progress=progress)
    formatter = ChatFormatter(tokenizer, system_prompt=options.system_prompt, use_template=options.use_template)
    max_length = min(options.max_length, cfg.max_position)

    encoded, owners, truncated_rows, empty = [], [], set(), 0
    for row in good:
        try:
            seqs = [formatter.encode(row.prompt, text, max_length) for text in row.responses]
        except PromptError as e:
            errors[row.index] = f"{data}: row {row.index}: {e}"
            continue
        empty += sum(not t.strip() for t in row.responses)
        if any(s.truncated for s in seqs):
            truncated_rows.add(row.index)
        owners.append((row, len(encoded), len(seqs)))
        encoded.extend(seqs)

    t0 = time.perf_counter()
    scored = score_encoded(params, cfg, encoded, batch_size=options.batch_size, alpha=options.alpha,
                           chunk=options.chunk, mesh=mesh, progress=progress) if encoded else []
    seconds = time.perf_counter() - t0

    by_row = {row.index: _row_output(row, layout, scored[at:at + n], options) for row, at, n in owners}
    outputs = []
    for i in range(1, len(rows) + 1):
        if i in by_row:
            outputs.append(by_row[i])
        else:
            outputs.append({"row": i, "error": errors[i]})
    bad_messages = [errors[i] for i in sorted(errors)]
    summary = {
        "model": str(model), "data": str(data), "layout": layout, "reward": options.reward,
        "system_prompt": options.system_prompt, "chat_template": formatter.use_template,
        "max_length": max_length, "rows": len(rows), "scored_rows": len(by_row),
        "bad_rows": len(bad_messages), "bad_row_messages": bad_messages[:_SHOW_BAD],
        "truncated_rows": len(truncated_rows), "empty_responses": empty,
        "sequences": len(encoded), "tokens": int(sum(len(e.ids) for e in encoded)),
        "seconds": round(seconds, 3), **summarize(layout, outputs),
    }
    atomic_write_text(out, "".join(json.dumps(o) + "\n" for o in outputs), overwrite=overwrite)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n", overwrite=overwrite)
    summary["out"], summary["summary_path"] = str(out), str(summary_path)
    return summary


def format_summary(summary: dict) -> str:
    """A few human-readable lines for the console."""
    lines = [f"scored {summary['scored_rows']}/{summary['rows']} rows ({summary['layout']}, "
             f"reward={summary['reward']}) in {summary['seconds']:.1f}s; bad rows: {summary['bad_rows']}, "
             f"truncated rows: {summary['truncated_rows']}, empty responses: {summary['empty_responses']}"]
    for m in summary.get("bad_row_messages", []):
        lines.append(f"  bad: {m}")
    if "accuracy" in summary:
        lines.append(f"accuracy {summary['accuracy']:.4f} over {summary['count']} pairs "
                     f"({summary['ties']} ties)")
        for g, v in summary.get("per_group", {}).items():
            lines.append(f"  {g}: {v['accuracy']:.4f} ({v['count']})")
    if "overall" in summary:
        o = summary["overall"]
        lines.append(f"RM-Bench overall: hard {o['hard']:.4f}  normal {o['normal']:.4f}  "
                     f"easy {o['easy']:.4f}  avg {o['avg']:.4f}  (domains {', '.join(summary['overall_domains'])})")
        for d, v in summary["per_domain"].items():
            lines.append(f"  {d}: hard {v['hard']:.4f}  normal {v['normal']:.4f}  easy {v['easy']:.4f}  "
                         f"avg {v['avg']:.4f} ({v['count']})")
    if "mean_reward" in summary:
        lines.append(f"mean reward {summary['mean_reward']:.4f} (std {summary['std_reward']:.4f})")
    lines.append(f"wrote {summary['out']} and {summary['summary_path']}")
    return "\n".join(lines)
