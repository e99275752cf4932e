"""Prompting, preference files, accuracy metrics and `score_file` end to end."""

import json

import numpy as np
import pytest

from grm_jax.loading import load_tokenizer
from grm_jax.data.chat import ChatFormatter, PromptError, _truncate
from grm_jax.data.preference import DataError, detect_layout, read_rows, validate
from grm_jax.eval.preference import pair_accuracy, rmbench_levels, rmbench_matrix, rmbench_summary
from grm_jax.eval.score import ScoreOptions, score_file


@pytest.fixture(scope="module")
def tok(chat_model):
    return load_tokenizer(chat_model)


def test_template_response_span_is_exactly_the_response_and_end_of_turn(tok):
    f = ChatFormatter(tok)
    e = f.encode("What is 2 + 3?", "The answer is 5.")
    pieces = tok.convert_ids_to_tokens(e.ids[e.start:])
    assert pieces[-1] == "<|im_end|>"
    assert tok.decode(e.ids[e.start:-1]) == "The answer is 5."
    assert e.ids[:e.start] == f.prompt_ids("What is 2 + 3?")
    # The template's newline after <|im_end|> is not part of the scored sequence.
    assert e.end == len(e.ids) and tok.decode(e.ids).endswith("<|im_end|>")


def test_system_prompt_conditions_the_prompt_only(tok):
    plain = ChatFormatter(tok).encode("hi", "hello")
    sys = ChatFormatter(tok, system_prompt="You judge code.").encode("hi", "hello")
    assert tok.decode(sys.ids[:sys.start]).startswith("<|im_start|>system\nYou judge code.<|im_end|>")
    assert sys.ids[sys.start:] == plain.ids[plain.start:]


NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             "{% for m in messages %}{{ '<|im_start|>' + ('model' if m['role'] == 'assistant' else m['role']) + "
             "'\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>model\\n' }}{% endif %}")
DROPS_SYSTEM = ("{% for m in messages if m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\\n' + "
                "m['content'] + '<|im_end|>\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.mark.parametrize("template,turn", [(NO_SYSTEM, "model"), (DROPS_SYSTEM, "assistant")],
                         ids=["raises", "drops"])
def test_a_template_without_system_role_gets_the_system_prompt_in_the_first_user_turn(tok, template, turn):
    """Gemma 2's template raises on a system message (others drop it): the system prompt goes at
    the start of the first user turn instead, and the response span is unchanged."""
    import copy

    no_system = copy.deepcopy(tok)
    no_system.chat_template = template
    assert ChatFormatter(tok).system_role and not ChatFormatter(no_system).system_role
    f = ChatFormatter(no_system, system_prompt="Be brief.")
    assert no_system.decode(f.prompt_ids("hi")) == f"<|im_start|>user\nBe brief.\n\nhi<|im_end|>\n<|im_start|>{turn}\n"
    own = f.prompt_ids([{"role": "system", "content": "Judge code."}, {"role": "user", "content": "hi"}])
    assert no_system.decode(own).startswith("<|im_start|>user\nBe brief.\n\nJudge code.\n\nhi<|im_end|>")
    e, plain = f.encode("hi", "hello"), ChatFormatter(no_system).encode("hi", "hello")
    assert e.ids[e.start:] == plain.ids[plain.start:] and no_system.decode(e.ids[e.start:]) == "hello<|im_end|>"


def test_plain_concatenation_without_template(tok):
    f = ChatFormatter(tok, use_template=False)
    e = f.encode("What is 2 + 3?", " The answer is 5.")
    assert e.ids[0] == tok.bos_token_id and e.ids[-1] == tok.eos_token_id
    assert tok.decode(e.ids[e.start:-1]) == " The answer is 5."


def test_empty_response_scores_its_end_of_turn_token(tok):
    e = ChatFormatter(tok).encode("hi", "")
    assert tok.convert_ids_to_tokens(e.ids[e.start:]) == ["<|im_end|>"]
    with pytest.raises(PromptError, match="string"):
        ChatFormatter(tok).encode("hi", None)


def test_truncation_policy():
    ids = list(range(100, 130))  # prompt 20 + response 10
    e = _truncate(ids, 20, 16)   # the prompt keeps max(16 - 10, min(20, 8)) = 8 tokens
    assert e.truncated and e.ids == ids[12:20] + ids[20:28] and e.start == 8
    e = _truncate(ids, 20, 25)   # the whole response fits after the last 15 prompt tokens
    assert e.ids == ids[5:] and e.start == 15
    assert not _truncate(ids, 20, 30).truncated


