"""Stage `endogenous`: the pretrained LM's own endogenous reward (PAPERS.md B), untrained: how often
it picks the right response, a system prompt steering it, and GRPO of the policy against its own
frozen endogenous reward (task accuracy on held-out queries before and after)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_endogenous(run, data, pretrained: Path) -> None:
    """The three experiments below on the pretrained LM; results["endogenous"]."""
    from grm_jax.data.chat import ChatFormatter
    from grm_jax.demo.data import PLUS_ONE, answer_of, query_text
    from grm_jax.eval.score import score_encoded
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.synthetic import response_text

    c = run.cfg
    cfg, params, _, tokenizer = load_with_tokenizer(pretrained, progress=False)
    plain, steered = ChatFormatter(tokenizer), ChatFormatter(tokenizer, system_prompt=PLUS_ONE)

    def rewards(formatter, pairs):
        encs = [formatter.encode(p, r, 256) for p, r in pairs]
        return np.asarray([x["sum"] for x in score_encoded(params, cfg, encs, batch_size=64)])

    # 1. choosing the right response on the held-out items (best of n by the sequence reward R)
    flat = [(it["prompt"], r) for it in data.held for r in it["responses"]]
    R = rewards(plain, flat)
    hits, chance, at = [], [], 0
    for it in data.held:
        n = len(it["responses"])
        hits.append(it["rewards"][int(np.argmax(R[at:at + n]))] == 1)
        chance.append(1 / n)
        at += n
    # 2. a system prompt steering it: the right result vs the result plus one
    pairs = []
    for q in data.eval_queries:
        pairs += [(query_text(q), response_text(q, answer_of(q))), (query_text(q), response_text(q, answer_of(q) + 1))]
    prefers_plus = {}
    for name, formatter in (("no system prompt", plain), (f"system prompt {PLUS_ONE!r}", steered)):
        r = rewards(formatter, pairs)
        prefers_plus[name] = float(np.mean(r[1::2] > r[0::2]))
    run.results["endogenous"] = {"accuracy": float(np.mean(hits)), "chance": float(np.mean(chance)),
                                 "items": len(hits), "prefers_plus_one": prefers_plus}
    run.log(f"   endogenous reward picks the right response on {100 * np.mean(hits):.1f}% of held-out "
            f"items (chance {100 * np.mean(chance):.1f}%)")
    for name, v in prefers_plus.items():
        run.log(f"   prefers 'result + 1' over the right result, {name}: {100 * v:.1f}%")

    # 3. GRPO of the policy against its own frozen endogenous reward
    before = task_accuracy(run, data, pretrained)
    final = run.grpo("endogenous_grpo", pretrained, data.qa_train_path, reward="endogenous",
                     steps=c.endo_steps, prompts=c.endo_prompts, group_size=c.endo_group_size, lr=c.endo_lr,
                     beta=c.endo_beta, max_new_tokens=16)
    after = task_accuracy(run, data, final)
    run.results["endogenous"]["task_accuracy"] = {"before": before, "after": after}
    run.log(f"   task accuracy on held-out queries (T=1 samples / greedy): "
            f"{100 * before['sampled']:.1f}% / {100 * before['greedy']:.1f}% before, "
             f"{100 * after['sampled']:.1f}% / {100 * after['greedy']:.1f}% after")

def task_accuracy(run, data, model: Path) -> dict:
    """Fraction of right answers to the held-out queries: temperature-1 samples and greedy."""
    from grm_jax.data.chat import ChatFormatter
    from grm_jax.demo.data import answer_of, query_text
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.rewards.rules import math_answer_reward
    from grm_jax.sampling import Greedy, Temperature, generate

    c = run.cfg
    cfg, params, _, tokenizer = load_with_tokenizer(model, progress=False)
    formatter = ChatFormatter(tokenizer)
    prompts = [formatter.prompt_ids(query_text(q)) for q in data.eval_queries]
    answers = [str(answer_of(q)) for q in data.eval_queries]
    out = {}
    for name, strategy, n in (("sampled", Temperature(1.0), c.endo_samples), ("greedy", Greedy(), 1)):
        s = generate(params, cfg, prompts, strategy=strategy, max_new_tokens=16, stop_tokens=formatter.stop_ids(),
                     num_samples=n, seed=c.seed + 5, pad_id=tokenizer.pad_token_id)
        texts = [tokenizer.decode(s.body(r), skip_special_tokens=True) for r in range(len(s.lengths))]
        out[name] = float(np.mean([math_answer_reward(t, answers[r // n]) > 0 for r, t in enumerate(texts)]))
    return out
