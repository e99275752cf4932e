"""Real tokenizers and chat templates: llama.cpp's `models/` folder from the llama-cpp-python sdist
on the package index (the `llama_cpp_models` fixture). Llama 3's and Qwen2's tokenizers, converted
from their GGUFs by grm-jax's GGUF reader and reloaded from disk, give llama.cpp's expected ids
for its test strings; ChatFormatter splits prompt and response, finds the end-of-turn token and
places a system prompt on the templates users load."""

import pytest
from conftest import VOCABS
from transformers import AutoTokenizer

from grm_jax.data.chat import DATE_STRING, ChatFormatter

# name: (template file, tokenizer, tokens the model's own vocabulary has as special tokens, end of turn)
TEMPLATES = {
    "llama-3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama-bpe", (), "<|eot_id|>"),
    "llama-3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama-bpe", (), "<|eot_id|>"),
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2", (), "<|im_end|>"),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "qwen2", (), "<|im_end|>"),
    # Gemma's and Mistral's tokenizers are not in the sdist: their turn markers are added as the
    # special tokens they are in those vocabularies.
    "gemma-2": ("google-gemma-2-2b-it.jinja", "qwen2", ("<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "llama-bpe", ("[INST]", "[/INST]"),
                     "<|end_of_text|>"),
}
PROMPT, RESPONSE, SYSTEM = "What is 2 + 2?", "2 + 2 is 4.", "Answer in one short sentence."
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _vectors(models, vocab):
    """llama.cpp's test strings and their ids: the .inp strings are separated by a marker line,
    the .out has a line of ids per string; both end with their separator."""
    strings = (models / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (models / f"ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert strings[-1] == "" and ids[-1] == "" and len(strings) == len(ids)
    return [(s, [int(x) for x in line.split()]) for s, line in zip(strings[:-1], ids[:-1])]


@pytest.mark.parametrize("vocab", VOCABS)
def test_tokenizers_from_gguf_give_llama_cpps_expected_ids(llama_cpp_models, vocab):
    tokenizer = AutoTokenizer.from_pretrained(llama_cpp_models / f"hf-{vocab}")
    vectors = _vectors(llama_cpp_models, vocab)
    assert len(vectors) == 46
    wrong = [(s, got, ids) for s, ids in vectors if (got := tokenizer.encode(s, add_special_tokens=False)) != ids]
    assert not wrong, f"{len(wrong)} of {len(vectors)} differ, e.g. {wrong[0]}"


def _formatter(models, name, system_prompt=None):
    template, vocab, special, _ = TEMPLATES[name]
    tokenizer = AutoTokenizer.from_pretrained(models / f"hf-{vocab}")
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    if "<bos>" in special:
        tokenizer.bos_token = "<bos>"
    tokenizer.chat_template = (models / "templates" / template).read_text(encoding="utf-8")
    return ChatFormatter(tokenizer, system_prompt=system_prompt)


def _text(f, ids):
    return f.tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", TEMPLATES)
def test_real_templates_split_prompt_and_response_at_the_end_of_turn(llama_cpp_models, name):
    f = _formatter(llama_cpp_models, name)
    e = f.encode(PROMPT, RESPONSE)
    # The prompt part is exactly what generation starts from; the response ends with the turn's
    # end token, which also stops generation.
    assert e.ids[:e.start] == f.prompt_ids(PROMPT)
    assert f.tokenizer.convert_ids_to_tokens(e.ids[-1]) == TEMPLATES[name][3]
    assert e.ids[-1] in f.stop_ids()
    response = _text(f, e.ids[e.start:-1])
    # Qwen3's template writes an empty thinking block before the answer of the last turn: the
    # model writes it too, so it belongs to the response.
    assert response == ("<think>\n\n</think>\n\n" + RESPONSE if name == "qwen3" else RESPONSE), response
    assert PROMPT in _text(f, e.ids[:e.start]) and RESPONSE not in _text(f, e.ids[:e.start])


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_system_prompt_reaches_the_model_on_every_template(llama_cpp_models, name):
    f = _formatter(llama_cpp_models, name, SYSTEM)
    text = _text(f, f.prompt_ids(PROMPT))
    # Gemma 2's raises on a system message; Mistral Nemo's writes it into the last user turn only
    # while that turn is the last message, so it is gone from the exchange a response is scored in.
    # On both the system prompt opens the first user turn (what Nemo itself writes for one turn).
    assert f.system_role == (name not in ("gemma-2", "mistral-nemo"))
    if name == "gemma-2":
        assert f"<start_of_turn>user\n{SYSTEM}\n\n{PROMPT}<end_of_turn>" in text
    elif name.startswith("llama"):
        assert f"Today Date: {DATE_STRING}\n\n{SYSTEM}<|eot_id|>" in text
    elif name == "mistral-nemo":
        assert f"[INST]{SYSTEM}\n\n{PROMPT}[/INST]" in text
    else:
        assert f"<|im_start|>system\n{SYSTEM}<|im_end|>" in text
    # ... and in the exchange a response is scored in.
    e = f.encode(PROMPT, RESPONSE)
    assert e.ids[:e.start] == f.prompt_ids(PROMPT) and SYSTEM in _text(f, e.ids[:e.start])


def test_qwen25_writes_its_default_system_prompt_unless_one_is_given(llama_cpp_models):
    plain = _text(_formatter(llama_cpp_models, "qwen2.5"), _formatter(llama_cpp_models, "qwen2.5").prompt_ids(PROMPT))
    assert f"<|im_start|>system\n{QWEN_DEFAULT}<|im_end|>" in plain
    f = _formatter(llama_cpp_models, "qwen2.5", SYSTEM)
    given = _text(f, f.prompt_ids(PROMPT))
    assert QWEN_DEFAULT not in given and SYSTEM in given


@pytest.mark.parametrize("name", ["llama-3.1", "llama-3.2"])
def test_llama3_date_header_is_fixed(llama_cpp_models, name):
    """Llama 3.1 writes 'Today Date: 26 Jul 2024' when given no date; 3.2 writes today's date
    (strftime_now) unless given one: grm-jax gives the same fixed date to both, so a prompt's ids
    do not change with the day it is encoded."""
    f = _formatter(llama_cpp_models, name)
    text = _text(f, f.prompt_ids(PROMPT))
    assert f"Cutting Knowledge Date: December 2023\nToday Date: {DATE_STRING}\n\n" in text
