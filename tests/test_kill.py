"""SIGKILL at the worst moment, then the same command again: training resumes from the last
complete checkpoint step, an export leaves nothing or a complete directory, and neither leaves
temporary files behind once rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_resume import _cfg, _sft_data

from grm_jax.cli import main
from grm_jax.train.sft import run_sft

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def _kill_when(cmd, seen, timeout=240):
    """Starts `cmd`, SIGKILLs it the moment `seen()` is true; returns what `seen` returned."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, hit = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None and not (hit := seen()):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert hit, f"never saw the moment to kill (exit {proc.returncode}): {output[-2000:]}"
    return hit


def test_sigkill_during_an_orbax_save_resumes_from_the_last_complete_step(tmp_path, chat_model):
    data = _sft_data(tmp_path / "sft.jsonl", n=40)
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    cmd = [sys.executable, "-m", "grm_jax.cli", "sft", f"model={chat_model}", f"data={data}", f"out={out}",
           "steps=100000", "batch_size=4", "max_length=64", "save_every=1", "chunk=16", "optim.lr=1e-3",
           "optim.warmup_steps=1"]  # the settings _cfg resumes it with

    def saving():
        """A step being written (Orbax's temporary name) after at least one finalized step."""
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        done = [n for n in names if n.isdigit() and (checkpoints / n / "_CHECKPOINT_METADATA").exists()]
        writing = [n for n in names if "tmp" in n]
        return (sorted(done, key=int), writing) if done and writing else None

    done, writing = _kill_when(cmd, saving)
    logs = []
    summary, _ = run_sft(_cfg(chat_model, data, out, steps=100000, save_every=1), progress=False, stop_after=1,
                         log=logs.append)
    resumed = int(next(m for m in logs if "resumed from" in m).split("(step ")[1].split(" ")[0])
    # The newest finalized step (or a later one finalized before the kill landed), never the one
    # being written when it did.
    assert resumed >= int(done[-1]) and summary["steps"] == resumed + 1, (done, writing, logs)
    assert not any("cannot be restored" in m for m in logs), logs
    assert not [p.name for p in checkpoints.iterdir() if "tmp" in p.name], sorted(os.listdir(checkpoints))


def test_sigkill_during_export_leaves_nothing_partial_and_no_litter(tmp_path, chat_model):
    src = tmp_path / "ckpt"
    assert main(["import-hf", str(chat_model), str(src)]) == 0
    out = tmp_path / "exported"
    cmd = [sys.executable, "-m", "grm_jax.cli", "export-hf", str(src), str(out)]

    def writing():
        return [p.name for p in tmp_path.iterdir() if p.name.startswith(".exported.tmp-")] or None

    _kill_when(cmd, writing)
    assert not out.exists()  # the half-written export is only ever under its temporary name
    assert main(["export-hf", str(src), str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "exported"]  # the dead writer's temp: gone
    assert json.loads((out / "config.json").read_text())["model_type"]
