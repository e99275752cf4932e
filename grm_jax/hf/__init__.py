"""The Hugging Face bridge: key tables, streaming safetensors load, atomic export."""

from grm_jax.hf.export import export_hf, parse_size
from grm_jax.hf.load import CheckpointMismatchError, load_hf, read_hf_config
from grm_jax.hf.paths import TOKENIZER_FILES, UnsafePathError, tokenizer_files
from grm_jax.hf.safetensors_io import SafetensorsError

__all__ = ["CheckpointMismatchError", "SafetensorsError", "TOKENIZER_FILES", "UnsafePathError",
           "export_hf", "load_hf", "parse_size", "read_hf_config", "tokenizer_files"]
