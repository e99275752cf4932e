"""`grm-jax generate`: sample responses to every prompt of a file.

Input rows carry `prompt` (a string or a list of {role, content} messages) or `messages`. Output
JSONL has one line per (row, sample) in input order, or one "error" line for a bad row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jax.sharding import Mesh
from tqdm.auto import tqdm

from grm_jax.atomic import atomic_write_text, check_writable
from grm_jax.data.chat import ChatFormatter, PromptError
from grm_jax.data.preference import BadRow, DataError, check_prompt, read_rows
from grm_jax.sampling import Greedy, Strategy, generate


def _prompt_of(row: dict):
    if isinstance(row, BadRow):
        return None, row.error
    for field in ("prompt", "messages"):
        if field in row and row[field] is not None:
            why = check_prompt(row[field])
            return (row[field], None) if why is None else (None, f"field {field!r} {why}")
    return None, "field 'prompt' (or 'messages') is missing"


def generate_file(model: str | Path, prompts: str | Path, out: str | Path, *,
                  strategy: Strategy = Greedy(), max_new_tokens: int = 256, num_samples: int = 1,
                  batch_size: int = 8, seed: int = 0, system_prompt: str | None = None,
                  use_template: bool | None = None, mesh: Mesh | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Samples `num_samples` responses per prompt row and writes them to `out`; returns a summary."""
    from grm_jax.loading import load_with_tokenizer

    out = Path(out)
    check_writable(out, overwrite=overwrite)
    rows = read_rows(prompts)
    if not rows:
        raise DataError(f"{prompts}: no rows")
    cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, mesh=mesh, progress=progress)
    formatter = ChatFormatter(tokenizer, system_prompt=system_prompt, use_template=use_template)
    stop = formatter.stop_ids()

    errors, todo = {}, []
    for i, row in enumerate(rows, 1):
        prompt, why = _prompt_of(row)
        if why is None:
            try:
                ids = formatter.prompt_ids(prompt)
                if len(ids) + max_new_tokens > cfg.max_position:
                    raise PromptError(f"the prompt has {len(ids)} tokens; with max_new_tokens {max_new_tokens} "
                                      f"that is more than the model's {cfg.max_position} positions")
                todo.append((i, ids))
                continue
            except PromptError as e:
                why = str(e)
        errors[i] = f"{prompts}: row {i}: {why}"

    todo.sort(key=lambda t: -len(t[1]))
    results: dict[int, list[dict]] = {}
    bar = tqdm(total=len(todo), desc="generating", unit="prompt", disable=not progress)
    t0, new_tokens = time.perf_counter(), 0
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        s = generate(params, cfg, [ids for _, ids in chunk], strategy=strategy,
                     max_new_tokens=max_new_tokens, stop_tokens=stop, num_samples=num_samples,
                     seed=seed + k, mesh=mesh)
        for j, (i, ids) in enumerate(chunk):
            results[i] = []
            for n in range(num_samples):
                r = j * num_samples + n
                length = int(s.lengths[r])
                results[i].append({
                    "row": i, "sample": n, "response": tokenizer.decode(s.body(r), skip_special_tokens=True),
                    "prompt_tokens": len(ids), "tokens": length,
                    "finish": "stop" if s.stopped[r] else "length",
                    "logprob": float(s.logprobs[r, :length].sum())})
                new_tokens += length
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0

    lines = []
    for i, row in enumerate(rows, 1):
        if i in errors:
            lines.append({"row": i, "error": errors[i]})
            continue
        for item in results[i]:
            if row.get("id") is not None:
                item = {"id": row["id"], **item}
            lines.append(item)
    atomic_write_text(out, "".join(json.dumps(x) + "\n" for x in lines), overwrite=overwrite)
    return {"rows": len(rows), "generated_rows": len(results), "bad_rows": len(errors),
            "bad_row_messages": [errors[i] for i in sorted(errors)][:20], "samples": len(results) * num_samples,
            "new_tokens": new_tokens, "seconds": round(seconds, 3), "out": str(out)}
