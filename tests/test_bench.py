"""The benchmark command runs both implementations on the same batch and reports their ratio.

(It measures nothing here: speed is a benchmark's job, not a test's.)
"""

import json

from grm_jax.flops import decode_bytes, forward_flops
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


def _run_bench(capsys, args):
    assert main(args) == 0
    out = capsys.readouterr().out
    return json.loads(out[: out.rindex("}") + 1]), out.splitlines()[-1]


def test_bench_score_and_generate_report_both_sides(hf_models, capsys):
    directory = str(hf_models("llama")[0])
    result, line = _run_bench(capsys, ["bench", "score", "--model", directory, "--batch", "2", "--length", "32",
                                       "--chunk", "8", "--steps", "1", "--rounds", "1"])
    assert result["bench"] == "score" and result["response"] == 16 and result["torch_tokens_per_s"] > 0
    assert "ratio" in line
    result, line = _run_bench(capsys, ["bench", "generate", "--model", directory, "--batch", "2", "--prompt", "8",
                                       "--new-tokens", "12", "--rounds", "1"])
    assert result["bench"] == "generate" and result["torch_tokens_per_s"] > 0
    # Greedy on the same prompts: the two implementations write the same tokens.
    assert result["greedy_tokens_equal_fraction"] == 1.0
    assert "ratio" in line


def test_decode_bytes_counts_weights_read_per_step(hf_models):
    cfg = read_hf_config(hf_models("llama")[0])  # untied: the embedding table is only gathered
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    want = (cfg.num_params() - cfg.vocab_size * cfg.embed_dim) * 4 + 2 * 100 * kv_per_token / 2
    assert decode_bytes(cfg, 2, 100) == want
