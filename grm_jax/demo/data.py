"""The embedded default's data: items, the pretraining corpus and the tokenizer's texts.

Everything is drawn from the synthetic arithmetic judging task (`grm_jax.synthetic`),
deterministically from the seed:
- train items: the pretraining corpus's teacher trajectories, RFT, GRPO and the baselines;
- held-out items: never shown to any model as an item (same query and response set), used only
  for evaluation;
- validation items (`val_items`, 0 by default): likewise fresh, neither train nor held-out; each
  GRM's greedy accuracy on them is reported beside the held-out one, for choosing settings
  without looking at the held-out items (configs/demo/EXPERIMENTS.md);
- the corpus: plain question/answer rows from an imperfect demonstrator (wrong `qa_error` of the
  time), the same questions under a system prompt asking for the result plus one, and teacher
  GRM and LLM-as-judge trajectories for the train items.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np

from grm_jax.rewards.grm import load_template, render, render_meta
from grm_jax.synthetic import (OPS, TaskConfig, all_queries, make_item, misconceptions, response_text,
                               teacher_reply, wrong_answer)

# The system prompt of the prompt-conditioning experiment (PAPERS.md part B, "prompt conditioning").
PLUS_ONE = "Add one to every answer."


def query_text(parts) -> str:
    a, op, b = parts
    return f"What is {a} {op} {b}?"


def answer_of(parts) -> int:
    a, op, b = parts
    return OPS[op](a, b)


def _key(item: dict) -> tuple:
    return item["prompt"], tuple(sorted(item["claims"]))


def split_items(n_train: int, n_eval: int, seed: int, cfg: TaskConfig,
                n_val: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(train items, held-out items, validation items); a held-out or validation item never
    equals another item of any split (same query and same set of responses). The validation items
    are drawn after the held-out ones, so `n_val` changes neither the train nor the held-out items."""
    rng = random.Random(seed)
    train = [make_item(rng, cfg, index=i) for i in range(n_train)]
    seen = {_key(it) for it in train}
    i = 0

    def fresh(n: int) -> list[dict]:
        nonlocal i
        out = []
        while len(out) < n:
            if i > 100 * (n_train + n_eval + n_val) + 10_000:
                raise ValueError(f"the task has too few distinct items for {n_eval} held-out and {n_val} "
                                 "validation items beside the train items; lower eval_items / val_items")
            it = make_item(rng, cfg, index=n_train + i)
            i += 1
            if _key(it) not in seen:
                seen.add(_key(it))
                out.append(it)
        return out

    held = fresh(n_eval)
    return train, held, fresh(n_val)


def grm_item_row(item: dict) -> dict:
    """The item as a GRM-items JSONL row (`grm_jax.data.grm_items` layout "grm")."""
    return {"id": item["id"], "prompt": item["prompt"], "responses": item["responses"],
            "rewards": item["rewards"], "subset": item["subset"]}


def qa_reply(rng: random.Random, parts, error: float, plus: int = 0) -> str:
    """The demonstrator's answer: right (plus `plus`) except `error` of the time."""
    answer = answer_of(parts) + plus
    claimed = answer if rng.random() >= error else wrong_answer(rng, answer, parts)
    return response_text(parts, claimed)


