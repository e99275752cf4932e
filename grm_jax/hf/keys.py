"""Declarative HF key tables: HF tensor name -> our param path + transform, per family.

Layer keys contain `{i}`; their params are stacked over a leading `layers` axis. Transforms are
views (transpose/reshape) in both directions, so a memory-mapped tensor is never copied whole.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from grm_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Transform:
    """HF layout <-> ours, for one tensor.

    kind:
      'same'       identical layout.
      'linear'     HF [out, in] <-> ours [in, out].
      'heads_out'  HF [n*H, D]  <-> ours [D, n, H]   (q/k/v projections)
      'heads_in'   HF [D, n*H]  <-> ours [n, H, D]   (o projection)
      'heads_bias' HF [n*H]     <-> ours [n, H]
    """

    kind: str = "same"
    heads: int = 0

    def to_ours(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return a
        if self.kind == "linear":
            return a.T
        if self.kind == "heads_out":
            return a.T.reshape(a.shape[1], self.heads, -1)
        if self.kind == "heads_in":
            return a.T.reshape(self.heads, -1, a.shape[0])
        return a.reshape(self.heads, -1)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return a
        if self.kind == "linear":
            return a.T
        if self.kind == "heads_out":
            return a.reshape(a.shape[0], -1).T
        if self.kind == "heads_in":
            return a.reshape(-1, a.shape[-1]).T
        return a.reshape(-1)

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "same":
            return tuple(ours)
        if self.kind == "linear":
            return tuple(reversed(ours))
        if self.kind == "heads_out":
            return (ours[1] * ours[2], ours[0])
        if self.kind == "heads_in":
            return (ours[2], ours[0] * ours[1])
        return (ours[0] * ours[1],)


@dataclasses.dataclass(frozen=True)
class KeyRule:
    hf: str  # HF name, with '{i}' for the layer index
    path: tuple[str, ...]  # our param path; a leading 'layers' means stacked over layers
    transform: Transform = Transform()

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def key_table(cfg: ModelConfig) -> list[KeyRule]:
    """Every HF tensor of a model with config `cfg`, and where it goes."""
    N, K = cfg.num_heads, cfg.num_kv_heads
    att = "model.layers.{i}.self_attn"
    rules = [KeyRule("model.embed_tokens.weight", ("embedding",)),
             KeyRule("model.norm.weight", ("final_norm", "scale"))]
    if not cfg.tie_embeddings:
        rules.append(KeyRule("lm_head.weight", ("lm_head",), Transform("linear")))
    for proj, heads in (("q_proj", N), ("k_proj", K), ("v_proj", K)):
        rules.append(KeyRule(f"{att}.{proj}.weight", ("layers", "attn", proj, "kernel"),
                             Transform("heads_out", heads)))
        if cfg.qkv_bias:
            rules.append(KeyRule(f"{att}.{proj}.bias", ("layers", "attn", proj, "bias"),
                                 Transform("heads_bias", heads)))
    rules.append(KeyRule(f"{att}.o_proj.weight", ("layers", "attn", "o_proj", "kernel"),
                         Transform("heads_in", N)))
    if cfg.out_bias:
        rules.append(KeyRule(f"{att}.o_proj.bias", ("layers", "attn", "o_proj", "bias")))
    if cfg.qk_norm:
        rules += [KeyRule(f"{att}.q_norm.weight", ("layers", "attn", "q_norm", "scale")),
                  KeyRule(f"{att}.k_norm.weight", ("layers", "attn", "k_norm", "scale"))]
    for proj in ("gate_proj", "up_proj", "down_proj"):
        rules.append(KeyRule(f"model.layers.{{i}}.mlp.{proj}.weight", ("layers", "mlp", proj, "kernel"),
                             Transform("linear")))
        if cfg.mlp_bias:
            rules.append(KeyRule(f"model.layers.{{i}}.mlp.{proj}.bias", ("layers", "mlp", proj, "bias")))
    rules += [KeyRule(f"model.layers.{{i}}.{hf}.weight", ("layers", ours, "scale"))
              for hf, ours in _NORMS[cfg.sandwich_norms]]
    return rules


# HF layer-norm names -> ours. Llama's `post_attention_layernorm` is the norm *before* the MLP;
# in Gemma 2/3 it is the norm applied to the attention output.
_NORMS = {
    False: (("input_layernorm", "pre_attn_norm"), ("post_attention_layernorm", "pre_mlp_norm")),
    True: (("input_layernorm", "pre_attn_norm"), ("post_attention_layernorm", "post_attn_norm"),
           ("pre_feedforward_layernorm", "pre_mlp_norm"),
           ("post_feedforward_layernorm", "post_mlp_norm")),
}

# Tensors some checkpoints carry that hold nothing the model needs.
IGNORED = (re.compile(r".*rotary_emb\.inv_freq$"),)


def ignorable(name: str, cfg: ModelConfig) -> bool:
    """True for tensors that may be present but are not parameters of `cfg`."""
    # A tied model's checkpoint may still carry a copy of the embedding as lm_head.
    if cfg.tie_embeddings and name == "lm_head.weight":
        return True
    return any(p.match(name) for p in IGNORED)


def expand(rules: list[KeyRule], num_layers: int) -> dict[str, tuple[KeyRule, int | None]]:
    """HF name -> (rule, layer index or None) for every tensor of the model."""
    out = {}
    for rule in rules:
        if rule.per_layer:
            for i in range(num_layers):
                out[rule.hf.format(i=i)] = (rule, i)
        else:
            out[rule.hf] = (rule, None)
    return out
