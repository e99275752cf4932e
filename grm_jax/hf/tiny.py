"""Tiny random Hugging Face models of every supported family, made with transformers + torch.

Used by the tests (the reference nobody here wrote), the demo and the benchmarks. Needs torch,
which is a test-only dependency: install with `pip install 'grm-jax[test]'`.
"""

from __future__ import annotations

from pathlib import Path

# Small sizes that still exercise GQA (N=4, K=2), several layers and every family feature.
_BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

TINY = {
    "llama": dict(_BASE, tie_word_embeddings=False,
                  rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=64)),
    "qwen2": dict(_BASE, tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1e6)),
    "qwen3": dict(_BASE, head_dim=32, tie_word_embeddings=True,
                  rope_parameters=dict(rope_type="default", rope_theta=1e6)),
    "mistral": dict(_BASE, sliding_window=8, tie_word_embeddings=False,
                    rope_parameters=dict(rope_type="default", rope_theta=1e4)),
    "gemma2": dict(_BASE, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   hidden_activation="gelu_pytorch_tanh", num_hidden_layers=4,
                   rope_parameters=dict(rope_type="default", rope_theta=1e4)),
    "gemma3_text": dict(_BASE, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                        hidden_activation="gelu_pytorch_tanh", num_hidden_layers=4,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                     "sliding_attention"],
                        rope_parameters={"full_attention": dict(rope_type="linear", rope_theta=1e6,
                                                                factor=8.0),
                                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)}),
}


def tiny_hf_config(family: str, **overrides):
    """A transformers config for a tiny model of `family`."""
    import transformers

    if family not in TINY:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(TINY)}")
    return transformers.AutoConfig.for_model(family, **{**TINY[family], **overrides})


def save_random_hf_model(hf_config, out_dir: str | Path, *, seed: int = 0, dtype: str = "float32"):
    """Builds a randomly initialized transformers model for `hf_config` and saves it to out_dir."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, dtype))
    # Norm weights start at 1 (or 0 for Gemma's 1 + w); randomize them so a wrong norm layout
    # cannot hide behind a constant.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model
