"""Home-made BPE tokenizers: special ids, chat template, merges across words with digits kept apart."""

from grm_jax.data.tokenizers import CHATML_TEMPLATE, train_bpe_tokenizer

TEXTS = ["[The Begin of Response 1]\n7 + 5 = 12.\n[The End of Response 1]"] * 50 + ["What is 3 * 9?"] * 50


def test_specials_and_template():
    tok = train_bpe_tokenizer(TEXTS, 300)
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>")] == \
        [0, 1, 2, 3, 4]
    assert tok.chat_template == CHATML_TEMPLATE


def test_across_words_merges_recurring_text_but_never_digits():
    words = train_bpe_tokenizer(TEXTS, 400)
    across = train_bpe_tokenizer(TEXTS, 400, across_words=True)
    text = TEXTS[0]
    a, w = across.tokenize(text), words.tokenize(text)
    assert len(a) < len(w)
    assert across.convert_tokens_to_string(a) == text == words.convert_tokens_to_string(w)
    digits = [t for t in a if any(ch.isdigit() for ch in t)]
    assert digits and all(len(t) == 1 for t in digits)   # every digit is its own token
