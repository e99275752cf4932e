"""GGUF (llama.cpp's format) to a Hugging Face directory, without torch.

`gguf_to_hf(file, out_dir)` reads the GGUF's metadata and tensors with the `gguf` package,
dequantizes every tensor to float32 with its NumPy kernels (Q4_0/Q4_1/Q8_0/K-quants, F16,
BF16...), undoes llama.cpp's rotary permutation of the Llama-family q/k projections, and writes
config.json + model.safetensors beside the tokenizer transformers builds from the GGUF's
vocabulary, merges and chat template. `grm-jax import-hf FILE.gguf` then imports that directory
as it would any other. Dequantized weights are the quantized model's weights, not the original
release's.

Supported architectures: `llama` (Llama, Mistral-style and SmolLM checkpoints) and `qwen2`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2"}

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.").
_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_KEYS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}


class GGUFError(ValueError):
    """A GGUF file grm-jax cannot import (the message names the file and why)."""


def find_gguf(path: str | Path) -> Path:
    """`path` if it is a .gguf file, else the one .gguf file in the directory `path`."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise GGUFError(f"{path}: not a .gguf file")
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) != 1:
        raise GGUFError(f"{path}: expected one .gguf file, found {len(found)}"
                        + (f" ({', '.join(p.name for p in found)})" if found else ""))
    return found[0]


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a .gguf file or a directory holding .gguf files and no config.json."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))


def _reader(file: Path):
    try:
        import gguf
    except ImportError:
        raise GGUFError("reading GGUF files needs the `gguf` package: pip install 'grm-jax[gguf]'") from None
    try:
        return gguf.GGUFReader(str(file))
    except Exception as e:  # a truncated or foreign file
        raise GGUFError(f"{file}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, file: Path, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise GGUFError(f"{file}: metadata field {key!r} is missing")
        return default
    return field.contents()


def hf_config(reader, file: Path) -> dict:
    """The HF config.json content for the GGUF's metadata."""
    arch = _field(reader, "general.architecture", file)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{file}: architecture {arch!r} is not supported for GGUF import "
                        f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    if f"{arch}.rope.scaling.type" in reader.fields:
        raise GGUFError(f"{file}: RoPE scaling ({_field(reader, f'{arch}.rope.scaling.type', file)}) in a GGUF is "
                        "not supported; import the HF checkpoint instead")
    heads = int(_field(reader, f"{arch}.attention.head_count", file))
    hidden = int(_field(reader, f"{arch}.embedding_length", file))
    names = {t.name for t in reader.tensors}
    vocab = int(_field(reader, f"{arch}.vocab_size", file, 0)) or len(_field(reader, "tokenizer.ggml.tokens", file))
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": _MODEL_TYPES[arch], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length", file)),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count", file)), "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", file, heads)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", file, hidden // heads)),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", file)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", file)),
        "rope_parameters": {"rope_type": "default",
                            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", file, 10000.0))},
        "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu", "dtype": "float32",
    }
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = reader.fields.get(f"tokenizer.ggml.{name}_token_id")
        if value is not None:
            config[key] = int(value.contents())
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    return config


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of each head's rows of a Llama q/k projection (it interleaves
    the two rotary halves for its own RoPE kernel)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(reader, config: dict, file: Path):
    """(HF name, float32 array) for every tensor of the GGUF, in file order."""
    import gguf

    arch = config["model_type"]
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest not in _LAYER_KEYS:
                raise GGUFError(f"{file}: tensor {t.name!r} has no HF counterpart for {arch}")
            name = f"model.layers.{layer}.{_LAYER_KEYS[rest]}"
        elif t.name in _TOP_KEYS:
            name = _TOP_KEYS[t.name]
        elif t.name in ("rope_freqs.weight",):
            continue  # derived from the config
        else:
            raise GGUFError(f"{file}: tensor {t.name!r} has no HF counterpart for {arch}")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # ggml lists dimensions innermost first
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            heads = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            w = _unpermute(w, heads)
        yield name, np.ascontiguousarray(w)


def gguf_to_hf(path: str | Path, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Writes the GGUF at `path` (a file, or a directory holding one) as an HF directory."""
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    file = find_gguf(path)
    reader = _reader(file)
    config = hf_config(reader, file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = dict(tqdm(hf_tensors(reader, config, file), total=len(reader.tensors), desc="dequantizing",
                        unit="tensor", disable=not progress))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gguf_tokenizer(file, reader).save_pretrained(str(out))
    return out


def gguf_tokenizer(path: str | Path, reader=None):
    """The HF tokenizer of a GGUF (a model's, or a vocabulary-only one): what transformers'
    converter builds from its vocabulary, merges and chat template, plus what that converter
    leaves out: Llama 3's tokenizer (`tokenizer.ggml.pre` = "llama-bpe") takes a pre-token that is
    whole in the vocabulary as that one token before trying any merge (`ignore_merges`, set in
    Meta's tokenizer.json and done by llama.cpp); without it "Cửa Việt", one of llama.cpp's test
    strings for that vocabulary, comes out as 5 tokens instead of 3."""
    from transformers import AutoTokenizer

    file = find_gguf(path)
    reader = reader if reader is not None else _reader(file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as e:
        raise GGUFError(f"{file}: transformers could not build its tokenizer ({type(e).__name__}: {e})") from None
    if _field(reader, "tokenizer.ggml.pre", file, "") == "llama-bpe":
        tokenizer.backend_tokenizer.model.ignore_merges = True
    return tokenizer
