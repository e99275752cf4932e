"""One process of the multi-host check (tests/test_multihost.py starts it; not a test itself).

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES MODEL DATA SFT_DATA OUT

With NUM_PROCESSES > 1 the process joins the others through `jax.distributed.initialize` on
localhost:PORT. Every process then runs the same work on a 2 x 4 (fsdp x tensor) mesh over all
devices: one GRPO step (a checkpoint saved by Orbax), a second call that restores it and runs
step 2, then an HF export of the final model; then SFT the same way (a step, a restore, a step).
Process 0 writes OUT/result.json.
"""

import json
import os
import sys
from pathlib import Path

process_id, num_processes, port, devices = map(int, sys.argv[1:5])
model, data, sft_data, out = sys.argv[5], sys.argv[6], sys.argv[7], Path(sys.argv[8])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import jax  # noqa: E402

from grm_jax import distributed  # noqa: E402

if num_processes > 1:
    distributed.initialize(f"localhost:{port}", num_processes, process_id, log=lambda *_: None)

from grm_jax.config import load_config  # noqa: E402
from grm_jax.hf import export_hf  # noqa: E402
from grm_jax.sharding import mesh_from_spec  # noqa: E402
from grm_jax.train.model_checkpoint import load_model  # noqa: E402
from grm_jax.train.grpo import GRPOConfig  # noqa: E402
from grm_jax.train.grpo_run import run_grpo  # noqa: E402
from grm_jax.train.sft import SFTConfig, run_sft  # noqa: E402

MESH = "fsdp=-1,tensor=2"
cfg = load_config(GRPOConfig, None, [
    f"model={model}", f"data={data}", f"out={out / 'run'}", "reward=endogenous", "steps=2",
    "prompts_per_step=8", "group_size=4", "max_new_tokens=12", "save_every=1", "data_shards=2",
    "optim.lr=1e-3", "optim.schedule=constant", f"mesh={MESH}"])
logs = []
first, history1 = run_grpo(cfg, progress=False, stop_after=1, log=logs.append)
second, history2 = run_grpo(cfg, progress=False, log=logs.append)
model_cfg, params = load_model(out / "run" / "final", mesh=mesh_from_spec(MESH))
export_hf(params, model_cfg, out / "hf", progress=False)

sft_cfg = load_config(SFTConfig, None, [
    f"model={model}", f"data={sft_data}", f"out={out / 'sft'}", "steps=2", "batch_size=8", "max_length=64",
    "save_every=1", "data_shards=2", "optim.lr=1e-3", f"mesh={MESH}"])
sft_logs = []
sft_first, _ = run_sft(sft_cfg, progress=False, stop_after=1, log=sft_logs.append)
sft_second, _ = run_sft(sft_cfg, progress=False, log=sft_logs.append)
if jax.process_index() == 0:
    (out / "result.json").write_text(json.dumps({
        "processes": jax.process_count(), "devices": jax.device_count(),
        "status": [first["status"], second["status"]], "history": history1 + history2, "logs": logs,
        "sft_status": [sft_first["status"], sft_second["status"]], "sft_logs": sft_logs,
        "sft_history": [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]}))
