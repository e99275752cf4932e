"""`grm-jax score` and `grm-jax generate` from the command line."""

import json

from grm_jax.cli import main


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_score_cli_writes_rows_and_summary(tmp_path, chat_model, capsys):
    data = _jsonl(tmp_path / "rb.jsonl", [
        {"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "4", "subset": "math"},
        {"prompt": "Say hi", "chosen": "hi", "subset": "chat"}])
    out = tmp_path / "s.jsonl"
    assert main(["score", "--model", str(chat_model), "--data", data, "--out", str(out),
                 "--reward", "mean", "--system-prompt", "Be exact."]) == 0
    text = capsys.readouterr().out
    assert "bad: " in text and "row 2: field 'rejected' is missing" in text and "accuracy" in text
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["reward"] == "mean" and summary["system_prompt"] == "Be exact." and summary["count"] == 1
    assert main(["score", "--model", str(chat_model), "--data", data, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_score_cli_reports_missing_model_and_bad_file(tmp_path, chat_model, capsys):
    data = _jsonl(tmp_path / "x.jsonl", [{"question": "q"}])
    assert main(["score", "--model", str(chat_model), "--data", data, "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "cannot tell the layout" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_cli(tmp_path, chat_model, capsys):
    prompts = _jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "What is 2 + 3?"},
        {"prompt": 5},
        {"messages": [{"role": "user", "content": "Say hi"}]}])
    out = tmp_path / "g.jsonl"
    assert main(["generate", "--model", str(chat_model), "--prompts", prompts, "--out", str(out),
                 "--max-new-tokens", "8", "--num-samples", "2", "--temperature", "1.0", "--top-p", "0.9"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["row"], x.get("sample")) for x in lines] == [(1, 0), (1, 1), (2, None), (3, 0), (3, 1)]
    assert lines[0]["id"] == "a" and "field 'prompt' must be a string" in lines[2]["error"]
    for x in lines:
        if "error" not in x:
            assert 1 <= x["tokens"] <= 8 and x["finish"] in ("stop", "length") and x["logprob"] < 0
    assert "generated 4 samples for 2/3 rows" in capsys.readouterr().out
