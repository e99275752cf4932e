"""Stages `tokenizer and model` and `pretrain`: a byte-level BPE trained on the corpus, a tiny
Qwen2-family model from random init, and next-token training on the corpus replies."""

from __future__ import annotations

from pathlib import Path

from grm_jax.demo.config import META_TEMPLATE


def build_model(run, data) -> Path:
    """Trains the tokenizer, initializes the model; returns the initial model's folder."""
    import jax

    from grm_jax.data.tokenizers import save_tokenizer, train_bpe_tokenizer
    from grm_jax.demo.data import tokenizer_texts
    from grm_jax.models.decoder import init_params
    from grm_jax.models.families import from_hf_config
    from grm_jax.train.model_checkpoint import save_model

    c = run.cfg
    tokenizer = train_bpe_tokenizer(tokenizer_texts(data.corpus, META_TEMPLATE), c.vocab_size, across_words=True)
    tok_dir = save_tokenizer(tokenizer, run.out / "tokenizer")
    vocab = len(tokenizer)
    hf = dict(model_type="qwen2", vocab_size=vocab, hidden_size=c.hidden_size,
              intermediate_size=c.mlp_size, num_hidden_layers=c.num_layers,
              num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
              max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
              rope_parameters=dict(rope_type="default", rope_theta=10000.0),
              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    model_cfg = from_hf_config(hf, where="the demo's model")
    params = init_params(model_cfg, jax.random.key(c.seed))
    init_dir = save_model(run.out / "models" / "init", params, model_cfg,
                          tokenizer_files=[p for p in tok_dir.iterdir() if p.is_file()])
    run.results["model"] = {"family": "qwen2", "params": model_cfg.num_params(), "vocab": vocab,
                            "layers": c.num_layers, "hidden": c.hidden_size}
    run.log(f"   tokenizer: {vocab} tokens; model: {model_cfg.num_params():,} params")
    return init_dir


def pretrain(run, data, init_dir: Path) -> Path:
    """Next-token loss on the corpus's replies; returns the pretrained model's folder."""
    c = run.cfg
    return run.sft("pretrain", init_dir, data.corpus_path, c.pretrain_steps, c.pretrain_lr)
