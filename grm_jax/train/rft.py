"""Rejective fine-tuning data (SPCT stage 1, PAPERS.md part A).

For each GRM item: sample N_RFT trajectories with the GRM template (responses shuffled per
sample), keep the ones correct by Eq. 10, and drop the item when all N_RFT were correct ("too
easy"). With hinted sampling, one more sample per item is drawn with the prompt naming the best
response; it is kept only if correct, and stored with the hint-free prompt, so SFT teaches the
judgment without the hint. The kept trajectories are written as SFT rows
({"messages": [user: GRM prompt, assistant: reply], ...}) for `grm-jax sft`.
"""

from __future__ import annotations

import json
from pathlib import Path

from grm_jax.atomic import atomic_write_text, check_writable
from grm_jax.eval.judge import HINT, JudgeOptions, judge_items


def select_trajectories(judged: dict, n: int, system_prompt: str | None = None) -> tuple[list[dict], dict]:
    """(SFT rows, counts) from judged items with n plain samples (+ an optional hinted one)."""
    rows, counts = [], {"items": 0, "kept_items": 0, "kept": 0, "kept_hinted": 0, "too_easy": 0,
                        "all_wrong": 0, "parse_failures": 0, "samples": 0}
    for r in judged["results"]:
        counts["items"] += 1
        samples = r["samples"]
        counts["samples"] += len(samples)
        counts["parse_failures"] += sum(s["scores"] is None for s in samples)
        plain = samples[:n]
        ok = [bool(s.get("correct")) for s in plain]
        if all(ok):
            counts["too_easy"] += 1
            continue
        if not any(ok):
            counts["all_wrong"] += 1
        keep = [j for j in range(n) if ok[j]]
        if len(samples) > n and samples[n].get("correct"):
            keep.append(n)
            counts["kept_hinted"] += 1
        for j in keep:
            prompt = r["prompts"][j]
            if samples[j].get("hinted"):  # train on the prompt without its hint
                prompt = prompt[: prompt.rfind(HINT.split("{")[0])]
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": samples[j]["text"]}]
            rows.append({"messages": messages, "row": r["item"].row, "id": r["item"].id, "sample": j,
                         "hinted": bool(samples[j].get("hinted"))})
        counts["kept"] += len(keep)
        counts["kept_items"] += bool(keep)
    return rows, counts


def run_rft(model, data, out, *, n: int = 3, hinted: bool = False, opts: JudgeOptions | None = None,
            mesh=None, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Samples and filters; writes OUT (SFT rows) and OUT.summary.json. Returns the counts."""
    from grm_jax.data.grm_items import read_items
    from grm_jax.loading import load_with_tokenizer

    out = Path(out)
    summary_path = out.with_suffix(".summary.json")
    check_writable(out, summary_path, overwrite=overwrite)
    opts = opts or JudgeOptions(k=n, temperature=1.0)
    items, bad, _ = read_items(data)
    missing = [it for it in items if it.rewards is None]
    for it in missing:
        bad[it.row] = f"{data}: row {it.row}: rejective sampling needs 'rewards'"
    items = [it for it in items if it.rewards is not None]
    cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, mesh=mesh, progress=progress)
    judged = judge_items(params, cfg, tokenizer, items, opts, mesh=mesh, progress=progress, hinted=hinted,
                         bad=bad, source=str(data))
    for i in sorted(bad)[:20]:
        log(f"bad row: {bad[i]}")
    rows, counts = select_trajectories(judged, opts.k, opts.system_prompt)
    counts.update({"bad_rows": len(bad), "n_rft": opts.k, "hinted_sampling": hinted,
                   "prompts_per_s": judged["timing"].get("prompts_per_s")})
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows), overwrite=overwrite)
    atomic_write_text(summary_path, json.dumps(counts, indent=2) + "\n", overwrite=overwrite)
    return {**counts, "out": str(out), "summary_path": str(summary_path)}
