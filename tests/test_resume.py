"""Exact resume, SIGTERM, unreadable checkpoints, and the shipped train configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from grm_jax.config import load_config
from grm_jax.train.sft import SFTConfig, run_sft

ROOT = Path(__file__).resolve().parents[1]


def _sft_data(path, n=24):
    rows = [{"prompt": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}."} for i in range(n)]
    rows.append({"prompt": "no response"})  # a bad row, reported
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(chat_model, data, out, **kw):
    overrides = [f"model={chat_model}", f"data={data}", f"out={out}", "steps=6", "batch_size=4",
                 "max_length=64", "save_every=2", "optim.lr=1e-3", "optim.warmup_steps=1", "chunk=16"]
    return load_config(SFTConfig, None, overrides + [f"{k}={v}" for k, v in kw.items()])


def _params(path):
    from grm_jax.train.model_checkpoint import load_model
    return load_model(path)[1]


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, chat_model):
    data = _sft_data(tmp_path / "sft.jsonl")
    whole, _ = run_sft(_cfg(chat_model, data, tmp_path / "a"), progress=False, log=lambda *_: None)
    assert whole["status"] == "done" and whole["bad_rows"] == 1 and whole["steps"] == 6
    first, _ = run_sft(_cfg(chat_model, data, tmp_path / "b"), progress=False, stop_after=3, log=lambda *_: None)
    assert first["status"] == "stopped" and first["steps"] == 3
    logs = []
    second, _ = run_sft(_cfg(chat_model, data, tmp_path / "b"), progress=False, log=logs.append)
    assert second["status"] == "done" and any("resumed from" in m and "step 3" in m for m in logs)
    a, b = _params(tmp_path / "a" / "final"), _params(tmp_path / "b" / "final")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ma = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]
    with pytest.raises(FileExistsError, match="finished"):
        run_sft(_cfg(chat_model, data, tmp_path / "b"), progress=False)


def test_resume_refuses_another_run_in_the_same_out(tmp_path, chat_model, grm_model):
    """Resuming must continue the same run (issue 16, item 3): another model, data, batch or
    optimizer setting in the same out is refused naming what differs, before anything is
    restored; steps below the saved step too. How long and how it saves may change."""
    data = _sft_data(tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    run_sft(_cfg(chat_model, data, out), progress=False, stop_after=3, log=lambda *_: None)
    with pytest.raises(ValueError, match="another run.*model: "):
        run_sft(_cfg(grm_model, data, out), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 -> 0\.002"):
        run_sft(_cfg(chat_model, data, out, **{"optim.lr": 2e-3}), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="batch_size: 4 -> 2"):
        run_sft(_cfg(chat_model, data, out, batch_size=2), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="past steps=2"):
        run_sft(_cfg(chat_model, data, out, steps=2), progress=False, log=lambda *_: None)
    assert not (out / "final").exists()
    logs = []
    summary, _ = run_sft(_cfg(chat_model, data, out, save_every=3), progress=False, log=logs.append)
    assert summary["status"] == "done" and any("resumed from" in m and "step 3" in m for m in logs)


def test_an_unreadable_step_falls_back_to_the_previous_one(tmp_path, chat_model):
    data = _sft_data(tmp_path / "sft.jsonl")
    run_sft(_cfg(chat_model, data, tmp_path / "r"), progress=False, stop_after=4, log=lambda *_: None)
    step4 = tmp_path / "r" / "checkpoints" / "4" / "state"
    victims = [p for p in step4.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in victims:
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    logs = []
    summary, _ = run_sft(_cfg(chat_model, data, tmp_path / "r"), progress=False, stop_after=1, log=logs.append)
    assert any("cannot be restored" in m and "falling back to step 2" in m for m in logs), logs
    assert any("resumed from" in m and "step 2" in m for m in logs)
    assert summary["steps"] == 3


def test_sigterm_saves_a_restorable_checkpoint(tmp_path, chat_model):
    data = _sft_data(tmp_path / "sft.jsonl", n=40)
    out = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "grm_jax.cli", "sft", f"model={chat_model}", f"data={data}", f"out={out}",
           "steps=100000", "batch_size=4", "max_length=64", "save_every=100000", "chunk=16", "optim.lr=1e-3",
           "optim.warmup_steps=1"]  # the settings _cfg resumes it with
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    assert metrics.exists(), proc.communicate(timeout=60)[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 3, output[-2000:]
    assert "SIGTERM: saved step" in output
    logs = []
    summary, _ = run_sft(_cfg(chat_model, data, out, steps=100000), progress=False, stop_after=1, log=logs.append)
    saved = int(next(m for m in logs if "resumed from" in m).split("(step ")[1].split(" ")[0])
    assert saved >= 3 and summary["steps"] == saved + 1


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_train_configs_load(path):
    from grm_jax.train.grpo import GRPOConfig

    cls = GRPOConfig if path.name.startswith("grpo") else SFTConfig
    cfg = load_config(cls, path, ["model=m", "data=d", "out=o"])
    assert cfg.steps > 0 and cfg.optim.lr > 0
    with pytest.raises(ValueError, match="config"):
        load_config(cls, path, ["model=m", "data=d", "out=o", "no_such_key=1"])
