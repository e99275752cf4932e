"""`grm-jax roundtrip`: a Hugging Face round trip for every supported family.

For each family: build a tiny random model with transformers, import it into a grm-jax
checkpoint, export that back to an HF directory, reload it with transformers, and compare
tensors and logits on a left-padded batch. Prints a table and writes it as JSON.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from grm_jax.hf import export_hf, load_hf
from grm_jax.hf.tiny import TINY, save_random_hf_model, tiny_hf_config
from grm_jax.models import Decoder, positions_from_mask
from grm_jax.train.model_checkpoint import load_model, save_model


def _batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(3, 32))
    mask = np.ones_like(tokens)
    mask[1, :7] = 0  # left padding
    mask[2, :20] = 0
    return tokens, mask


def round_trip(family: str, workdir: Path) -> dict:
    import torch
    import transformers

    src, ckpt, out = workdir / f"{family}-hf", workdir / f"{family}-ckpt", workdir / f"{family}-export"
    ref = save_random_hf_model(tiny_hf_config(family), src, seed=1)
    cfg, params = load_hf(src, progress=False)
    save_model(ckpt, params, cfg)
    cfg2, params2 = load_model(ckpt)
    export_hf(params2, cfg2, out, progress=False)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    ref_sd, back_sd = ref.state_dict(), back.state_dict()
    identical = set(ref_sd) == set(back_sd) and all(torch.equal(ref_sd[k], back_sd[k]) for k in ref_sd)
    tokens, mask = _batch(cfg.vocab_size)
    with torch.no_grad():
        t_in = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
        ref_logits = ref(**t_in).logits.numpy()
        back_logits = back(**t_in).logits.numpy()
    ours, _ = Decoder(cfg2).apply({"params": params2}, jnp.asarray(tokens),
                                  positions_from_mask(jnp.asarray(mask)))
    valid = mask.astype(bool)
    return {
        "family": family, "params": cfg.num_params(),
        "tensors_bitwise_equal": bool(identical),
        "max_abs_jax_vs_hf": float(np.abs(np.asarray(ours) - ref_logits)[valid].max()),
        "max_abs_export_vs_hf": float(np.abs(back_logits - ref_logits)[valid].max()),
    }


def run_round_trip(out_dir: str | Path | None = None, families=tuple(TINY)) -> dict:
    """Runs the round trip for `families`; results go to out_dir (default: a new runs/roundtrip-TIME).

    Returns the summary written to round_trip.json; its "ok" is True when every family's tensors
    came back bitwise equal, its logits were within 1e-4 of transformers, and the exported
    model's logits were identical to the original's.
    """
    out_dir = out_dir or time.strftime("runs/roundtrip-%Y%m%d-%H%M%S")
    out_dir = Path(out_dir)
    if (out_dir / "round_trip.json").exists():
        raise FileExistsError(f"{out_dir / 'round_trip.json'} already exists; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for family in families:
            rows.append(round_trip(family, Path(tmp)))
            r = rows[-1]
            print(f"  {family:12s} params={r['params']:>7d}  bitwise={r['tensors_bitwise_equal']}  "
                  f"max|jax-hf|={r['max_abs_jax_vs_hf']:.2e}  max|export-hf|={r['max_abs_export_vs_hf']:.2e}",
                  flush=True)
    ok = all(r["tensors_bitwise_equal"] and r["max_abs_jax_vs_hf"] < 1e-4
             and r["max_abs_export_vs_hf"] == 0.0 for r in rows)
    summary = {"ok": ok, "seconds": round(time.perf_counter() - t0, 1), "families": rows}
    tmp_file = out_dir / "round_trip.json.tmp"
    tmp_file.write_text(json.dumps(summary, indent=2) + "\n")
    tmp_file.replace(out_dir / "round_trip.json")
    print(f"round trip {'OK' if ok else 'FAILED'} for {len(rows)} families in {summary['seconds']} s; "
          f"written to {out_dir / 'round_trip.json'}")
    return summary
