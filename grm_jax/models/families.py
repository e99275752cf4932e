"""Per-family conversion between Hugging Face configs and `ModelConfig`.

Each family is one small function pair. Parsing goes through `transformers`' own config classes so
that their defaults and legacy-field handling (rope_scaling vs rope_parameters, derived
layer_types) are the reference, not a re-implementation of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grm_jax.models.config import FULL, SLIDING, ModelConfig, RopeConfig

_HF_LAYER_TYPES = {"full_attention": FULL, "sliding_attention": SLIDING}
_HF_LAYER_NAMES = {v: k for k, v in _HF_LAYER_TYPES.items()}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
FAMILIES = tuple(_ARCHITECTURES)


class UnsupportedModelError(ValueError):
    """The HF config names a model type or feature grm-jax does not implement."""


def _rope_from_hf(params: dict, where: str) -> RopeConfig:
    kind = params.get("rope_type", "default")
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedModelError(f"{where}: RoPE type {kind!r} is not supported "
                                    "(supported: default, linear, llama3)")
    return RopeConfig(
        theta=float(params["rope_theta"]), kind=kind, factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 8192)))


def _rope_to_hf(rope: RopeConfig) -> dict:
    out: dict[str, Any] = {"rope_type": rope.kind, "rope_theta": rope.theta}
    if rope.kind in ("linear", "llama3"):
        out["factor"] = rope.factor
    if rope.kind == "llama3":
        out.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
                   original_max_position_embeddings=rope.original_max_position)
    return out


def _activation(hf, where: str) -> str:
    name = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"{where}: activation {name!r} is not supported")
    return _ACTIVATIONS[name]


def _layer_types(hf) -> tuple[str, ...]:
    types = getattr(hf, "layer_types", None)
    if not types:
        return ()
    return tuple(_HF_LAYER_TYPES[t] for t in types)


def _common(hf, family: str, where: str) -> dict:
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    eos = hf.eos_token_id
    return dict(
        family=family, vocab_size=hf.vocab_size, embed_dim=hf.hidden_size,
        mlp_dim=hf.intermediate_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim, norm_eps=float(hf.rms_norm_eps), activation=_activation(hf, where),
        tie_embeddings=bool(hf.tie_word_embeddings), max_position=hf.max_position_embeddings,
        bos_token_id=hf.bos_token_id, pad_token_id=hf.pad_token_id,
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos)


def _llama_like(hf, family: str, where: str) -> ModelConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    d = _common(hf, family, where)
    d.update(rope=_rope_from_hf(hf.rope_parameters, where), mlp_bias=bool(getattr(hf, "mlp_bias", False)))
    if family == "llama":
        d.update(qkv_bias=bias, out_bias=bias)
    elif family == "mistral":
        if hf.sliding_window:
            d.update(sliding_window=hf.sliding_window, layer_types=(SLIDING,) * hf.num_hidden_layers)
    elif family in ("qwen2", "qwen3"):
        layer_types = _layer_types(hf)
        d.update(layer_types=layer_types if SLIDING in layer_types else (),
                 sliding_window=hf.sliding_window if SLIDING in layer_types else None)
        if family == "qwen2":
            d.update(qkv_bias=True)
        else:
            d.update(qkv_bias=bias, out_bias=bias, qk_norm=True)
    return ModelConfig(**d)


def _gemma(hf, family: str, where: str) -> ModelConfig:
    if getattr(hf, "use_bidirectional_attention", False):
        raise UnsupportedModelError(f"{where}: bidirectional Gemma attention is not supported")
    bias = bool(getattr(hf, "attention_bias", False))
    d = _common(hf, family, where)
    rope = hf.rope_parameters
    if family == "gemma3_text":
        d.update(rope=_rope_from_hf(rope["full_attention"], where),
                 local_rope=_rope_from_hf(rope["sliding_attention"], where), qk_norm=True)
    else:
        d.update(rope=_rope_from_hf(rope, where))
    layer_types = _layer_types(hf)
    d.update(norm_plus_one=True, sandwich_norms=True, scale_embeddings=True, qkv_bias=bias,
             out_bias=bias, query_pre_attn_scalar=hf.query_pre_attn_scalar,
             attn_softcap=hf.attn_logit_softcapping, final_softcap=hf.final_logit_softcapping,
             layer_types=layer_types, sliding_window=hf.sliding_window if SLIDING in layer_types else None)
    return ModelConfig(**d)


_FROM_HF = {"llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like,
            "qwen3": _llama_like, "gemma2": _gemma, "gemma3_text": _gemma}


def from_hf_config(hf_or_path, *, where: str | None = None) -> ModelConfig:
    """Builds a `ModelConfig` from a transformers config, a config dict, or a directory/file path.

    Raises:
      UnsupportedModelError: the model type or one of its features is not implemented.
    """
    import transformers

    if isinstance(hf_or_path, (str, Path)):
        path = Path(hf_or_path)
        path = path / "config.json" if path.is_dir() else path
        where = where or str(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json (is this a Hugging Face model "
                                    "directory?)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: config.json is not valid JSON: {e}") from None
        hf_or_path = raw
    if isinstance(hf_or_path, dict):
        where = where or "config"
        model_type = hf_or_path.get("model_type")
        if model_type not in _FROM_HF:
            raise UnsupportedModelError(
                f"{where}: model_type {model_type!r} is not supported; supported: "
                f"{', '.join(FAMILIES)}" + (" (for a multimodal Gemma 3 checkpoint, convert its "
                                            "text model)" if model_type == "gemma3" else ""))
        fields = {k: v for k, v in hf_or_path.items() if k != "model_type"}
        hf_or_path = transformers.AutoConfig.for_model(model_type, **fields)
    where = where or "config"
    model_type = hf_or_path.model_type
    if model_type not in _FROM_HF:
        raise UnsupportedModelError(f"{where}: model_type {model_type!r} is not supported; "
                                    f"supported: {', '.join(FAMILIES)}")
    return _FROM_HF[model_type](hf_or_path, model_type, where)


def to_hf_config(cfg: ModelConfig) -> dict:
    """The config.json contents for `cfg`, as transformers writes them for this family."""
    import transformers

    d: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_position,
        bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id,
        eos_token_id=list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
        dtype=cfg.param_dtype, architectures=[_ARCHITECTURES[cfg.family]])
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.activation]
    layer_types = [_HF_LAYER_NAMES[k] for k in cfg.kinds]
    if cfg.family in ("gemma2", "gemma3_text"):
        d.update(hidden_activation=act, attention_bias=cfg.qkv_bias,
                 query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                 attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.final_softcap,
                 sliding_window=cfg.sliding_window, layer_types=layer_types)
        if cfg.family == "gemma3_text":
            d["rope_parameters"] = {"full_attention": _rope_to_hf(cfg.rope),
                                    "sliding_attention": _rope_to_hf(cfg.local_rope or cfg.rope)}
        else:
            d["rope_parameters"] = _rope_to_hf(cfg.rope)
    else:
        d.update(hidden_act=act, rope_parameters=_rope_to_hf(cfg.rope))
        if cfg.family == "llama":
            d.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
        elif cfg.family == "mistral":
            d.update(sliding_window=cfg.sliding_window)
        else:
            d.update(use_sliding_window=cfg.has_sliding, sliding_window=cfg.sliding_window,
                     layer_types=layer_types, max_window_layers=cfg.num_layers)
            if cfg.family == "qwen3":
                d.update(attention_bias=cfg.qkv_bias)
    hf = transformers.AutoConfig.for_model(cfg.family, **d)
    return hf.to_dict()