def corpus_rows(train: list[dict], cfg: TaskConfig, *, seed: int, qa_repeats: int, qa_error: float,
                plus_one_repeats: int, grm_shuffles: int, judge_shuffles: int,
                grm_template: str, judge_template: str) -> list[dict]:
    """SFT rows ({"messages": [...]}) of the pretraining corpus, shuffled."""
    rng = random.Random(seed + 1)
    rows = []
    for parts in all_queries(cfg):
        q = query_text(parts)
        for _ in range(qa_repeats):
            rows.append({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": qa_reply(rng, parts, qa_error)}]})
        for _ in range(plus_one_repeats):
            rows.append({"messages": [{"role": "system", "content": PLUS_ONE}, {"role": "user", "content": q},
                                      {"role": "assistant", "content": qa_reply(rng, parts, qa_error, plus=1)}]})
    grm, judge = load_template(grm_template), load_template(judge_template)
    beliefs = misconceptions(cfg, seed)
    for it in train:
        for style, template, count in (("multi", grm, grm_shuffles), ("judge", judge, judge_shuffles)):
            for _ in range(count):
                perm = np.random.default_rng(rng.randrange(1 << 30)).permutation(len(it["responses"]))
                prompt = render(template, it["prompt"], [it["responses"][p] for p in perm])
                reply, _ = teacher_reply(it, perm, rng, cfg, style=style,
                                         misconception=beliefs.get(tuple(it["parts"])))
                rows.append({"messages": [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": reply}]})
    rng.shuffle(rows)
    return rows


def tokenizer_texts(rows: list[dict], meta_template: str) -> list[str]:
    """Texts to train the BPE tokenizer on: the corpus, and the meta RM's template text."""
    texts = [m["content"] for r in rows for m in r["messages"]]
    texts.append(render_meta(load_template(meta_template), "", ""))
    return texts


@dataclasses.dataclass
class DemoData:
    """The data stage's output: the items and the files the later stages read."""

    train: list[dict]
    held: list[dict]
    val: list[dict]                # validation items ([] unless val_items > 0)
    corpus: list[dict]
    eval_queries: list[tuple]      # held-out queries of the endogenous-reward experiments
    train_path: Path               # GRM-items JSONL files
    eval_path: Path
    rft_path: Path
    meta_path: Path
    corpus_path: Path              # chat rows
    qa_train_path: Path            # prompt/answer rows the endogenous GRPO trains on
    val_path: Path | None = None   # GRM-items JSONL of the validation items (None when there are none)


def build(run) -> DemoData:
    """Stage `data`: draws the items and the corpus from the seed and writes them to OUT/data."""
    from grm_jax.demo.common import write_jsonl
    from grm_jax.demo.config import GRM_TEMPLATE, JUDGE_TEMPLATE

    c = run.cfg
    d = run.out / "data"
    d.mkdir(parents=True, exist_ok=True)
    train, held, val = split_items(c.train_items, c.eval_items, c.seed, c.task, n_val=c.val_items)
    corpus = corpus_rows(train, c.task, seed=c.seed, qa_repeats=c.qa_repeats, qa_error=c.qa_error,
                         plus_one_repeats=c.plus_one_repeats, grm_shuffles=c.grm_shuffles,
                         judge_shuffles=c.judge_shuffles, grm_template=GRM_TEMPLATE, judge_template=JUDGE_TEMPLATE)
    # Endogenous-reward experiments: a random half of the queries is evaluated, the other half
    # trained on.
    queries = all_queries(c.task)
    random.Random(c.seed + 2).shuffle(queries)
    eval_queries, train_queries = sorted(queries[:len(queries) // 2]), queries[len(queries) // 2:]
    data = DemoData(
        train=train, held=held, val=val, corpus=corpus, eval_queries=eval_queries,
        train_path=write_jsonl(d / "train_items.jsonl", [grm_item_row(it) for it in train]),
        eval_path=write_jsonl(d / "eval_items.jsonl", [grm_item_row(it) for it in held]),
        rft_path=write_jsonl(d / "rft_items.jsonl", [grm_item_row(it) for it in train[:c.rft_items]]),
        meta_path=write_jsonl(d / "meta_items.jsonl", [grm_item_row(it) for it in train[-c.meta_items:]]),
        corpus_path=write_jsonl(d / "corpus.jsonl", corpus),
        qa_train_path=write_jsonl(d / "qa_train.jsonl", [{"prompt": query_text(q), "answer": str(answer_of(q))}
                                                         for q in train_queries]),
        val_path=write_jsonl(d / "val_items.jsonl", [grm_item_row(it) for it in val]) if val else None)
    run.results["data"] = {"train_items": len(train), "eval_items": len(held), "val_items": len(val),
                           "corpus_rows": len(corpus),
                           "eval_queries": len(eval_queries), "endogenous_train_queries": len(train_queries)}
    run.log(f"   {len(train)} train items, {len(held)} held-out items, {len(val)} validation items, "
            f"{len(corpus)} corpus rows")
    return data
