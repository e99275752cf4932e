"""Stage `grpo`: rule-based online RL of the RFT model (PAPERS.md A, SPCT stage 2): GRPO with the
Eq. 10 reward (+1 / -1) and a k3 KL penalty to the RFT model, on the train items (with
`grpo_mixed_only`, only the RFT items whose N_RFT samples disagreed: a curriculum, our choice,
named in configs/demo/EXPERIMENTS.md)."""

from __future__ import annotations

from pathlib import Path


def mixed_items(judged: dict, n: int) -> list[int]:
    """Indices of the judged items whose first n samples hold both a right and a wrong one (an
    unparsed sample counts as wrong: the GRPO reward gives it -1); the hinted sample is left out."""
    out = []
    for r in judged["results"]:
        right = [bool(s.get("correct")) for s in r["samples"][:n]]
        if any(right) and not all(right):
            out.append(r["index"])
    return out


def run_grpo(run, data, rft_model: Path, rft_judged: dict) -> Path:
    """Returns the GRPO model's folder (the final GRM)."""
    from grm_jax.demo.common import write_jsonl
    from grm_jax.demo.data import grm_item_row

    c = run.cfg
    items = data.train_path
    if c.grpo_mixed_only:
        keep = mixed_items(rft_judged, c.n_rft)
        if len(keep) >= c.grpo_prompts:
            items = write_jsonl(run.out / "grpo_items.jsonl", [grm_item_row(data.train[i]) for i in keep])
            run.log(f"   GRPO on the {len(keep)} RFT items whose samples disagreed")
        else:  # a model too weak or too strong for the curriculum (fast.yaml's): said, recorded, not hidden
            run.log(f"   GRPO: warning: only {len(keep)} RFT items had both right and wrong samples, fewer "
                    f"than grpo_prompts={c.grpo_prompts}; GRPO runs on all train items instead")
        run.results["grpo_items"] = {"mixed_only": True, "mixed": len(keep), "used_all": len(keep) < c.grpo_prompts}
    return run.grpo("grpo", rft_model, items, reward="grm", steps=c.grpo_steps, prompts=c.grpo_prompts,
                    group_size=c.group_size, lr=c.grpo_lr, beta=c.grpo_beta, max_new_tokens=c.max_new_tokens)
