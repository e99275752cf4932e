"""A bad row is reported and every other row processed (issue 16, items 6 and 7): text that is not
valid Unicode (a lone surrogate, valid JSON) and prompts too long for the model, through
`generate`, `score`, `judge` and the SFT reader."""

import json

from grm_jax.loading import load_tokenizer
from grm_jax.cli import main

SURROGATE = "\ud800 x"  # json.dumps writes it as the escape \ud800: valid JSON, invalid Unicode


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _lines(path):
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def test_generate_reports_bad_and_overlong_rows(tmp_path, chat_model, capsys):
    long = "the quick brown fox " * 400  # far beyond the tiny model's positions
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2 + 3?"}, {"prompt": SURROGATE},
                                            {"prompt": long}, {"prompt": "Say hi"}])
    out = tmp_path / "g.jsonl"
    assert main(["generate", "--model", str(chat_model), "--prompts", prompts, "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    rows = _lines(out)
    assert [r["row"] for r in rows] == [1, 2, 3, 4]
    assert "error" not in rows[0] and "error" not in rows[3]
    assert "not valid Unicode" in rows[1]["error"] and "row 2" in rows[1]["error"]
    assert "positions" in rows[2]["error"] and "row 3" in rows[2]["error"]


def test_score_reports_a_lone_surrogate_row(tmp_path, chat_model, capsys):
    data = _jsonl(tmp_path / "rb.jsonl", [
        {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "4"},
        {"prompt": "Say hi", "chosen": SURROGATE, "rejected": "bye"},
        {"prompt": SURROGATE, "chosen": "hi", "rejected": "bye"}])
    out = tmp_path / "s.jsonl"
    assert main(["score", "--model", str(chat_model), "--data", data, "--out", str(out)]) == 0
    errors = {r["row"]: r["error"] for r in _lines(out) if "error" in r}
    assert sorted(errors) == [2, 3] and "'response'" in errors[2] and "'prompt'" in errors[3]
    assert json.loads((tmp_path / "s.summary.json").read_text())["count"] == 1


def test_judge_reports_bad_and_overlong_items(tmp_path, grm_model, capsys):
    good = {"prompt": "What is 2 + 3?", "responses": ["5", "4"], "rewards": [1, 0]}
    data = _jsonl(tmp_path / "i.jsonl", [
        good, {"prompt": SURROGATE, "responses": ["5", "4"], "rewards": [1, 0]},
        {"prompt": "the quick brown fox " * 3000, "responses": ["5", "4"], "rewards": [1, 0]}, good])
    out = tmp_path / "j.jsonl"
    assert main(["judge", "--model", str(grm_model), "--data", data, "--out", str(out), "--k", "1",
                 "--max-new-tokens", "4"]) == 0
    rows = _lines(out)
    assert [r["row"] for r in rows] == [1, 2, 3, 4]
    assert "not valid Unicode" in rows[1]["error"] and "tokens" in rows[2]["error"]
    summary = json.loads((tmp_path / "j.summary.json").read_text())
    assert summary["items"] == 2 and summary["bad_rows"] == 2


def test_sft_reader_reports_a_lone_surrogate_row(tmp_path, chat_model):
    
    from grm_jax.data.chat import ChatFormatter
    from grm_jax.data.pipeline import read_sft

    data = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "hi", "response": "hello"},
                                           {"prompt": "hi", "response": SURROGATE}])
    formatter = ChatFormatter(load_tokenizer(chat_model))
    examples, bad, _ = read_sft(data, formatter, 64)
    assert [i for i, _ in examples] == [1] and "not valid Unicode" in bad[2]


def test_an_hf_dir_and_its_checkpoint_score_identically(tmp_path, chat_model):
    """One tokenizer path for every form of a model (issue 16, item 2): with config.json beside the
    tokenizer, transformers would pick Qwen2Tokenizer and encode "is 5" otherwise than the saved
    tokenizer.json, which the checkpoint's tokenizer/ (no config.json) uses."""
    from grm_jax.loading import load_with_tokenizer

    text = "What is 1+1? The answer is 5."
    ckpt = tmp_path / "ckpt"
    assert main(["import-hf", str(chat_model), str(ckpt)]) == 0
    ids = [load_with_tokenizer(m, progress=False)[3].encode(text) for m in (chat_model, ckpt)]
    assert ids[0] == ids[1]
    data = _jsonl(tmp_path / "rb.jsonl", [{"prompt": "What is 1+1?", "chosen": "The answer is 5.",
                                           "rejected": "is 5 or 6"}])
    rewards = []
    for name, model in (("hf", chat_model), ("ckpt", ckpt)):
        out = tmp_path / f"{name}.jsonl"
        assert main(["score", "--model", str(model), "--data", data, "--out", str(out)]) == 0
        rewards.append(_lines(out))
    assert rewards[0] == rewards[1]
