"""Data: chat-template prompting, preference and prompt files, small tokenizers."""

from grm_jax.data.chat import ChatFormatter, Encoded, PromptError
from grm_jax.data.preference import LAYOUTS, DataError, Row, detect_layout, read_rows, validate
from grm_jax.data.tokenizers import CHATML_TEMPLATE, save_tokenizer, train_bpe_tokenizer

__all__ = ["CHATML_TEMPLATE", "ChatFormatter", "DataError", "Encoded", "LAYOUTS", "PromptError", "Row",
           "detect_layout", "read_rows", "save_tokenizer", "train_bpe_tokenizer", "validate"]
