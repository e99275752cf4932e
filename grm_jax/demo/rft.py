"""Stage `rft`: rejective fine-tuning (PAPERS.md A, SPCT stage 1). N_RFT samples per item and one
hinted sample from the pretrained GRM, rejection by Eq. 10, SFT on the kept trajectories mixed
with plain Q/A rows."""

from __future__ import annotations

from pathlib import Path

from grm_jax.demo.common import write_jsonl


def run_rft(run, data, pretrained: Path) -> tuple[Path, dict]:
    """Returns (the RFT model's folder, the judged RFT samples, which the meta RM trains on)."""
    from grm_jax.train.rft import select_trajectories

    c = run.cfg
    judged = run.judge(pretrained, data.rft_path, run.judge_opts(c.n_rft, temperature=c.rft_temperature),
                       hinted=True)
    rows, counts = select_trajectories(judged, c.n_rft)
    # "mixed with general instruction data": the corpus's plain Q/A rows, one per kept trajectory
    # while they last (432 in the default corpus, fewer than the trajectories of 1,500 items)
    qa = [r for r in data.corpus if len(r["messages"]) == 2 and r["messages"][0]["content"].startswith("What")]
    mix = rows + qa[:len(rows)]
    run.results["rft"] = {**counts, "instruction_rows": len(mix) - len(rows)}
    run.log(f"   RFT: {counts['kept']} trajectories kept ({counts['kept_hinted']} hinted) from "
            f"{counts['items']} items; {counts['too_easy']} too easy, {counts['all_wrong']} all wrong")
    if len(mix) < c.batch_size:
        run.results["rft"]["sft"] = "skipped: fewer kept rows than a batch"
        run.log("   RFT: too few kept trajectories for a batch; the RFT model is the pretrained one")
        return pretrained, judged
    path = write_jsonl(run.out / "rft" / "kept.jsonl", mix)
    return run.sft("rft/sft", pretrained, path, c.rft_steps, c.rft_lr), judged
