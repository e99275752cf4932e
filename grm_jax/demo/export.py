"""Stage `export`: the final GRM to a Hugging Face folder, reloaded with transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_export(run, data, model: Path) -> dict:
    """Exports `model` to OUT/hf_export, reloads it with transformers and compares the logits."""
    from grm_jax.data.chat import ChatFormatter
    from grm_jax.data.pipeline import collate
    from grm_jax.hf import export_hf
    from grm_jax.loading import load_tokenizer, load_with_tokenizer
    from grm_jax.models import Decoder

    cfg, params, tok_dir, tokenizer = load_with_tokenizer(model, progress=False)
    hf_dir = run.out / "hf_export"
    export_hf(params, cfg, hf_dir, progress=False)
    tokenizer.save_pretrained(hf_dir)
    row = {"dir": hf_dir.name}  # in the run folder
    try:
        import torch
        import transformers
    except ImportError:
        row["parity"] = "skipped: torch is not installed (pip install 'grm-jax[test]')"
        run.results["export"] = row
        run.log(f"   exported to {hf_dir}; {row['parity']}")
        return row
    formatter = ChatFormatter(tokenizer)
    encs = [formatter.encode(it["prompt"], it["responses"][0], 256) for it in data.held[:8]]
    b = collate(encs)
    tokens, positions = b["tokens"], b["positions"]
    ours, _ = Decoder(cfg).apply({"params": params}, tokens, positions)
    back = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    reloaded_tok = load_tokenizer(hf_dir)  # as grm-jax loads any model's tokenizer
    with torch.no_grad():
        ref = back(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(positions >= 0, dtype=torch.long)).logits.numpy()
    valid = positions >= 0
    row["max_abs_logits_diff"] = float(np.abs(np.asarray(ours) - ref)[valid].max())
    row["tokenizer_round_trip"] = bool(reloaded_tok(data.held[0]["prompt"])["input_ids"]
                                       == tokenizer(data.held[0]["prompt"])["input_ids"])
    run.results["export"] = row
    run.log(f"   exported to {hf_dir}; transformers reload: max |logits diff| = "
            f"{row['max_abs_logits_diff']:.2e}")
    return row
