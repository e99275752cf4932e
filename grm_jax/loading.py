"""One entry point for model sources: an HF directory or a grm-jax model checkpoint."""

from __future__ import annotations

from pathlib import Path

from jax.sharding import Mesh

from grm_jax.hf import TOKENIZER_FILES, load_hf
from grm_jax.train.model_checkpoint import is_model_checkpoint, load_model, tokenizer_dir


def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def load_any(src: str | Path, *, mesh: Mesh | None = None, param_dtype: str | None = None,
             progress: bool = True):
    """(ModelConfig, params, tokenizer directory or None) from an HF dir or a model checkpoint."""
    src = Path(src)
    if is_model_checkpoint(src):
        cfg, params = load_model(src, mesh=mesh, param_dtype=param_dtype)
        return cfg, params, tokenizer_dir(src)
    if is_hf_dir(src):
        cfg, params = load_hf(src, mesh=mesh, param_dtype=param_dtype, progress=progress)
        has_tokenizer = any((src / f).is_file() for f in TOKENIZER_FILES)
        return cfg, params, src if has_tokenizer else None
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    raise FileNotFoundError(f"{src}: neither a Hugging Face model directory (config.json) nor a "
                            "grm-jax model checkpoint (model_config.json + params/)")


def load_tokenizer(directory: str | Path):
    """The tokenizer its files describe (tokenizer_config.json's class, tokenizer.json), the same
    for an HF model directory and for the checkpoint imported from it.

    transformers picks the class from config.json's model_type when that file sits beside the
    tokenizer (Qwen2Tokenizer for qwen2), which rebuilds the pre-tokenizer and can encode the same
    text to other ids than the saved tokenizer.json; a checkpoint's tokenizer/ has no
    config.json. A blank model config makes both forms load what the tokenizer files say.
    """
    from transformers import AutoTokenizer, PretrainedConfig

    return AutoTokenizer.from_pretrained(str(directory), config=PretrainedConfig())


def load_with_tokenizer(src: str | Path, *, mesh: Mesh | None = None, progress: bool = True):
    """(ModelConfig, params, tokenizer directory, tokenizer) of a model that must have one."""
    cfg, params, tok_dir = load_any(src, mesh=mesh, progress=progress)
    if tok_dir is None:
        raise FileNotFoundError(f"{src}: no tokenizer files next to the model")
    return cfg, params, tok_dir, load_tokenizer(tok_dir)
