"""Model configuration: one frozen dataclass for every supported decoder family.

Family differences live here as data (flags and sizes), never as branches on the family name in
the layers. Conversion to and from Hugging Face configs is in `families.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax.numpy as jnp

FULL = "full"
SLIDING = "sliding"
ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn", "dot_product")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    """The JAX dtype for a dtype name ('float32', 'bfloat16', 'float16')."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding: base frequency and an optional frequency scaling.

    kind: 'default' (plain RoPE), 'linear' (every inverse frequency divided by `factor`), or
    'llama3' (Llama 3.1 band-wise scaling with `low_freq_factor`, `high_freq_factor` and
    `original_max_position`).
    """

    theta: float = 10_000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def __post_init__(self):
        if self.kind not in ("default", "linear", "llama3"):
            raise ValueError(
                f"RoPE type {self.kind!r} is not supported (supported: default, linear, llama3)")
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError(f"RoPE theta and factor must be positive, got {self}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and behaviour flags of a decoder-only transformer.

    Dimension letters (see STYLE.md): D embed_dim, F mlp_dim, L num_layers, N num_heads,
    K num_kv_heads, H head_dim, V vocab_size.
    """

    family: str
    vocab_size: int
    embed_dim: int
    mlp_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RopeConfig = RopeConfig()
    # RoPE of the sliding-window layers when it differs from `rope` (Gemma 3's local base).
    local_rope: RopeConfig | None = None
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: scale = 1 + w
    sandwich_norms: bool = False  # Gemma 2/3: extra norms after attention and after the MLP
    qk_norm: bool = False  # Qwen3 / Gemma 3: RMSNorm over H on queries and keys before RoPE
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"  # 'silu' or 'gelu_tanh'
    tie_embeddings: bool = False
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(D)
    # Attention logits are scaled by query_pre_attn_scalar ** -0.5 (Gemma); None means H ** -0.5.
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # FULL or SLIDING per layer; empty means all FULL
    max_position: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Numerics: parameters are stored in param_dtype and cast to dtype for compute.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # 'auto' (splash on TPU, cudnn on GPU where allowed, else xla), 'xla' (einsum), 'splash'
    # (jax's Pallas TPU kernel; interpret mode off TPU), 'cudnn' or 'dot_product'
    # (jax.nn.dot_product_attention with / without implementation='cudnn').
    attention_impl: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"activation must be 'silu' or 'gelu_tanh', got {self.activation!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, "
                             f"got {self.attention_impl!r}")
        if self.attention_impl in ("dot_product", "cudnn") and self.attn_softcap is not None:
            raise ValueError(f"attention_impl={self.attention_impl!r} cannot apply attention "
                             "soft-capping; use 'auto', 'xla' or 'splash' for this model")
        dtype_of(self.dtype)
        dtype_of(self.param_dtype)
        if self.layer_types:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                                 f"{self.num_layers} layers")
            bad = set(self.layer_types) - {FULL, SLIDING}
            if bad:
                raise ValueError(f"unknown layer types {sorted(bad)}; use {FULL!r} or {SLIDING!r}")
            if SLIDING in self.layer_types and not self.sliding_window:
                raise ValueError("sliding layers need a positive sliding_window")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))

    # ---- derived -------------------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        """Layer type of every layer (FULL or SLIDING)."""
        return self.layer_types or (FULL,) * self.num_layers

    @property
    def has_sliding(self) -> bool:
        return SLIDING in self.kinds

    @property
    def attn_scale(self) -> float:
        scalar = self.query_pre_attn_scalar
        return (scalar if scalar is not None else self.head_dim) ** -0.5

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.embed_dim) if self.scale_embeddings else 1.0

    def num_params(self) -> int:
        """Parameter count, computed from the sizes alone (no allocation)."""
        D, F, N, K, H, V, L = (self.embed_dim, self.mlp_dim, self.num_heads, self.num_kv_heads,
                               self.head_dim, self.vocab_size, self.num_layers)
        attn = D * N * H * 2 + D * K * H * 2
        attn += (N * H + 2 * K * H) * self.qkv_bias + D * self.out_bias + 2 * H * self.qk_norm
        mlp = 3 * D * F + (2 * F + D) * self.mlp_bias
        norms = D * (4 if self.sandwich_norms else 2)
        return L * (attn + mlp + norms) + V * D * (1 if self.tie_embeddings else 2) + D

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        for key in ("rope", "local_rope"):
            if isinstance(d.get(key), dict):
                d[key] = RopeConfig(**d[key])
        for key in ("layer_types", "eos_token_id"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a valid grm-jax model config: {e}") from e
