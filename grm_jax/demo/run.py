"""`grm-jax demo`: the whole method, from nothing, on a synthetic judging task, on CPU.

Stages, in order (one module each; every stage writes into the run folder; numbers are measured
on held-out items):
  data        train / held-out items of the arithmetic judging task, the pretraining corpus
  tokenizer and model  a byte-level BPE trained on the corpus (HF format, ChatML template) and a
              tiny Qwen2-family model from random init                        (pretrain.py)
  pretrain    next-token loss on the corpus replies                           (pretrain.py)
  rft         N_RFT samples per item + one hinted sample, rejection by Eq. 10, SFT on the kept ones
  grpo        GRPO with the Eq. 10 rule reward (+1 / -1) and a k3 KL penalty to the RFT model
  meta_rm     a value head + decoder (from the pretrained LM) trained by BCE on whether a GRM
              sample is correct
  eval        greedy per stage; Voting@k and MetaRM@k for k = 1..K from the same K samples
  baselines   a scalar Bradley-Terry RM on the train items' pairs; the LLM-as-judge format
  endogenous  the pretrained LM's own endogenous reward: accuracy against chance, a system prompt
              steering it, GRPO of the policy against it (task accuracy before and after)
  export      the final GRM to an HF directory, reloaded with transformers, logits compared
  report      results.json, results.md (the tables), scaling.png, training.png
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from grm_jax.demo import data as demo_data
from grm_jax.demo import endogenous, evaluation, export, grpo, meta_rm, pretrain, rft
from grm_jax.demo.common import DemoRun
from grm_jax.demo.config import DemoConfig
from grm_jax.demo.report import write_report


def prepare_out(cfg: DemoConfig, overwrite: bool) -> Path:
    """The run folder, empty; an existing one is replaced only with `overwrite`, and only when it
    holds a demo run."""
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

    run = DemoRun(cfg, prepare_out(cfg, overwrite), progress=progress, log=log)
    log(f"grm-jax demo: seed {cfg.seed}, run folder {run.out}, JAX on {jax.devices()[0].platform}")
    with run.stage("data"):
        data = demo_data.build(run)
    with run.stage("tokenizer and model"):
        init = pretrain.build_model(run, data)
    with run.stage("pretrain"):
        pretrained = pretrain.pretrain(run, data, init)
        evaluation.greedy(run, data, "pretrained", pretrained)
    with run.stage("rft"):
        rft_model, rft_judged = rft.run_rft(run, data, pretrained)
        evaluation.greedy(run, data, "rft", rft_model)
    with run.stage("grpo"):
        grm = grpo.run_grpo(run, data, rft_model, rft_judged)
        evaluation.greedy(run, data, "grpo", grm)
    with run.stage("meta_rm"):
        meta = meta_rm.train_meta_rm(run, data, grm, rft_judged, pretrained)
    with run.stage("eval"):
        evaluation.scaling(run, data, grm, meta)
    with run.stage("baselines"):
        evaluation.scalar_baseline(run, data, pretrained)
        evaluation.greedy(run, data, "llm_as_judge", pretrained, fmt="judge")
    with run.stage("endogenous"):
        endogenous.run_endogenous(run, data, pretrained)
    with run.stage("export"):
        export.run_export(run, data, grm)
    run.results["timings"]["total_s"] = round(time.perf_counter() - run.t0, 1)
    with run.stage("report"):
        table = write_report(run)
    log("\n" + table)
    log(f"\nwritten to {run.out} (results.json, results.md, scaling.png, training.png) in "
        f"{run.results['timings']['total_s']} s")
    return run.results
