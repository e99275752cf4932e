"""`grm-jax demo`: the whole method, from nothing, on a synthetic judging task, on CPU.

Stages (each writes into the run folder; numbers are measured on held-out items):
  data      train / held-out items of the arithmetic judging task, the pretraining corpus
  tokenizer a byte-level BPE trained on the corpus, saved in HF format with a ChatML template
  pretrain  a tiny Qwen2-family model from random init, next-token loss on the corpus replies
  rft       N_RFT samples per item + one hinted sample, rejection by Eq. 10, SFT on the kept ones
  grpo      GRPO with the Eq. 10 rule reward (+1 / -1) and a k3 KL penalty to the RFT model
  meta_rm   a value head + decoder trained by BCE on whether a GRM sample is correct
  baselines a scalar Bradley-Terry RM on the train items' pairs; the LLM-as-judge format
  eval      greedy per stage; Voting@k and MetaRM@k for k = 1..K from the same K samples
  endogenous the pretrained LM's own endogenous reward: accuracy against chance, a system prompt
            steering it, GRPO of the policy against it (task accuracy before and after)
  export    the final GRM to an HF directory, reloaded with transformers, logits compared
  report    results.json, results.md (the table), scaling.png, training.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from grm_jax.atomic import atomic_write_text
from grm_jax.synthetic import TaskConfig

GRM_TEMPLATE = "grm_compact"
JUDGE_TEMPLATE = "judge_compact"
META_TEMPLATE = "meta_rm"


@dataclasses.dataclass
class DemoConfig:
    """Settings of `grm-jax demo` (configs/demo/*.yaml; any field can be overridden as key=value)."""

    out: Optional[str] = None          # run folder (default: runs/demo-TIME)
    seed: int = 0
    # task and corpus
    train_items: int = 1500
    eval_items: int = 150
    ops: str = "+-*"                   # operations of the arithmetic queries
    max_operand: int = 5               # operands 0..max_operand: 108 distinct queries
    teacher_error: float = 0.25        # teacher GRM replies built on a miscomputed result
    misconceived: float = 0.0          # queries on which the teacher holds one fixed wrong result
    misconception_rate: float = 0.6    # replies to those queries built on that wrong result
    qa_error: float = 0.2              # demonstrator answers that are wrong
    qa_repeats: int = 4                # plain Q/A rows per query (every query)
    plus_one_repeats: int = 1          # Q/A rows under the "add one" system prompt, per query
    grm_shuffles: int = 2              # teacher GRM trajectories per train item
    judge_shuffles: int = 1            # teacher LLM-as-judge trajectories per train item
    # tokenizer and model (Qwen2 family)
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_size: int = 512
    # pretraining
    pretrain_steps: int = 550
    batch_size: int = 32
    pretrain_lr: float = 3e-3
    # rejective fine-tuning
    rft_items: int = 400
    n_rft: int = 3
    rft_temperature: float = 1.0
    rft_steps: int = 80
    rft_lr: float = 5e-4
    # rule-based GRPO
    grpo_steps: int = 40
    grpo_prompts: int = 16
    group_size: int = 4
    grpo_lr: float = 1.5e-4
    grpo_beta: float = 0.08
    # meta RM (trajectories: the non-hinted RFT samples + meta_samples per item from the GRPO model)
    meta_items: int = 300
    meta_samples: int = 3
    meta_steps: int = 120
    meta_lr: float = 1e-3
    # scalar Bradley-Terry RM baseline
    scalar_steps: int = 150
    scalar_lr: float = 1e-3
    # evaluation
    k: int = 32
    temperature: float = 0.5
    max_new_tokens: int = 48
    judge_batch: int = 256
    # endogenous reward
    endo_steps: int = 30
    endo_prompts: int = 16
    endo_lr: float = 1e-4
    endo_beta: float = 0.01
    endo_samples: int = 8

    def __post_init__(self):
        from grm_jax.config import validate

        validate(self)
        if self.k & (self.k - 1):
            raise ValueError(f"k must be a power of two, got {self.k}")

    @property
    def task(self) -> TaskConfig:
        return TaskConfig(max_operand=self.max_operand, ops=tuple(self.ops), teacher_error=self.teacher_error,
                          misconceived=self.misconceived, misconception_rate=self.misconception_rate)


def _write_jsonl(path: Path, rows) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class Demo:
    """The stages, sharing the run folder, the items and the log."""

    def __init__(self, cfg: DemoConfig, out: Path, *, progress: bool = True, log=print):
        self.cfg, self.out, self.progress, self.log = cfg, out, progress, log
        self.results: dict = {"config": dataclasses.asdict(cfg), "stages": {}}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Logs the stage's start and records its seconds in results["stages"]."""
        t = time.perf_counter()
        self.log(f"\n== {name} ==")
        yield
        self.results["stages"][name] = round(time.perf_counter() - t, 1)
        self.log(f"   {name}: {self.results['stages'][name]} s (total {time.perf_counter() - self.t0:.0f} s)")

    # -- data, tokenizer, model ------------------------------------------------------------

    def build_data(self):
        from grm_jax.demo.data import corpus_rows, grm_item_row, query_text, split_items

        c = self.cfg
        d = self.out / "data"
        d.mkdir(parents=True, exist_ok=True)
        self.train, self.held = split_items(c.train_items, c.eval_items, c.seed, c.task)
        self.train_path = _write_jsonl(d / "train_items.jsonl", [grm_item_row(it) for it in self.train])
        self.eval_path = _write_jsonl(d / "eval_items.jsonl", [grm_item_row(it) for it in self.held])
        self.rft_path = _write_jsonl(d / "rft_items.jsonl", [grm_item_row(it) for it in self.train[:c.rft_items]])
        self.meta_path = _write_jsonl(d / "meta_items.jsonl",
                                      [grm_item_row(it) for it in self.train[-c.meta_items:]])
        self.corpus = corpus_rows(self.train, c.task, seed=c.seed, qa_repeats=c.qa_repeats, qa_error=c.qa_error,
                                  plus_one_repeats=c.plus_one_repeats, grm_shuffles=c.grm_shuffles,
                                  judge_shuffles=c.judge_shuffles, grm_template=GRM_TEMPLATE,
                                  judge_template=JUDGE_TEMPLATE)
        self.corpus_path = _write_jsonl(d / "corpus.jsonl", self.corpus)
        # Endogenous-reward experiments: a random half of the queries is evaluated, the other half
        # trained on.
        from grm_jax.demo.data import all_queries, answer_of

        queries = all_queries(c.task)
        random.Random(c.seed + 2).shuffle(queries)
        eval_queries, train_queries = sorted(queries[:len(queries) // 2]), queries[len(queries) // 2:]
        self.eval_queries = eval_queries
        self.qa_train_path = _write_jsonl(d / "qa_train.jsonl", [
            {"prompt": query_text(q), "answer": str(answer_of(q))} for q in train_queries])
        self.results["data"] = {"train_items": len(self.train), "eval_items": len(self.held),
                                "corpus_rows": len(self.corpus), "eval_queries": len(eval_queries),
                                "endogenous_train_queries": len(train_queries)}
        self.log(f"   {len(self.train)} train items, {len(self.held)} held-out items, "
                 f"{len(self.corpus)} corpus rows")

    def build_model(self):
        import jax

        from grm_jax.data.tokenizers import save_tokenizer, train_bpe_tokenizer
        from grm_jax.demo.data import tokenizer_texts
        from grm_jax.models.decoder import init_params
        from grm_jax.models.families import from_hf_config
        from grm_jax.train.model_checkpoint import save_model

        c = self.cfg
        tokenizer = train_bpe_tokenizer(tokenizer_texts(self.corpus, META_TEMPLATE), c.vocab_size,
                                        across_words=True)
        tok_dir = save_tokenizer(tokenizer, self.out / "tokenizer")
        vocab = len(tokenizer)
        hf = dict(model_type="qwen2", vocab_size=vocab, hidden_size=c.hidden_size,
                  intermediate_size=c.mlp_size, num_hidden_layers=c.num_layers,
                  num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                  max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
        model_cfg = from_hf_config(hf, where="the demo's model")
        params = init_params(model_cfg, jax.random.key(c.seed))
        self.init_dir = save_model(self.out / "models" / "init", params, model_cfg,
                                   tokenizer_files=[p for p in tok_dir.iterdir() if p.is_file()])
        self.results["model"] = {"family": "qwen2", "params": model_cfg.num_params(), "vocab": vocab,
                                 "layers": c.num_layers, "hidden": c.hidden_size}
        self.log(f"   tokenizer: {vocab} tokens; model: {model_cfg.num_params():,} params")

    # -- training stages --------------------------------------------------------------------

    def sft(self, name: str, model: Path, data: Path, steps: int, lr: float) -> Path:
        from grm_jax.train.optim import OptimConfig
        from grm_jax.train.sft import SFTConfig, run_sft

        c = self.cfg
        run_dir = self.out / name
        cfg = SFTConfig(model=str(model), data=str(data), out=str(run_dir), steps=steps, batch_size=c.batch_size,
                        max_length=256, seed=c.seed, save_every=steps, keep=1, unroll_layers=True,
                        optim=OptimConfig(lr=lr, warmup_steps=min(20, steps // 10), total_steps=steps,
                                          min_lr_ratio=0.1, weight_decay=0.0, b2=0.99))
        summary, _ = run_sft(cfg, progress=self.progress, log=self.log)
        if summary["status"] != "done":
            raise RuntimeError(f"{name}: SFT stopped: {summary}")
        self.log(f"   {name}: final loss {summary['last']['loss']:.3f}")
        return Path(summary["final"])

    def judge_opts(self, k: int = 1, *, fmt: str = "multi", temperature: float | None = None):
        from grm_jax.eval.judge import JudgeOptions

        c = self.cfg
        return JudgeOptions(k=k, temperature=c.temperature if temperature is None else temperature,
                            max_new_tokens=c.max_new_tokens, batch_size=c.judge_batch, seed=c.seed,
                            format=fmt, template=GRM_TEMPLATE if fmt == "multi" else JUDGE_TEMPLATE)

    def judge(self, model: Path, data: Path, opts, meta=None, hinted: bool = False) -> dict:
        from grm_jax.data.grm_items import read_items
        from grm_jax.eval.judge import judge_items
        from grm_jax.loading import load_with_tokenizer

        items, bad, _ = read_items(data)
        if bad:
            raise RuntimeError(f"{data}: bad rows {bad}")
        cfg, params, _, tokenizer = load_with_tokenizer(model, progress=False)
        return judge_items(params, cfg, tokenizer, items, opts, meta=meta, progress=self.progress, hinted=hinted)

    def greedy_eval(self, name: str, model: Path, fmt: str = "multi") -> dict:
        from grm_jax.eval.judge import summarize

        judged = self.judge(model, self.eval_path, self.judge_opts(1, fmt=fmt))
        s = summarize(judged, "grm", {})
        row = {"accuracy": s.get("accuracy_at_1"), "parse_failure_rate": s["parse_failure_rate"],
               "per_n": _per_n(judged)}
        self.results.setdefault("greedy", {})[name] = row
        self.log(f"   {name}: greedy accuracy {100 * row['accuracy']:.1f}%  "
                 f"parse failures {100 * row['parse_failure_rate']:.1f}%")
        return judged

    def rft(self, pretrained: Path) -> Path:
        from grm_jax.train.rft import select_trajectories

        c = self.cfg
        judged = self.judge(pretrained, self.rft_path,
                            self.judge_opts(c.n_rft, temperature=c.rft_temperature), hinted=True)
        rows, counts = select_trajectories(judged, c.n_rft)
        self.rft_judged = judged
        # "mixed with general instruction data": the corpus's plain Q/A rows, one per kept trajectory
        qa = [r for r in self.corpus if len(r["messages"]) == 2 and r["messages"][0]["content"].startswith("What")]
        mix = rows + qa[:len(rows)]
        self.results["rft"] = {**counts, "instruction_rows": len(mix) - len(rows)}
        self.log(f"   RFT: {counts['kept']} trajectories kept ({counts['kept_hinted']} hinted) from "
                 f"{counts['items']} items; {counts['too_easy']} too easy, {counts['all_wrong']} all wrong")
        if len(mix) < c.batch_size:
            self.results["rft"]["sft"] = "skipped: fewer kept rows than a batch"
            self.log("   RFT: too few kept trajectories for a batch; the RFT model is the pretrained one")
            return pretrained
        path = _write_jsonl(self.out / "rft" / "kept.jsonl", mix)
        return self.sft("rft/sft", pretrained, path, c.rft_steps, c.rft_lr)

    def grpo(self, name: str, model: Path, data: Path, *, reward: str, steps: int, prompts: int, lr: float,
             beta: float, max_new_tokens: int) -> Path:
        from grm_jax.train.grpo import GRPOConfig
        from grm_jax.train.grpo_run import run_grpo
        from grm_jax.train.optim import OptimConfig

        c = self.cfg
        cfg = GRPOConfig(model=str(model), data=str(data), out=str(self.out / name), reward=reward,
                         grm_format="multi", grm_template=GRM_TEMPLATE, steps=steps, prompts_per_step=prompts,
                         group_size=c.group_size, max_new_tokens=max_new_tokens, max_prompt_length=256,
                         temperature=1.0, unroll_layers=True, beta=beta, seed=c.seed, save_every=steps, keep=1,
                         optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant", b2=0.99))
        summary, history = run_grpo(cfg, progress=self.progress, log=self.log)
        if summary["status"] != "done":
            raise RuntimeError(f"{name}: GRPO stopped: {summary}")
        first, last = np.mean([h["reward_mean"] for h in history[:5]]), np.mean([h["reward_mean"] for h in history[-5:]])
        self.results.setdefault("grpo_runs", {})[name] = {"reward_first5": float(first), "reward_last5": float(last),
                                                          "kl_last": history[-1]["kl"]}
        self.log(f"   {name}: mean reward {first:+.3f} (first 5 steps) -> {last:+.3f} (last 5)")
        return Path(summary["final"])

    def scaling(self, grm: Path, meta) -> None:
        """Voting@k and MetaRM@k, k = 1, 2, 4, .., K, from the same K samples per held-out item."""
        from grm_jax.eval.judge import scaling_curve, summarize

        c = self.cfg
        opts = self.judge_opts(c.k)
        judged = self.judge(grm, self.eval_path, opts, meta=meta)
        ks = [2 ** i for i in range(c.k.bit_length())]
        self.results["voting"] = scaling_curve(dict(judged, k_meta=None), ks, opts)
        self.results["meta_voting"] = scaling_curve(judged, ks, opts)
        s = summarize(judged, "grm", {})
        self.results["sampling"] = {"sample_accuracy": s.get("sample_accuracy"),
                                    "parse_failure_rate": s["parse_failure_rate"],
                                    "prompts_per_s": s.get("prompts_per_s"), "temperature": c.temperature}
        for v, m in zip(self.results["voting"], self.results["meta_voting"]):
            self.log(f"   k={v['k']:>3d}  Voting@k {100 * v['accuracy']:.1f}%  MetaRM@k {100 * m['accuracy']:.1f}%")

    # -- reward models --------------------------------------------------------------------------

    def meta_rm(self, grm: Path):
        """Trains the meta RM on the non-hinted RFT samples and meta_samples per item of the trained
        GRM; returns a MetaRM."""
        from grm_jax.data.chat import ChatFormatter, Encoded
        from grm_jax.eval.judge import MetaRM
        from grm_jax.loading import load_with_tokenizer
        from grm_jax.rewards.grm import load_template, render_meta
        from grm_jax.train import scalar_rm
        from grm_jax.train.optim import OptimConfig, make_optimizer

        c = self.cfg
        fresh = self.judge(grm, self.meta_path, self.judge_opts(c.meta_samples))
        template = load_template(META_TEMPLATE)
        cfg, params, tok_dir, tokenizer = load_with_tokenizer(grm, progress=False)
        formatter = ChatFormatter(tokenizer)
        examples, labels = [], []
        for judged, n in ((self.rft_judged, c.n_rft), (fresh, c.meta_samples)):
            for r in judged["results"]:
                for j, s in enumerate(r["samples"][:n]):  # the hinted sample (index n) is left out
                    if "correct" not in s:
                        continue
                    text = render_meta(template, r["prompts"][j], s["text"])
                    examples.append(Encoded(formatter.prompt_ids(text), 0))
                    labels.append(int(bool(s["correct"])))
        labels = np.asarray(labels)
        rng = np.random.default_rng(c.seed)
        # Class-balanced batches (our choice; the paper gives no sampling detail): half correct,
        # half incorrect samples, so the head cannot settle on the majority label.
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        half = c.batch_size // 2
        balanced = bool(len(pos) and len(neg))
        if not balanced:
            self.log(f"   meta RM: warning: {len(pos)} correct and {len(neg)} incorrect samples; "
                     "training on one class, so it cannot tell them apart")

        def batches():
            from grm_jax.data.pipeline import collate
            while True:
                idx = np.concatenate([rng.choice(pos, half, replace=len(pos) < half),
                                      rng.choice(neg, half, replace=len(neg) < half)]) if balanced else \
                    rng.choice(len(labels), c.batch_size, replace=len(labels) < c.batch_size)
                b = collate([examples[i] for i in idx])
                yield {"tokens": b["tokens"], "positions": b["positions"], "labels": labels[idx].astype(np.float32)}

        opt = make_optimizer(OptimConfig(lr=c.meta_lr, total_steps=c.meta_steps, warmup_steps=min(10, c.meta_steps // 2), b2=0.99))
        trained, history = scalar_rm.fit(params, cfg, batches(), loss="bce", steps=c.meta_steps, optimizer=opt,
                                         seed=c.seed, progress=self.progress, desc="meta RM")
        out = self.out / "meta_rm"
        from grm_jax.train.model_checkpoint import save_model
        save_model(out, trained["decoder"], cfg, tokenizer_files=[p for p in Path(tok_dir).iterdir() if p.is_file()],
                   extra_arrays={"value_head": trained["head"]})
        self.results["meta_rm"] = {"examples": len(examples), "positive_fraction": float(labels.mean()),
                                   "balanced_batches": balanced,
                                   "train_accuracy_last10": float(np.mean([h["accuracy"] for h in history[-10:]]))}
        self.meta_history = history
        self.log(f"   meta RM: {len(examples)} trajectories ({100 * labels.mean():.0f}% correct), "
                 f"train accuracy (last 10 steps) {100 * self.results['meta_rm']['train_accuracy_last10']:.0f}%")
        return MetaRM(trained["decoder"], trained["head"], cfg, formatter, template)

    def scalar_baseline(self, pretrained: Path):
        """Bradley-Terry RM from the pretrained LM on the train items' (right, wrong) pairs; accuracy =
        the right response scored highest on the held-out items."""
        import jax

        from grm_jax.data.chat import ChatFormatter
        from grm_jax.data.pipeline import collate
        from grm_jax.eval.judge import _jitted_values
        from grm_jax.loading import load_with_tokenizer
        from grm_jax.train import scalar_rm
        from grm_jax.train.optim import OptimConfig, make_optimizer

        c = self.cfg
        cfg, params, _, tokenizer = load_with_tokenizer(pretrained, progress=False)
        formatter = ChatFormatter(tokenizer)
        pairs = []
        for it in self.train:
            best = int(np.argmax(it["rewards"]))
            chosen = formatter.encode(it["prompt"], it["responses"][best], 256)
            pairs += [(chosen, formatter.encode(it["prompt"], r, 256))
                      for i, r in enumerate(it["responses"]) if i != best]
        rng = np.random.default_rng(c.seed + 11)
        half = c.batch_size // 2

        def batches():
            while True:
                idx = rng.choice(len(pairs), half, replace=False)
                b = collate([pairs[i][0] for i in idx] + [pairs[i][1] for i in idx])
                yield {"tokens": b["tokens"], "positions": b["positions"]}

        opt = make_optimizer(OptimConfig(lr=c.scalar_lr, total_steps=c.scalar_steps, warmup_steps=min(10, c.scalar_steps // 2), b2=0.99))
        trained, history = scalar_rm.fit(params, cfg, batches(), loss="bt", steps=c.scalar_steps, optimizer=opt,
                                         seed=c.seed, progress=self.progress, desc="scalar BT RM")
        fn = _jitted_values(cfg, None)
        hits, per_n = [], {}
        for it in self.held:
            b = collate([formatter.encode(it["prompt"], r, 256) for r in it["responses"]], rows=4)
            v = np.asarray(jax.device_get(fn(trained["decoder"], trained["head"], b["tokens"], b["positions"])))
            ok = it["rewards"][int(np.argmax(v[:len(it["responses"])]))] == 1
            hits.append(ok)
            per_n.setdefault(it["subset"], []).append(ok)
        acc = float(np.mean(hits))
        self.results["scalar_rm"] = {"accuracy": acc, "pairs": len(pairs), "steps": c.scalar_steps,
                                     "per_n": {k: float(np.mean(v)) for k, v in sorted(per_n.items())},
                                     "train_accuracy_last10": float(np.mean([h["accuracy"] for h in history[-10:]]))}
        self.scalar_history = history
        self.log(f"   scalar BT RM: held-out accuracy {100 * acc:.1f}%")

    # -- endogenous reward ----------------------------------------------------------------------

    def endogenous(self, pretrained: Path):
        from grm_jax.data.chat import ChatFormatter
        from grm_jax.demo.data import PLUS_ONE, answer_of, query_text
        from grm_jax.eval.score import score_encoded
        from grm_jax.loading import load_with_tokenizer
        from grm_jax.synthetic import response_text

        c = self.cfg
        cfg, params, _, tokenizer = load_with_tokenizer(pretrained, progress=False)
        plain, steered = ChatFormatter(tokenizer), ChatFormatter(tokenizer, system_prompt=PLUS_ONE)

        def rewards(formatter, pairs):
            encs = [formatter.encode(p, r, 256) for p, r in pairs]
            return np.asarray([x["sum"] for x in score_encoded(params, cfg, encs, batch_size=64)])

        # 1. choosing the right response on the held-out items (best of n by the sequence reward R)
        flat = [(it["prompt"], r) for it in self.held for r in it["responses"]]
        R = rewards(plain, flat)
        hits, chance, at = [], [], 0
        for it in self.held:
            n = len(it["responses"])
            hits.append(it["rewards"][int(np.argmax(R[at:at + n]))] == 1)
            chance.append(1 / n)
            at += n
        # 2. a system prompt steering it: the right result vs the result plus one
        pairs = []
        for q in self.eval_queries:
            pairs += [(query_text(q), response_text(q, answer_of(q))), (query_text(q), response_text(q, answer_of(q) + 1))]
        prefers_plus = {}
        for name, formatter in (("no system prompt", plain), (f"system prompt {PLUS_ONE!r}", steered)):
            r = rewards(formatter, pairs)
            prefers_plus[name] = float(np.mean(r[1::2] > r[0::2]))
        self.results["endogenous"] = {"accuracy": float(np.mean(hits)), "chance": float(np.mean(chance)),
                                      "items": len(hits), "prefers_plus_one": prefers_plus}
        self.log(f"   endogenous reward picks the right response on {100 * np.mean(hits):.1f}% of held-out "
                 f"items (chance {100 * np.mean(chance):.1f}%)")
        for name, v in prefers_plus.items():
            self.log(f"   prefers 'result + 1' over the right result, {name}: {100 * v:.1f}%")

        # 3. GRPO of the policy against its own frozen endogenous reward
        before = self.task_accuracy(pretrained)
        final = self.grpo("endogenous_grpo", pretrained, self.qa_train_path, reward="endogenous",
                          steps=c.endo_steps, prompts=c.endo_prompts, lr=c.endo_lr, beta=c.endo_beta,
                          max_new_tokens=16)
        after = self.task_accuracy(final)
        self.results["endogenous"]["task_accuracy"] = {"before": before, "after": after}
        self.log(f"   task accuracy on held-out queries (T=1 samples / greedy): "
                 f"{100 * before['sampled']:.1f}% / {100 * before['greedy']:.1f}% before, "
                 f"{100 * after['sampled']:.1f}% / {100 * after['greedy']:.1f}% after")

    def task_accuracy(self, model: Path) -> dict:
        """Fraction of right answers to the held-out queries: temperature-1 samples and greedy."""
        from grm_jax.data.chat import ChatFormatter
        from grm_jax.demo.data import answer_of, query_text
        from grm_jax.loading import load_with_tokenizer
        from grm_jax.rewards.rules import math_answer_reward
        from grm_jax.sampling import Greedy, Temperature, generate

        c = self.cfg
        cfg, params, _, tokenizer = load_with_tokenizer(model, progress=False)
        formatter = ChatFormatter(tokenizer)
        prompts = [formatter.prompt_ids(query_text(q)) for q in self.eval_queries]
        answers = [str(answer_of(q)) for q in self.eval_queries]
        out = {}
        for name, strategy, n in (("sampled", Temperature(1.0), c.endo_samples), ("greedy", Greedy(), 1)):
            s = generate(params, cfg, prompts, strategy=strategy, max_new_tokens=16, stop_tokens=formatter.stop_ids(),
                         num_samples=n, seed=c.seed + 5, pad_id=tokenizer.pad_token_id)
            texts = [tokenizer.decode(s.body(r), skip_special_tokens=True) for r in range(len(s.lengths))]
            out[name] = float(np.mean([math_answer_reward(t, answers[r // n]) > 0 for r, t in enumerate(texts)]))
        return out

    # -- export --------------------------------------------------------------------------------

    def export(self, model: Path) -> dict:
        from grm_jax.data.chat import ChatFormatter
        from grm_jax.data.pipeline import collate
        from grm_jax.hf import export_hf
        from grm_jax.loading import load_tokenizer, load_with_tokenizer
        from grm_jax.models import Decoder

        cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, progress=False)
        hf_dir = self.out / "hf_export"
        export_hf(params, cfg, hf_dir, progress=False)
        tokenizer.save_pretrained(hf_dir)
        row = {"dir": str(hf_dir)}
        try:
            import torch
            import transformers
        except ImportError:
            row["parity"] = "skipped: torch is not installed (pip install 'grm-jax[test]')"
            self.results["export"] = row
            self.log(f"   exported to {hf_dir}; {row['parity']}")
            return row
        formatter = ChatFormatter(tokenizer)
        encs = [formatter.encode(it["prompt"], it["responses"][0], 256) for it in self.held[:8]]
        b = collate(encs)
        tokens, positions = b["tokens"], b["positions"]
        ours, _ = Decoder(cfg).apply({"params": params}, tokens, positions)
        back = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        reloaded_tok = load_tokenizer(hf_dir)  # as grm-jax loads any model's tokenizer
        with torch.no_grad():
            ref = back(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(positions >= 0, dtype=torch.long)).logits.numpy()
        valid = positions >= 0
        row["max_abs_logits_diff"] = float(np.abs(np.asarray(ours) - ref)[valid].max())
        row["tokenizer_round_trip"] = bool(reloaded_tok(self.held[0]["prompt"])["input_ids"]
                                           == tokenizer(self.held[0]["prompt"])["input_ids"])
        self.results["export"] = row
        self.log(f"   exported to {hf_dir}; transformers reload: max |logits diff| = "
                 f"{row['max_abs_logits_diff']:.2e}")
        return row


def _per_n(judged: dict) -> dict:
    groups: dict[str, list] = {}
    for r in judged["results"]:
        if r["correct"] is not None:
            groups.setdefault(f"n={len(r['item'].responses)}", []).append(bool(r["correct"]))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def _prepare_out(cfg: DemoConfig, overwrite: bool) -> Path:
    out = Path(cfg.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty; choose another --out or pass "
                                  "--overwrite to replace it")
        if not (out / "results.json").exists() and not (out / "data").is_dir():
            raise FileExistsError(f"{out} is not a demo run folder; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(cfg: DemoConfig, *, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Runs every stage; returns the results dict (also written to OUT/results.json)."""
    import jax

    from grm_jax.demo.report import write_report

    out = _prepare_out(cfg, overwrite)
    demo = Demo(cfg, out, progress=progress, log=log)
    log(f"grm-jax demo: seed {cfg.seed}, run folder {out}, JAX on {jax.devices()[0].platform}")
    with demo.stage("data"):
        demo.build_data()
    with demo.stage("tokenizer and model"):
        demo.build_model()
    with demo.stage("pretrain"):
        pretrained = demo.sft("pretrain", demo.init_dir, demo.corpus_path, cfg.pretrain_steps, cfg.pretrain_lr)
        demo.greedy_eval("pretrained", pretrained)
    with demo.stage("rft"):
        rft = demo.rft(pretrained)
        demo.greedy_eval("rft", rft)
    with demo.stage("grpo"):
        grm = demo.grpo("grpo", rft, demo.train_path, reward="grm", steps=cfg.grpo_steps, prompts=cfg.grpo_prompts,
                        lr=cfg.grpo_lr, beta=cfg.grpo_beta, max_new_tokens=cfg.max_new_tokens)
        demo.greedy_eval("grpo", grm)
    with demo.stage("meta_rm"):
        meta = demo.meta_rm(grm)
    with demo.stage("eval"):
        demo.scaling(grm, meta)
    with demo.stage("baselines"):
        demo.scalar_baseline(pretrained)
        demo.greedy_eval("llm_as_judge", pretrained, fmt="judge")
    with demo.stage("endogenous"):
        demo.endogenous(pretrained)
    with demo.stage("export"):
        demo.export(grm)
    demo.results["seconds"] = round(time.perf_counter() - demo.t0, 1)
    with demo.stage("report"):
        table = write_report(demo)
    log("\n" + table)
    log(f"\nwritten to {out} (results.json, results.md, scaling.png, training.png) in {demo.results['seconds']} s")
    return demo.results
