"""Small byte-level BPE tokenizers trained from text, for tests and the embedded default.

Real models bring their own tokenizer; these exist so that everything runs without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

# ChatML, the layout of Qwen's templates: the end-of-turn token <|im_end|> closes every message.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>")

# A few texts of the kinds the tools handle, so a tokenizer trained without data still has merges
# for prose, code, arithmetic and markdown.
SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog. What is 2 + 3? The answer is 5.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "I cannot help with that request, but here is a safer alternative.",
    "**Summary**\n- first point\n- second point\n\n1. step one\n2. step two",
    "Specific Criteria: accuracy (weight 0.5), clarity (weight 0.3), relevance (weight 0.2).",
    "Analysis: Response 1 is correct and clear; Response 2 makes an arithmetic error.",
    "Scores: \\boxed{9, 3}",
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *,
                        chat_template: str | None = CHATML_TEMPLATE, across_words: bool = False):
    """A byte-level BPE tokenizer (transformers fast tokenizer) trained on `texts`.

    Ids 0..4 are <pad>, <bos>, <eos>, <|im_start|>, <|im_end|>. Byte-level, so any text encodes;
    `vocab_size` must leave room for the 256 byte symbols and the specials. `across_words` lets
    merges span spaces and punctuation (no pre-split into words; digits stay one token each), so
    text that recurs verbatim, like a prompt template, becomes a few tokens.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the {256 + len(SPECIAL_TOKENS)} byte and "
                         "special symbols")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not across_words)
    # Across words, digits still stay single tokens, so numbers read the same everywhere.
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if across_words else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return out
