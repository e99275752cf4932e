"""`grm-jax judge`: a generative reward model scores items, k samples each, combined by voting.

For every item and sample j < k: the responses are shuffled by a permutation seeded by (seed,
item, j), the GRM prompt is rendered from the template, and all items × k prompts go through the
sampler in large batches (temperature 0.5 by default; k = 1 is greedy). Each reply is parsed into
scores (or a failure reason), the scores are mapped back to the original order, optionally
filtered by a meta reward model (keep the k_meta samples it rates highest), and summed (Eq. 14;
mean and majority are named extensions). Ties are broken by a seeded random choice.

A scaling curve over k in a list (1, 2, 4, ..., K) reuses the K samples per item: each smaller k
votes over its k-subsets (all of them, or `scaling_draws` random ones) without regenerating
(grm_jax.eval.scaling).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from grm_jax.data.chat import ChatFormatter, Encoded, PromptError
from grm_jax.data.grm_items import Item
from grm_jax.data.pipeline import collate
from grm_jax.eval.preference import rmbench_levels
from grm_jax.eval.scaling import scaling_curve
from grm_jax.rewards.grm import JUDGE, MULTI, SINGLE, GrmFormat, load_template, meta_verdict, render, render_meta
from grm_jax.rewards.parse import REASONS, parse_scores
from grm_jax.rewards.voting import choose, is_correct, meta_keep, unshuffle, vote
from grm_jax.sampling import Greedy, Temperature, generate

FORMATS = {"multi": MULTI, "single": SINGLE, "judge": JUDGE}
# Hinted sampling (RFT): appended to the GRM prompt; {} is the shown number of the best response.
HINT = "\n\nHint: the best response is Response {}."


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    k: int = 8                        # samples per item
    temperature: float = 0.5          # used when k > 1; k = 1 is greedy
    max_new_tokens: int = 512
    batch_size: int = 32              # prompts per sampler call
    seed: int = 0
    vote: str = "sum"
    format: str = "multi"             # multi (scores 1..10), single (0/1), judge (best index)
    template: str | None = None       # a template file replacing the format's default
    k_meta: int | None = None         # meta-RM filter size (default k // 2, at least 1)
    system_prompt: str | None = None
    scaling_draws: int = 1024         # k-subsets per item for each k < K of the curve (all when fewer)

    def __post_init__(self):
        from grm_jax.config import validate

        validate(self)
        if self.k > 1 and not self.temperature > 0:
            raise ValueError("k > 1 needs a temperature > 0")

    @property
    def grm_format(self) -> GrmFormat:
        return FORMATS[self.format]


@dataclasses.dataclass
class MetaRM:
    """A scalar meta reward model: decoder params + value head, its config and formatter."""

    params: dict
    head: dict
    config: object
    formatter: ChatFormatter
    template: object


def _sample_rng(seed: int, item: int, sample: int) -> np.random.Generator:
    return np.random.default_rng([seed, item, sample])


def _sample_scores(fmt: GrmFormat, text: str, n: int, truncated: bool, perm) -> tuple[list | None, str | None]:
    """Scores in original response order, or the parse failure reason."""
    if fmt.picks_best:
        parsed = parse_scores(text, 1, 1, n, truncated=truncated, marker=fmt.marker)
        if not parsed.ok:
            return None, parsed.reason
        best = int(perm[parsed.scores[0] - 1])
        return [int(i == best) for i in range(n)], None
    parsed = parse_scores(text, n, fmt.low, fmt.high, truncated=truncated, marker=fmt.marker)
    if not parsed.ok:
        return None, parsed.reason
    return unshuffle(parsed.scores, perm), None


def _item_correct(item: Item, choice: int, parsed: list) -> bool | None:
    """Best-of-n Accuracy@1 for n >= 2 (the choice holds a maximal ground-truth reward); for
    n = 1 the rounded mean of the parsed scores equals the label (extension of Eq. 10)."""
    if item.rewards is None:
        return None
    if len(item.rewards) == 1:
        return bool(parsed) and round(float(np.mean([p[0] for p in parsed]))) == item.rewards[0]
    if not parsed:  # nothing to vote with: wrong, not a coin flip (the random tie-break is for real ties)
        return False
    return item.rewards[choice] == max(item.rewards)


def _has_unique_top(rewards) -> bool:
    return rewards is not None and (len(rewards) == 1 or list(rewards).count(max(rewards)) == 1)


def _combine(item: Item, index: int, samples: list[dict], keep: Sequence[int], opts: JudgeOptions,
             k_meta: int | None, salt: int = 0):
    """(votes, choice, kept sample indices) over the samples `keep`."""
    if k_meta is not None and any("meta" in samples[j] for j in keep):
        chosen = meta_keep([samples[j]["meta"] for j in keep], min(k_meta, len(keep)))
        keep = [keep[i] for i in chosen]
    parsed = [samples[j]["scores"] for j in keep]
    votes = vote(parsed, len(item.responses), opts.vote)
    choice = choose(votes, np.random.default_rng([opts.seed, index, 1 << 20, salt]))
    return votes, choice, list(keep)


def judge_items(params, config, tokenizer, items: Sequence[Item], opts: JudgeOptions, *,
                meta: MetaRM | None = None, mesh: Mesh | None = None, progress: bool = True,
                hinted: bool = False, bad: dict | None = None, source: str = "data") -> dict:
    """Samples, parses and votes; returns {"results": per-item dicts, "timing": {...}}.

    With `bad` (row -> message), an item whose prompt is not valid text or too long for the
    model is recorded there (naming `source`, the file) and left out; without it, it raises.

    `hinted` (for rejective fine-tuning) adds one more sample per item with n >= 2 and ground
    truth, whose prompt names the best response (HINT); it is marked "hinted" and never voted.
    """
    fmt = opts.grm_format
    template = load_template(opts.template or fmt.template)
    formatter = ChatFormatter(tokenizer, system_prompt=opts.system_prompt)
    stop = formatter.stop_ids()
    limit = None if config is None else config.max_position - opts.max_new_tokens
    jobs = []  # (item index, sample index, permutation, grm prompt text, prompt ids)
    skipped = set()
    for i, item in enumerate(items):
        if fmt.low == 0 and fmt.high == 1 and len(item.responses) != 1:
            raise ValueError(f"row {item.row}: the single-response format scores one response, "
                             f"got {len(item.responses)}")
        mine = []
        try:
            for j in range(opts.k):
                perm = _sample_rng(opts.seed, i, j).permutation(len(item.responses))
                text = render(template, item.prompt, [item.responses[p] for p in perm])
                mine.append((i, j, perm, text, formatter.prompt_ids(text)))
            if hinted and item.rewards is not None and len(item.responses) >= 2:
                perm = _sample_rng(opts.seed, i, opts.k).permutation(len(item.responses))
                best = int(np.argmax(item.rewards))
                shown = int(np.flatnonzero(perm == best)[0]) + 1
                text = render(template, item.prompt, [item.responses[p] for p in perm]) + HINT.format(shown)
                mine.append((i, opts.k, perm, text, formatter.prompt_ids(text)))
            longest = max(len(job[4]) for job in mine)
            if limit is not None and longest > limit:
                raise PromptError(f"the GRM prompt has {longest} tokens, more than the {limit} the model's "
                                  f"{config.max_position} positions leave beside max_new_tokens "
                                  f"{opts.max_new_tokens}")
        except PromptError as e:
            if bad is None:
                raise
            bad[item.row] = f"{source}: row {item.row}: {e}"
            skipped.add(i)
            continue
        jobs += mine

    strategy = Greedy() if opts.k == 1 else Temperature(opts.temperature)
    order = sorted(range(len(jobs)), key=lambda t: -len(jobs[t][4]))
    replies: dict[int, tuple[str, int, bool]] = {}
    bar = tqdm(total=len(jobs), desc="judging", unit="prompt", disable=not progress)
    t0, new_tokens = time.perf_counter(), 0
    for call, start in enumerate(range(0, len(order), opts.batch_size)):
        chunk = order[start:start + opts.batch_size]
        s = generate(params, config, [jobs[t][4] for t in chunk], strategy=strategy,
                     max_new_tokens=opts.max_new_tokens, stop_tokens=stop, seed=opts.seed + call, mesh=mesh)
        for r, t in enumerate(chunk):
            n = int(s.lengths[r])
            replies[t] = (tokenizer.decode(s.body(r), skip_special_tokens=True), n, bool(s.stopped[r]))
            new_tokens += n
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0

    # Keyed by the item's index in `items` (what seeds its shuffles and tie-break).
    results = {i: {"item": item, "samples": [], "index": i} for i, item in enumerate(items) if i not in skipped}
    for t, (i, j, perm, text, _) in enumerate(jobs):
        reply, n_tokens, stopped = replies[t]
        item = items[i]
        scores, reason = _sample_scores(fmt, reply, len(item.responses), not stopped, perm)
        sample = {"text": reply, "scores": scores, "reason": reason, "permutation": [int(p) for p in perm],
                  "tokens": n_tokens, "finish": "stop" if stopped else "length"}
        if j == opts.k:
            sample["hinted"] = True
        if _has_unique_top(item.rewards) and not fmt.picks_best:
            sample["correct"] = is_correct(scores, item.rewards)
        results[i]["samples"].append(sample)
        results[i].setdefault("_prompts", []).append(text)

    meta_seconds = 0.0
    if meta is not None:
        t1 = time.perf_counter()
        pairs = [(i, j) for i in results for j in range(opts.k)]
        texts = [meta_input(meta.template, results[i]["item"], results[i]["_prompts"][j], results[i]["samples"][j])
                 for i, j in pairs]
        values = meta_values(meta, texts, batch_size=opts.batch_size, mesh=mesh)
        for (i, j), v in zip(pairs, values):
            results[i]["samples"][j]["meta"] = float(v)
        meta_seconds = time.perf_counter() - t1

    k_meta = None if meta is None else (opts.k_meta or max(1, opts.k // 2))
    for i, r in results.items():
        r["prompts"] = r.pop("_prompts", [])
        votes, choice, kept = _combine(r["item"], i, r["samples"], list(range(opts.k)), opts, k_meta)
        r["votes"], r["choice"] = [float(v) for v in votes], choice
        if k_meta is not None:
            r["kept"] = kept
        parsed = [r["samples"][j]["scores"] for j in kept if r["samples"][j]["scores"] is not None]
        r["correct"] = _item_correct(r["item"], choice, parsed)
        r["parsed_samples"] = len(parsed)
        r["tie_break"] = bool(parsed) and int(np.sum(np.asarray(votes) == np.max(votes))) > 1
    timing = {"prompts": len(jobs), "batch_size": opts.batch_size, "sampling_s": round(seconds, 3),
              "prompts_per_s": len(jobs) / seconds if seconds else float("nan"),
              "new_tokens": new_tokens, "new_tokens_per_s": new_tokens / seconds if seconds else float("nan"),
              "meta_s": round(meta_seconds, 3)}
    return {"results": list(results.values()), "timing": timing, "k_meta": k_meta}


def meta_input(template, item: Item, prompt: str, sample: dict) -> str:
    """The meta RM's input for one judged sample: the GRM prompt it answered, its text and what
    its parsed scores decided (`grm_jax.rewards.grm.meta_verdict`)."""
    return render_meta(template, prompt, sample["text"],
                       meta_verdict(item.responses, sample["scores"], sample["permutation"]))


def meta_values(meta: MetaRM, texts: Sequence[str], *, batch_size: int = 32,
                mesh: Mesh | None = None) -> np.ndarray:
    """The meta RM's value (a logit of 'this judgment is correct') for each text."""
    import jax

    from grm_jax.sampling import bucket

    from grm_jax.models.value_head import shared_prefix

    ids = [Encoded(meta.formatter.prompt_ids(t), 0) for t in texts]
    fn = _jitted_values(meta.config, mesh, shared_prefix([e.ids for e in ids]))
    out = np.zeros(len(ids), np.float32)
    order = sorted(range(len(ids)), key=lambda t: -len(ids[t].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        b = collate([ids[t] for t in chunk], rows=bucket(len(chunk), minimum=1))
        values = jax.device_get(fn(meta.params, meta.head, b["tokens"], b["positions"]))
        out[chunk] = values[:len(chunk)]
    return out


_VALUE_FNS: dict = {}


def _jitted_values(config, mesh, prefix: int = 0):
    """jitted fn(params, head, tokens, positions) -> values; every row's first `prefix` tokens the same."""
    import jax

    from grm_jax.models.value_head import last_token_values

    key = (config, mesh, prefix)
    if key not in _VALUE_FNS:
        _VALUE_FNS[key] = jax.jit(lambda p, h, t, pos: last_token_values(p, h, config, t, pos, mesh=mesh,
                                                                         prefix=prefix))
    return _VALUE_FNS[key]


def summarize(judged: dict, layout: str, bad: dict[int, str]) -> dict:
    """Accuracy@1, pairwise accuracy per subset, RM-Bench levels, parse failures, throughput."""
    results = judged["results"]
    samples = [s for r in results for s in r["samples"]]
    reasons = {k: sum(s["reason"] == k for s in samples) for k in REASONS}
    failures = sum(reasons.values())
    out = {"layout": layout, "items": len(results), "bad_rows": len(bad),
           "bad_row_messages": [bad[i] for i in sorted(bad)][:20], "samples": len(samples),
           "parse_failures": failures, "parse_failure_rate": failures / len(samples) if samples else float("nan"),
           "parse_failure_reasons": {k: v for k, v in reasons.items() if v}}
    graded = [s["correct"] for s in samples if "correct" in s]
    if graded:
        out["sample_accuracy"] = float(np.mean(graded))
    scored = [r for r in results if r["correct"] is not None]
    multi = [r for r in scored if len(r["item"].responses) >= 2]
    if multi:
        out["accuracy_at_1"] = float(np.mean([r["correct"] for r in multi]))
        # Counted wrong above; and how many of the right ones a random tie-break decided.
        out["items_without_parsed_sample"] = sum(r["parsed_samples"] == 0 for r in multi)
        out["items_decided_by_tie_break"] = sum(bool(r["tie_break"]) for r in multi)
    pairs = [r for r in scored if len(r["item"].responses) == 2]
    if pairs:
        groups: dict[str, list] = {}
        for r in pairs:
            groups.setdefault(str(r["item"].group), []).append(r["correct"])
        out["pairwise_accuracy"] = float(np.mean([r["correct"] for r in pairs]))
        out["pairwise_per_subset"] = {g: {"accuracy": float(np.mean(v)), "count": len(v)}
                                      for g, v in sorted(groups.items())}
    if layout == "rmbench" and pairs:
        out["rmbench"] = _rmbench(pairs)
    out.update(judged["timing"])
    return out


def _rmbench(pairs: list[dict]) -> dict:
    from grm_jax.eval.preference import RMBENCH_DOMAINS, rmbench_domain

    per = {}
    for domain in sorted({rmbench_domain(str(r["item"].group)) for r in pairs}):
        m = np.zeros((3, 3))
        c = np.zeros((3, 3))
        for r in pairs:
            if rmbench_domain(str(r["item"].group)) == domain:
                a, b = r["item"].pair
                m[a, b] += r["correct"]
                c[a, b] += 1
        matrix = m / np.maximum(c, 1)
        per[domain] = {"matrix": matrix.round(6).tolist(), **rmbench_levels(matrix)}
    main = [d for d in RMBENCH_DOMAINS if d in per]
    overall = {k: float(np.mean([per[d][k] for d in main])) if main else float("nan")
               for k in ("hard", "normal", "easy", "avg")}
    return {"per_domain": per, "overall": overall}


def item_line(r: dict) -> dict:
    item: Item = r["item"]
    line = {"row": item.row}
    if item.id is not None:
        line["id"] = item.id
    if item.group is not None:
        line["subset"] = item.group
    if item.pair is not None:
        line["pair"] = list(item.pair)
    line.update({"n": len(item.responses), "rewards": None if item.rewards is None else list(item.rewards),
                 "samples": r["samples"], "votes": r["votes"], "choice": r["choice"], "correct": r["correct"],
                 "parsed_samples": r["parsed_samples"], "tie_break": r["tie_break"]})
    if "kept" in r:
        line["kept"] = r["kept"]
    return line


def write_scaling_plot(rows: list[dict], path: str | Path, title: str) -> Path:
    """Accuracy against k on a log2 axis, as a PNG (written to a temporary file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path).absolute()
    tmp = path.parent / f".{path.name}.tmp.png"
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ks = [r["k"] for r in rows]
    ax.plot(ks, [100 * r["accuracy"] for r in rows], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples voted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def format_table(rows: list[dict]) -> str:
    lines = ["| k | accuracy | items | draws |", "|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['accuracy']:.4f} | {r['items']} | {r['draws']} |" for r in rows]
    return "\n".join(lines)


def dumps_lines(results: list[dict]) -> str:
    return "".join(json.dumps(item_line(r)) + "\n" for r in results)


def load_meta_rm(directory: str | Path, *, mesh: Mesh | None = None) -> MetaRM:
    """A meta RM checkpoint: a model (grm-jax checkpoint or HF dir) with value_head.npz."""
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.train.scalar_rm import load_value_head

    head = load_value_head(directory)
    cfg, params, _, tokenizer = load_with_tokenizer(directory, mesh=mesh, progress=False)
    formatter = ChatFormatter(tokenizer)
    return MetaRM(params, head, cfg, formatter, load_template("meta_rm"))


def judge_file(model: str | Path, data: str | Path, out: str | Path, *, opts: JudgeOptions,
               ks: Sequence[int] | None = None, meta_rm: str | Path | None = None,
               summary_path=None, plot_path=None, mesh: Mesh | None = None,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Judges every item of `data`; writes OUT (JSONL, one line per item in input order, bad rows
    as error lines), the summary JSON and, for a scaling list, the PNG plot. Returns the summary."""
    from grm_jax.atomic import atomic_write_text, check_writable
    from grm_jax.data.grm_items import read_items
    from grm_jax.loading import load_with_tokenizer

    out = Path(out)
    summary_path = Path(summary_path) if summary_path else out.with_suffix(".summary.json")
    ks = sorted(set(ks or [opts.k]))
    if max(ks) != opts.k:
        raise ValueError(f"the largest k of the scaling list ({max(ks)}) must equal k ({opts.k})")
    plot_path = Path(plot_path) if plot_path else (out.with_suffix(".scaling.png") if len(ks) > 1 else None)
    check_writable(out, summary_path, plot_path, overwrite=overwrite)
    items, bad, layout = read_items(data)
    cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, mesh=mesh, progress=progress)
    meta = load_meta_rm(meta_rm, mesh=mesh) if meta_rm else None
    judged = judge_items(params, cfg, tokenizer, items, opts, meta=meta, mesh=mesh, progress=progress,
                         bad=bad, source=str(data)) \
        if items else {"results": [], "timing": {}, "k_meta": None}

    lines, by_row = [], {}
    for r in judged["results"]:
        by_row.setdefault(r["item"].row, []).append(r)
    n_rows = max([*by_row, *bad], default=0)
    for row in range(1, n_rows + 1):
        if row in bad:
            lines.append(json.dumps({"row": row, "error": bad[row]}) + "\n")
        for r in by_row.get(row, []):
            lines.append(json.dumps(item_line(r)) + "\n")
    summary = {"model": str(model), "data": str(data), "format": opts.format, "k": opts.k,
               "temperature": 0.0 if opts.k == 1 else opts.temperature, "vote": opts.vote,
               "meta_rm": None if meta_rm is None else str(meta_rm), "k_meta": judged["k_meta"],
               "seed": opts.seed, **summarize(judged, layout, bad)}
    if len(ks) > 1 and judged["results"]:
        summary["scaling"] = scaling_curve(judged, ks, opts)
    atomic_write_text(out, "".join(lines), overwrite=overwrite)
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n", overwrite=overwrite)
    summary["out"], summary["summary_path"] = str(out), str(summary_path)
    if "scaling" in summary and plot_path is not None:
        title = f"{Path(str(model)).name} on {Path(str(data)).name}: {opts.vote} voting" + (
            ", meta RM" if meta else "")
        summary["plot"] = str(write_scaling_plot(summary["scaling"], plot_path, title))
    return summary


def format_summary(s: dict) -> str:
    lines = [f"judged {s['items']} items ({s['layout']}, format {s['format']}, k={s['k']}, "
             f"vote={s['vote']}{', meta RM k_meta=' + str(s['k_meta']) if s.get('meta_rm') else ''}); "
             f"bad rows: {s['bad_rows']}"]
    lines += [f"  bad: {m}" for m in s.get("bad_row_messages", [])]
    if s.get("samples"):
        lines.append(f"samples {s['samples']}, parse failures {s['parse_failures']} "
                     f"({s['parse_failure_rate']:.1%}) {s.get('parse_failure_reasons', {})}")
    for key, label in (("sample_accuracy", "sample accuracy (Eq. 10)"), ("accuracy_at_1", "Accuracy@1 (best-of-n)"),
                       ("pairwise_accuracy", "pairwise accuracy")):
        if key in s:
            lines.append(f"{label}: {s[key]:.4f}")
    for g, v in s.get("pairwise_per_subset", {}).items():
        lines.append(f"  {g}: {v['accuracy']:.4f} ({v['count']})")
    if "items_decided_by_tie_break" in s:
        lines.append(f"items with no parsed sample (counted wrong): {s['items_without_parsed_sample']}; "
                     f"decided by a random tie-break: {s['items_decided_by_tie_break']}")
    if "rmbench" in s:
        o = s["rmbench"]["overall"]
        lines.append(f"RM-Bench: hard {o['hard']:.4f} normal {o['normal']:.4f} easy {o['easy']:.4f} avg {o['avg']:.4f}")
    if "prompts_per_s" in s:
        lines.append(f"sampling: {s['prompts']} prompts in {s['sampling_s']:.1f}s = {s['prompts_per_s']:.2f} "
                     f"prompts/s ({s['new_tokens_per_s']:.0f} new tokens/s) at batch size {s['batch_size']}")
    if "scaling" in s:
        lines.append(format_table(s["scaling"]))
    lines.append(f"wrote {s['out']} and {s['summary_path']}" + (f" and {s['plot']}" if "plot" in s else ""))
    return "\n".join(lines)
