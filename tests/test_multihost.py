"""The multi-host path on this machine: two JAX processes x 4 fake CPU devices joined through
`jax.distributed.initialize` on loopback (gloo collectives) against one process x 8 devices, both
running tests/multihost_worker.py: a GRPO step with an Orbax checkpoint, a restore and a second
step, then an HF export; then SFT the same way. The results must be the same. And a SIGTERM
reaching one process only."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

WORKER = Path(__file__).with_name("multihost_worker.py")
TIMING = ("_s", "per_s", "mfu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(num_processes: int, model, data, sft_data, out: Path) -> dict:
    out.mkdir()
    port = _free_port()
    devices = 8 // num_processes
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(p), str(num_processes), str(port), str(devices),
                               str(model), str(data), str(sft_data), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(num_processes)]
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, "\n".join(line for line in log.splitlines() if "Gloo" not in line)[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mh")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Count to {i}."}) + "\n" for i in range(16)))
    rows = [{"prompt": f"Count to {i}.", "response": " ".join(str(k) for k in range(1, i + 2))} for i in range(16)]
    rows[4] = {"prompt": "no response"}  # row 5, a bad row of shard 0: reported by process 0
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "prompts.jsonl", root / "sft.jsonl"


def test_two_processes_equal_one_process_with_eight_devices(tmp_path, chat_model, data):
    one = _run(1, chat_model, *data, tmp_path / "one")
    two = _run(2, chat_model, *data, tmp_path / "two")
    assert (one["processes"], two["processes"]) == (1, 2) and one["devices"] == two["devices"] == 8
    for run in (one, two):
        assert run["status"] == ["stopped", "done"]  # step 1, then a restored run to step 2
        assert any("resumed from" in line and "checkpoints/1" in line for line in run["logs"]), run["logs"]
    assert [h["step"] for h in two["history"]] == [1, 2]
    for a, b in zip(one["history"], two["history"]):
        for key, value in a.items():
            if not key.endswith(TIMING):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)
    assert two["history"][0]["reward_std"] > 0 and two["history"][1]["kl"] > 0  # a real update happened

    initial = load_file(chat_model / "model.safetensors")
    got_one = load_file(tmp_path / "one" / "hf" / "model.safetensors")
    got_two = load_file(tmp_path / "two" / "hf" / "model.safetensors")
    assert set(got_one) == set(got_two) == set(initial)
    moved = max(float(np.abs(got_one[k] - initial[k]).max()) for k in initial)
    apart = max(float(np.abs(got_one[k] - got_two[k]).max()) for k in initial)
    assert moved > 1e-4 and apart < 1e-5, (moved, apart)
    # Only process 0 wrote: one metrics line per step, one TensorBoard event file per call.
    lines = (tmp_path / "two" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert len(list((tmp_path / "two" / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert not list((tmp_path / "two").glob(".*tmp-*"))  # atomic writes finished and renamed

    for run in (one, two):  # SFT: a step, a restore, a step; the bad row reported
        assert run["sft_status"] == ["stopped", "done"]
        assert any("resumed from" in line for line in run["sft_logs"])
        assert any("row 5" in line for line in run["sft_logs"]), run["sft_logs"]
    assert [h["step"] for h in two["sft_history"]] == [1, 2]
    for a, b in zip(one["sft_history"], two["sft_history"]):
        for key, value in a.items():
            if not key.endswith(TIMING):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)


def test_sigterm_on_one_host_saves_the_same_step_everywhere(tmp_path, chat_model, data):
    """A preemption notice reaching process 1 only: JAX's preemption service picks one step, both
    processes save it (Orbax, together) and exit with status 3."""
    port, out = _free_port(), tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "grm_jax.cli", "--coordinator", f"localhost:{port}",
                               "--num-processes", "2", "--process-id", str(p), "sft", f"model={chat_model}",
                               f"data={data[1]}", f"out={out}", "steps=100000", "batch_size=4", "max_length=64",
                               "save_every=100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for p in range(2)]
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    steps = []
    for p, log in zip(procs, logs):
        assert p.returncode == 3, "\n".join(x for x in log.splitlines() if "Gloo" not in x)[-3000:]
        steps.append(json.loads(log[log.index("{\n"):])["steps"])
    assert steps[0] == steps[1] >= 3
    assert (out / "checkpoints" / str(steps[0])).is_dir()
    assert "SIGTERM: saved step" in logs[0]
