"""The benchmark command runs both implementations on the same batch and reports their ratio.

(It measures nothing here: speed is a benchmark's job, not a test's.)
"""

import json

from grm_jax.bench import forward_flops
from grm_jax.cli import main
from grm_jax.hf import read_hf_config


def test_bench_forward_reports_both_sides(hf_models, capsys):
    directory, _ = hf_models("qwen2")
    args = ["bench", "forward", "--model", str(directory), "--batch", "2", "--length", "16",
            "--steps", "1", "--rounds", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["jax_tokens_per_s"] > 0 and result["torch_tokens_per_s"] > 0
    assert abs(result["ratio_jax_over_torch"] - result["jax_tokens_per_s"] / result["torch_tokens_per_s"]) < 1e-9
    assert "ratio" in out.splitlines()[-1]


def test_forward_flops_counts_weights_and_attention(hf_models):
    cfg = read_hf_config(hf_models("qwen2")[0])
    # Every matmul weight (all params but norms, biases and the embedding lookup) twice per token.
    D, N, K, H, L = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    matmul_weights = cfg.num_params() - L * (2 * D + (N + 2 * K) * H) - D
    assert forward_flops(cfg, 2, 16) == 2 * matmul_weights * 32 + 4 * L * 2 * 16 * 16 * N * H
