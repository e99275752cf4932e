"""Stages `eval` and `baselines`: the judges' accuracy on the held-out items. Greedy after each
training stage; Voting@k and MetaRM@k from the same K samples; the scalar Bradley-Terry RM and
the LLM-as-judge baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _per_n(judged: dict) -> dict:
    groups: dict[str, list] = {}
    for r in judged["results"]:
        if r["correct"] is not None:
            groups.setdefault(f"n={len(r['item'].responses)}", []).append(bool(r["correct"]))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}



def greedy(run, data, name: str, model: Path, fmt: str = "multi") -> dict:
    """Greedy judging of the held-out items by `model`; the accuracy lands in results["greedy"][name]
    (and, with validation items, in results["validation"][name])."""
    from grm_jax.eval.judge import summarize

    judged = run.judge(model, data.eval_path, run.judge_opts(1, fmt=fmt))
    s = summarize(judged, "grm", {})
    row = {"accuracy": s.get("accuracy_at_1"), "parse_failure_rate": s["parse_failure_rate"],
           "per_n": _per_n(judged)}
    run.results.setdefault("greedy", {})[name] = row
    run.log(f"   {name}: greedy accuracy {100 * row['accuracy']:.1f}%  "
            f"parse failures {100 * row['parse_failure_rate']:.1f}%")
    if data.val_path is not None and fmt == "multi":  # the validation items, for searches (val_items)
        v = summarize(run.judge(model, data.val_path, run.judge_opts(1, fmt=fmt)), "grm", {})
        run.results.setdefault("validation", {})[name] = {"accuracy": v.get("accuracy_at_1"),
                                                          "parse_failure_rate": v["parse_failure_rate"]}
        run.log(f"   {name}: greedy accuracy on the {len(data.val)} validation items "
                f"{100 * v['accuracy_at_1']:.1f}%")
    return judged


def scaling(run, data, grm: Path, meta) -> None:
    """Voting@k and MetaRM@k, k = 1, 2, 4, .., K, from the same K samples per held-out item (and,
    with validation items, per validation item, in results["validation_scaling"])."""
    from grm_jax.eval.judge import summarize
    from grm_jax.eval.scaling import scaling_curve

    c = run.cfg
    opts = run.judge_opts(c.k)
    judged = run.judge(grm, data.eval_path, opts, meta=meta)
    ks = [2 ** i for i in range(c.k.bit_length())]
    run.results["voting"] = scaling_curve(dict(judged, k_meta=None), ks, opts)
    run.results["meta_voting"] = scaling_curve(judged, ks, opts)
    s = summarize(judged, "grm", {})
    run.results["sampling"] = {"sample_accuracy": s.get("sample_accuracy"),
                               "parse_failure_rate": s["parse_failure_rate"],
                               "temperature": c.temperature}
    run.results["timings"]["eval_prompts_per_s"] = s.get("prompts_per_s")
    for v, m in zip(run.results["voting"], run.results["meta_voting"]):
        run.log(f"   k={v['k']:>3d}  Voting@k {100 * v['accuracy']:.1f}%  MetaRM@k {100 * m['accuracy']:.1f}%")
    if data.val_path is not None:  # the same curves on the validation items, for searches (val_items)
        judged = run.judge(grm, data.val_path, opts, meta=meta)
        run.results["validation_scaling"] = {"voting": scaling_curve(dict(judged, k_meta=None), ks, opts),
                                             "meta_voting": scaling_curve(judged, ks, opts)}
        curve = {name: " / ".join(f"{100 * r['accuracy']:.1f}" for r in rows)
                 for name, rows in run.results["validation_scaling"].items()}
        run.log(f"   validation items, k = {ks}: Voting@k {curve['voting']}, MetaRM@k {curve['meta_voting']}")


def scalar_baseline(run, data, pretrained: Path) -> None:
    """Bradley-Terry RM from the pretrained LM on the train items' (right, wrong) pairs; accuracy =
    the right response scored highest on the held-out items."""
    import jax

    from grm_jax.data.chat import ChatFormatter
    from grm_jax.data.pipeline import collate
    from grm_jax.eval.judge import _jitted_values
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.train import scalar_rm
    from grm_jax.train.optim import OptimConfig, make_optimizer

    c = run.cfg
    cfg, params, _, tokenizer = load_with_tokenizer(pretrained, progress=False)
    formatter = ChatFormatter(tokenizer)
    pairs = []
    for it in data.train:
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
                                     seed=c.seed, progress=run.progress, desc="scalar BT RM", unrolled=True)
    fn = _jitted_values(cfg, None)
    hits, per_n = [], {}
    for it in data.held:
        b = collate([formatter.encode(it["prompt"], r, 256) for r in it["responses"]], rows=4)
        v = np.asarray(jax.device_get(fn(trained["decoder"], trained["head"], b["tokens"], b["positions"])))
        ok = it["rewards"][int(np.argmax(v[:len(it["responses"])]))] == 1
        hits.append(ok)
        per_n.setdefault(it["subset"], []).append(ok)
    acc = float(np.mean(hits))
    run.results["scalar_rm"] = {"accuracy": acc, "pairs": len(pairs), "steps": c.scalar_steps,
                                "per_n": {k: float(np.mean(v)) for k, v in sorted(per_n.items())},
                                "train_accuracy_last10": float(np.mean([h["accuracy"] for h in history[-10:]]))}
    run.histories["scalar_rm"] = history
    run.log(f"   scalar BT RM: held-out accuracy {100 * acc:.1f}%")
