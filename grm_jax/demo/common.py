"""What the demo's stages share: the run folder, the settings, the results and the log, and the
steps several stages take (an SFT run, a GRPO run, judging items with a model).

Everything measured in seconds goes into `results["timings"]` and nowhere else, so two runs of one
seed on one machine give the same results.json once that key is dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from grm_jax.atomic import atomic_write_text
from grm_jax.demo.config import GRM_TEMPLATE, JUDGE_TEMPLATE, DemoConfig


def write_jsonl(path: Path, rows) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    """A training run's metrics.jsonl rows ([] when it has none)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def quarters(values) -> dict:
    """Mean of the first and the last quarter of a training curve and the standard error of
    their difference (the steps taken as independent)."""
    v = np.asarray(values, dtype=np.float64)
    q = max(1, len(v) // 4)
    first, last = v[:q], v[-q:]
    se = float(np.sqrt(first.var(ddof=1) / q + last.var(ddof=1) / q)) if q > 1 else None  # needs 2 steps a quarter
    return {"first_quarter": float(first.mean()), "last_quarter": float(last.mean()), "steps_per_quarter": q,
            "rise": float(last.mean() - first.mean()), "rise_se": se}


def format_se(se) -> str:
    return "n/a" if se is None else f"{se:.3f}"


class DemoRun:
    """One demo run: its settings, folder, results dict and log, and the shared steps."""

    def __init__(self, cfg: DemoConfig, out: Path, *, progress: bool = True, log=print):
        self.cfg, self.out, self.progress, self.log = cfg, out, progress, log
        config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
        self.results: dict = {"config": config, "timings": {"stages": {}}}
        self.histories: dict[str, list] = {}  # in-memory training curves for the plots
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Logs the stage's start and records its seconds in results["timings"]["stages"]."""
        t = time.perf_counter()
        self.log(f"\n== {name} ==")
        yield
        secs = self.results["timings"]["stages"][name] = round(time.perf_counter() - t, 1)
        self.log(f"   {name}: {secs} s (total {time.perf_counter() - self.t0:.0f} s)")

    def sft(self, name: str, model: Path, data: Path, steps: int, lr: float) -> Path:
        """SFT of `model` on `data` (chat rows) into OUT/name; returns the final model's folder."""
        from grm_jax.train.optim import OptimConfig
        from grm_jax.train.sft import SFTConfig, run_sft

        c = self.cfg
        cfg = SFTConfig(model=str(model), data=str(data), out=str(self.out / name), steps=steps,
                        batch_size=c.batch_size, max_length=256, seed=c.seed, save_every=steps, keep=1,
                        unroll_layers=True,
                        optim=OptimConfig(lr=lr, warmup_steps=min(20, steps // 10), total_steps=steps,
                                          min_lr_ratio=0.1, weight_decay=0.0, b2=0.99))
        summary, _ = run_sft(cfg, progress=self.progress, log=self.log)
        if summary["status"] != "done":
            raise RuntimeError(f"{name}: SFT stopped: {summary}")
        self.log(f"   {name}: final loss {summary['last']['loss']:.3f}")
        return Path(summary["final"])

    def grpo(self, name: str, model: Path, data: Path, *, reward: str, steps: int, prompts: int, group_size: int,
             lr: float, beta: float, max_new_tokens: int) -> Path:
        """GRPO of `model` on `data`'s prompts into OUT/name; records the reward's rise from the
        first to the last quarter of the steps; returns the final model's folder."""
        from grm_jax.train.grpo import GRPOConfig
        from grm_jax.train.grpo_run import run_grpo
        from grm_jax.train.optim import OptimConfig

        c = self.cfg
        cfg = GRPOConfig(model=str(model), data=str(data), out=str(self.out / name), reward=reward,
                         grm_format="multi", grm_template=GRM_TEMPLATE, steps=steps, prompts_per_step=prompts,
                         group_size=group_size, max_new_tokens=max_new_tokens, max_prompt_length=256,
                         temperature=1.0, unroll_layers=True, shared_prompt=True, beta=beta, seed=c.seed,
                         save_every=steps, keep=1,
                         optim=OptimConfig(lr=lr, total_steps=steps, schedule="constant", b2=0.99))
        summary, history = run_grpo(cfg, progress=self.progress, log=self.log)
        if summary["status"] != "done":
            raise RuntimeError(f"{name}: GRPO stopped: {summary}")
        row = quarters([h["reward_mean"] for h in history])
        row["kl_last"] = history[-1]["kl"]
        self.results.setdefault("grpo_runs", {})[name] = row
        self.log(f"   {name}: mean reward {row['first_quarter']:+.3f} (first {row['steps_per_quarter']} steps) -> "
                 f"{row['last_quarter']:+.3f} (last {row['steps_per_quarter']}); rise {row['rise']:+.3f} "
                 f"± {format_se(row['rise_se'])} (standard error)")
        return Path(summary["final"])

    def judge_opts(self, k: int = 1, *, fmt: str = "multi", temperature: float | None = None):
        from grm_jax.eval.judge import JudgeOptions

        c = self.cfg
        return JudgeOptions(k=k, temperature=c.temperature if temperature is None else temperature,
                            max_new_tokens=c.max_new_tokens, batch_size=c.judge_batch, seed=c.seed,
                            format=fmt, template=GRM_TEMPLATE if fmt == "multi" else JUDGE_TEMPLATE)

    def judge(self, model: Path, data: Path, opts, meta=None, hinted: bool = False) -> dict:
        """`grm_jax.eval.judge.judge_items` of `model` on the GRM items in `data`."""
        from grm_jax.data.grm_items import read_items
        from grm_jax.eval.judge import judge_items
        from grm_jax.loading import load_with_tokenizer

        items, bad, _ = read_items(data)
        if bad:
            raise RuntimeError(f"{data}: bad rows {bad}")
        cfg, params, _, tokenizer = load_with_tokenizer(model, progress=False)
        return judge_items(params, cfg, tokenizer, items, opts, meta=meta, progress=self.progress, hinted=hinted)