def test_rmbench_matrix_on_a_hand_made_example():
    # Two items; styles 0 concise, 1 detailed plain, 2 detailed markdown.
    chosen = [[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]
    rejected = [[2.5, 1.5, 0.5], [0.0, 2.0, 0.5]]
    m = rmbench_matrix(chosen, rejected)
    # Item 1: chosen_i > rejected_j for all i, j except (1,0), (2,0), (2,1).
    # Item 2: chosen (all 1) beats rejected 0 and 2, never rejected 1.
    want = np.array([[1.0, 0.5, 1.0], [0.5, 0.5, 1.0], [0.5, 0.0, 1.0]])
    np.testing.assert_allclose(m, want)
    levels = rmbench_levels(m)
    assert levels["hard"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert levels["normal"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert levels["easy"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    s = rmbench_summary(chosen * 2, rejected * 2, ["chat", "chat", "safety-refuse", "safety-response"])
    assert set(s["per_domain"]) == {"chat", "safety"} and s["missing_domains"] == ["code", "math"]
    assert s["overall"]["hard"] == pytest.approx(levels["hard"])


def test_pair_accuracy_counts_ties_as_wrong():
    a = pair_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0], ["x", "x", "y", "y"])
    assert a["accuracy"] == 0.5 and a["ties"] == 1
    assert a["per_group"] == {"x": {"accuracy": 0.5, "count": 2}, "y": {"accuracy": 0.5, "count": 2}}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_layouts_and_bad_rows(tmp_path):
    rb = [{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s", "id": 1},
          {"prompt": "p", "chosen": "a", "subset": "s", "id": 2},
          {"prompt": "", "chosen": "a", "rejected": "b", "subset": "s", "id": 3}]
    rows = read_rows(_write_jsonl(tmp_path / "rb.jsonl", rb))
    assert detect_layout(rows) == "rewardbench"
    good, bad = validate(rows, "rewardbench", "rb.jsonl")
    assert [r.index for r in good] == [1]
    assert bad == {2: "rb.jsonl: row 2: field 'rejected' is missing",
                   3: "rb.jsonl: row 3: field 'prompt' is empty"}
    rm = [{"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"], "domain": "chat"},
          {"prompt": "p", "chosen": ["a", "b"], "rejected": ["d", "e", "f"], "domain": "chat"}]
    rows = read_rows(_write_jsonl(tmp_path / "rm.jsonl", rm))
    assert detect_layout(rows) == "rmbench"
    good, bad = validate(rows, "rmbench", "rm.jsonl")
    assert len(good) == 1 and bad == {2: "rm.jsonl: row 2: field 'chosen' must be a list of 3 strings"}
    # A line that is not a JSON object is its row's error; the other rows stay.
    (tmp_path / "broken.jsonl").write_text('[1, 2]\n{"prompt": "p", "response": "r"}\n\n{"prompt": \n')
    rows = read_rows(tmp_path / "broken.jsonl")
    good, bad = validate(rows, "plain", "broken.jsonl")
    assert [r.index for r in good] == [2]
    assert bad == {1: "broken.jsonl: row 1: (line 1) expected a JSON object, got list",
                   3: "broken.jsonl: row 3: (line 4) invalid JSON: Expecting value"}
    (tmp_path / "broken.json").write_text('[{"prompt": "p", "response": "r"}, ')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 1"):
        read_rows(tmp_path / "broken.json")
    with pytest.raises(DataError, match="cannot tell the layout"):
        detect_layout([{"question": "q"}], "x.jsonl")
    with pytest.raises(DataError, match="unknown file type"):
        read_rows(_write_jsonl(tmp_path / "x.txt", rb))


def test_parquet_rows(tmp_path):
    import datasets

    rows = [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": ""}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert read_rows(tmp_path / "d.parquet") == rows


def test_score_file_rewardbench_in_order_with_bad_and_long_rows(tmp_path, chat_model):
    long = "The quick brown fox jumps over the lazy dog. " * 20
    rows = [{"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "lazy dog", "subset": "math", "id": "a"},
            {"prompt": "Say hi", "chosen": 7, "rejected": "hi", "subset": "chat", "id": "b"},
            {"prompt": long, "chosen": long, "rejected": "", "subset": "chat", "id": "c"},
            {"prompt": "Add", "chosen": "def add(a, b):\n    return a + b", "rejected": "no", "subset": "code", "id": "d"}]
    data = _write_jsonl(tmp_path / "rb.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    s = score_file(chat_model, data, out, options=ScoreOptions(max_length=64, batch_size=2, token_rewards=True),
                   progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["row"] for x in lines] == [1, 2, 3, 4]
    assert lines[1]["error"] == f"{data}: row 2: field 'chosen' must be a string, got int"
    assert [x["id"] for x in lines if "error" not in x] == ["a", "c", "d"]
    assert s["bad_rows"] == 1 and s["truncated_rows"] == 1 and s["empty_responses"] == 1
    assert s["count"] == 3 and set(s["per_group"]) == {"math", "chat", "code"}
    for x in lines:
        if "error" not in x:
            assert x["correct"] == (x["chosen_reward"] > x["rejected_reward"])
            assert sum(x["chosen_token_rewards"]) == pytest.approx(x["chosen_reward"], abs=1e-3)
    assert json.loads((tmp_path / "scores.summary.json").read_text())["accuracy"] == s["accuracy"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        score_file(chat_model, data, out, progress=False)


def test_score_file_rmbench_and_plain_and_system_prompt(tmp_path, chat_model):
    rm = [{"id": i, "prompt": f"Question {i}", "chosen": ["5", "The answer is 5.", "**5**"],
           "rejected": ["4", "The answer is 4.", "**4**"], "domain": d}
          for i, d in enumerate(["chat", "code", "math", "safety-refuse", "safety-response"])]
    out = tmp_path / "rm.jsonl"
    s = score_file(chat_model, _write_jsonl(tmp_path / "rm_in.jsonl", rm), out, progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(len(x["chosen_reward"]) == 3 and len(x["rejected_reward"]) == 3 for x in lines)
    assert s["overall_domains"] == ["chat", "code", "math", "safety"] and s["per_domain"]["safety"]["count"] == 2
    plain = [{"prompt": "What is 2 + 3?", "response": "The answer is 5."}]
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    data = _write_jsonl(tmp_path / "plain.jsonl", plain)
    score_file(chat_model, data, a, progress=False)
    score_file(chat_model, data, b, options=ScoreOptions(system_prompt="You grade math."), progress=False)
    ra, rb = (json.loads(p.read_text())["reward"] for p in (a, b))
    assert ra != rb  # the system prompt is part of the state s_1
