"""Stage `meta_rm`: the meta RM (PAPERS.md A, "Meta RM guided voting"): a decoder with a value
head, trained by BCE on whether a GRM sample is correct by Eq. 10. Its input is the GRM prompt,
the sample, and the sample's verdict spelled out (`grm_jax.rewards.grm.meta_verdict`: the
response its scores put on top, with its text; our extension, configs/demo/EXPERIMENTS.md row O).
It trains on the non-hinted RFT samples of the first `meta_rft_items` RFT items and `meta_samples`
samples per item of the trained GRM (with `meta_mixed_only`, only the items whose samples
disagree: our choice, named in configs/demo/EXPERIMENTS.md). The decoder starts from the
pretrained LM (`meta_init: pretrained`, the default) or from the trained GRM (`meta_init: grm`);
the paper says only "a value head on an LM" (configs/demo/EXPERIMENTS.md, rows M, for why the
pretrained LM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from grm_jax.demo.config import META_TEMPLATE


def meta_trajectories(judged_sets, mixed_only: bool) -> tuple[list[tuple[object, str, dict, int]], int]:
    """(item, prompt, sample, 1 if correct else 0) of the first n samples of every item in each
    (judged, n) pair (the hinted sample, index n, left out; an unparsed sample is incorrect; samples
    of items without a unique best response have no label and are left out), and how many labelled
    samples `mixed_only` left out (items whose samples all agree)."""
    out, skipped = [], 0
    for judged, n in judged_sets:
        for r in judged["results"]:
            rows = [(j, s) for j, s in enumerate(r["samples"][:n]) if "correct" in s]
            if mixed_only and len({bool(s["correct"]) for _, s in rows}) < 2:
                skipped += len(rows)  # all right or all wrong: nothing to tell apart within the item
                continue
            out += [(r["item"], r["prompts"][j], s, int(bool(s["correct"]))) for j, s in rows]
    return out, skipped


def first_items(judged: dict, n: int) -> dict:
    """`judged` with only the results of its first n items (by index in the judged file)."""
    return dict(judged, results=[r for r in judged["results"] if r["index"] < n])


def train_meta_rm(run, data, grm: Path, rft_judged: dict, pretrained: Path):
    """Trains the meta RM on the non-hinted RFT samples (of the first meta_rft_items items) and
    meta_samples per item of the trained GRM, its decoder initialized from `pretrained` or `grm`
    (meta_init); returns a MetaRM."""
    from grm_jax.train.model_checkpoint import save_model

    c = run.cfg
    fresh = run.judge(grm, data.meta_path, run.judge_opts(c.meta_samples))
    # The RFT samples of the first meta_rft_items items only: the pretrained GRM's T = 1 samples
    # of all 1,500 train items would outnumber the trained GRM's samples it must rank 5 to 1.
    rft_part = first_items(rft_judged, c.meta_rft_items)
    trajectories, skipped = meta_trajectories(((rft_part, c.n_rft), (fresh, c.meta_samples)), c.meta_mixed_only)
    if not trajectories:
        raise RuntimeError(f"meta RM: no trajectories to train on ({skipped} left out by meta_mixed_only); "
                           "raise meta_items or meta_samples")
    meta, history, labels, tok_dir = fit_meta_rm(
        pretrained if c.meta_init == "pretrained" else grm, trajectories, steps=c.meta_steps, lr=c.meta_lr,
        batch_size=c.batch_size, seed=c.seed, by_length=c.meta_batches == "by_length", progress=run.progress,
        log=run.log)
    save_model(run.out / "meta_rm", meta.params, meta.config,
               tokenizer_files=[p for p in Path(tok_dir).iterdir() if p.is_file()],
               extra_arrays={"value_head": meta.head})
    run.results["meta_rm"] = {"init": c.meta_init, "examples": len(labels), "skipped_unanimous": skipped,
                              "positive_fraction": float(labels.mean()),
                              "balanced_batches": bool(0 < labels.sum() < len(labels)),
                              "train_accuracy_last10": float(np.mean([h["accuracy"] for h in history[-10:]]))}
    run.histories["meta_rm"] = history
    run.log(f"   meta RM: {len(labels)} trajectories ({100 * labels.mean():.0f}% correct), "
            f"train accuracy (last 10 steps) {100 * run.results['meta_rm']['train_accuracy_last10']:.0f}%")
    return meta


def length_grouped_batches(lengths, labels, batch_size: int, rng: np.random.Generator,
                           pool: int = 8) -> list[np.ndarray]:
    """`pool` batches of row indices (`meta_batches: by_length`, an option of ours; EXPERIMENTS.md
    row X), each half correct and half incorrect samples, rows of like length together:
    `pool` * batch_size/2 rows of each class are drawn (without replacement while the class has
    enough rows), each class is sorted by length and cut into `pool` runs, and batch i is run i of
    both classes; the batches come in random order. Each batch pads to its own longest row, so
    less of a step is padding. With one class only, the rows are drawn from it alone."""
    labels = np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    classes = [pos, neg] if len(pos) and len(neg) else [np.arange(len(labels))]
    per = batch_size // len(classes)
    runs = []
    for rows in classes:
        drawn = rng.choice(rows, pool * per, replace=len(rows) < pool * per)
        drawn = drawn[np.argsort(np.asarray(lengths)[drawn], kind="stable")]
        runs.append(drawn.reshape(pool, per))
    batches = [np.concatenate([r[i] for r in runs]) for i in range(pool)]
    return [batches[i] for i in rng.permutation(pool)]


def padded_length(n: int, multiple: int = 32) -> int:
    """n rounded up to a multiple of `multiple`: few distinct batch shapes (compiled programs)."""
    return -(-n // multiple) * multiple


def fit_meta_rm(init: Path, trajectories, *, steps: int, lr: float, batch_size: int, seed: int,
                by_length: bool = False, progress: bool = True, log=print):
    """A value head and the decoder of the model at `init`, trained by BCE on `trajectories`
    ((item, GRM prompt, sample, label) as `meta_trajectories` gives them) in class-balanced
    batches (our choice; the paper gives no sampling detail: half correct, half incorrect samples,
    so the head cannot settle on the majority label), drawn one at a time or, with `by_length`,
    `length_grouped_batches`. Returns (MetaRM, per-step metrics, the labels, the tokenizer's folder)."""
    from grm_jax.data.chat import ChatFormatter, Encoded
    from grm_jax.data.pipeline import collate
    from grm_jax.eval.judge import MetaRM, meta_input
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.models.value_head import shared_prefix
    from grm_jax.rewards.grm import load_template
    from grm_jax.train import scalar_rm
    from grm_jax.train.optim import OptimConfig, make_optimizer

    template = load_template(META_TEMPLATE)
    cfg, params, tok_dir, tokenizer = load_with_tokenizer(init, progress=False)
    formatter = ChatFormatter(tokenizer)
    examples = [Encoded(formatter.prompt_ids(meta_input(template, item, prompt, sample)), 0)
                for item, prompt, sample, _ in trajectories]
    labels = np.asarray([label for *_, label in trajectories])
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    half = batch_size // 2
    balanced = bool(len(pos) and len(neg))
    if not balanced:
        log(f"   meta RM: warning: {len(pos)} correct and {len(neg)} incorrect samples; "
            "training on one class, so it cannot tell them apart")
    lengths = np.asarray([e.end for e in examples])

    def batches():
        while True:
            if by_length:
                for idx in length_grouped_batches(lengths, labels, batch_size, rng):
                    yield batch(idx, padded_length(int(lengths[idx].max())))
            else:  # one at a time: half correct, half incorrect samples, padded to a length bucket
                yield batch(np.concatenate([rng.choice(pos, half, replace=len(pos) < half),
                                            rng.choice(neg, half, replace=len(neg) < half)]) if balanced else
                            rng.choice(len(labels), batch_size, replace=len(labels) < batch_size))

    def batch(idx, length=None):
        b = collate([examples[i] for i in idx], length=length)
        return {"tokens": b["tokens"], "positions": b["positions"], "labels": labels[idx].astype(np.float32)}

    opt = make_optimizer(OptimConfig(lr=lr, total_steps=steps, warmup_steps=min(10, steps // 2), b2=0.99))
    # The meta template's opening (and the GRM prompt's, up to the query) runs once per batch.
    prefix = shared_prefix([e.ids for e in examples])
    trained, history = scalar_rm.fit(params, cfg, batches(), loss="bce", steps=steps, optimizer=opt,
                                     seed=seed, progress=progress, desc="meta RM", unrolled=True, prefix=prefix)
    return MetaRM(trained["decoder"], trained["head"], cfg, formatter, template), history, labels, tok_dir
