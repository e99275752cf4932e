"""The train loop shared by `sft`, `rft` and `grpo`: resume, dispatch, metrics, checkpoints, SIGTERM.

The device loop is never blocked on metrics: step N is dispatched, then step N−1's metrics are
fetched and written (RUN/metrics.jsonl, one line per step, and TensorBoard scalars under
RUN/tensorboard). A SIGTERM (a TPU VM being preempted, a scheduler
stopping the job) sets a flag; after the current step the loop saves a checkpoint, waits for it to
be written and returns, so the run resumes from there. With several processes, JAX's preemption
service (started by `jax.distributed.initialize`) picks the step at which every process saves.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from grm_jax.atomic import atomic_write_text
from grm_jax.train.run_checkpoint import RESUMABLE_CHANGES, RunCheckpointer, abstract_like, identity_changes


class _Preempted:
    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            self.flag = True
        if jax.process_count() > 1:  # JAX's preemption service catches SIGTERM itself
            return self
        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _trim_steps(path: Path, last_step: int) -> None:
    """Drops JSONL lines whose "step" is after `last_step` (written after the checkpoint a run
    resumes from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in keep), overwrite=True)


def run_loop(step_fn: Callable, state, batches: Iterator[dict], *, checkpointer: RunCheckpointer,
             run_config: dict, total_steps: int, save_every: int, run_dir: str | Path,
             data_state: Callable[[], dict], restore_data: Callable[[dict], None],
             stop_after: int | None = None, progress: bool = True, log=print,
             step_files: tuple[Path, ...] = ()):
    """Trains until `total_steps` (or `stop_after` steps this call, or SIGTERM). `step_files`
    are this process's own JSONL files of per-step rows (a "step" field each, as in
    metrics.jsonl): on a resume the rows after the checkpoint's step are dropped, on a fresh start
    all of them.

    Returns (state, metrics history of this call, "done" | "stopped" (by `stop_after`) |
    "preempted").
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    main = jax.process_index() == 0  # only process 0 writes metrics, TensorBoard and the bar
    saved_steps = checkpointer.steps()
    if saved_steps:  # a resume: the checkpoints must be this run's
        changes = identity_changes(checkpointer.saved_config(saved_steps[-1]), run_config)
        if changes:
            raise ValueError(f"{checkpointer.directory} holds checkpoints of another run; resuming would "
                             f"mix them: {'; '.join(changes[:6])}. Rerun with the same settings (only "
                             f"{', '.join(RESUMABLE_CHANGES)} may change) or choose another out")
    restored = checkpointer.restore(abstract_like(state), log=log)
    start = 0
    if restored is not None:
        start, state, data, _ = restored
        if start > total_steps:
            raise ValueError(f"{checkpointer.directory}: the run is at step {start}, past steps={total_steps}; "
                             f"set steps >= {start} to go on")
        restore_data(data)
        if main:
            _trim_steps(metrics_path, start)
            log(f"resumed from {checkpointer.directory / str(start)} (step {start} of {total_steps})")
    for path in step_files:  # rows of steps after the checkpoint (all rows on a fresh start) go
        _trim_steps(Path(path), start)
    end = total_steps if stop_after is None else min(total_steps, start + stop_after)
    history, pending, status = [], None, "done" if end == total_steps else "stopped"
    writer = SummaryWriter(str(run_dir / "tensorboard")) if main else None
    bar = tqdm(total=total_steps, initial=start, desc="training", unit="step", disable=not (progress and main))

    def flush(item, t_next):
        step, metrics, t_dispatch = item
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        # From this step's dispatch to the next one's (or to now): the loop's period.
        values = {"step": step, **values, "step_s": round(t_next - t_dispatch, 4)}
        history.append(values)
        if not main:
            return
        with metrics_path.open("a") as f:
            f.write(json.dumps(values) + "\n")
        for key, value in values.items():
            if key != "step":
                writer.add_scalar(key, value, step)
        bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")

    with _Preempted() as preempt:
        step = start
        while step < end:
            batch = next(batches)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            step += 1
            if pending:
                flush(pending, t0)
            pending = (step, metrics, t0)
            bar.update(1)
            preempted = preempt.flag
            if jax.process_count() > 1:
                # JAX's preemption service turns a SIGTERM on any host into one agreed step.
                preempted = multihost_utils.reached_preemption_sync_point(step)
            if preempted or step == end or step % save_every == 0:
                checkpointer.save(step, state, data_state(), run_config, force=True)
            if preempted:
                status = "preempted"
                log(f"SIGTERM: saved step {step} to {checkpointer.directory}; exiting")
                break
        if pending:
            flush(pending, time.perf_counter())
    checkpointer.wait()
    if writer is not None:
        writer.close()
    bar.close()
    return state, history, status


def open_run(out: str | Path, model: str, mesh_spec: str | None, *, progress: bool = True):
    """(run dir, mesh, model config, params, tokenizer dir, tokenizer) for a training run that
    has not finished (OUT/final must not exist)."""
    from grm_jax.loading import load_with_tokenizer
    from grm_jax.sharding import mesh_from_spec

    out = Path(out)
    if (out / "final").exists():
        raise FileExistsError(f"{out / 'final'} exists: this run is finished (choose another out)")
    out.mkdir(parents=True, exist_ok=True)
    mesh = mesh_from_spec(mesh_spec)
    model_cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, mesh=mesh, progress=progress)
    return out, mesh, model_cfg, params, tok_dir, tokenizer
