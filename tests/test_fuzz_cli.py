"""The command-line contract under generated hostile input (issue 16): data files of arbitrary
rows (any Unicode, lone surrogates and NUL included, wrong types, missing and extra fields, empty
and huge fields, lines that are not JSON objects) through `score`, `generate`, `judge`, `sft` and
`grpo` on tiny models, and arbitrary option values. Every run ends with exit status 0 or 2 and no
traceback (main() lets any other exception through, failing the test); with 0, every input row
is accounted for (a result or an `error` line naming its row); with 2, one line says what is
wrong and no output or temporary file is left. A subprocess run of one hostile file per command
checks the same from outside: stderr carries no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from grm_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Any code point, lone surrogates and NUL included (json.dumps escapes what UTF-8 cannot carry).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
HUGE = st.just("lorem ipsum " * 600)  # beyond the tiny models' positions
VALUE = st.one_of(TEXT, HUGE, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(),
                  st.lists(TEXT, max_size=3), st.dictionaries(TEXT, TEXT, max_size=2))
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": st.one_of(TEXT, st.integers())}), max_size=3)


def _row(fields: dict):
    """A row with each field usually well-typed, sometimes anything at all, sometimes missing."""
    optional = {k: st.one_of(v, v, VALUE) for k, v in fields.items()}
    return st.fixed_dictionaries({}, optional=optional | {"extra": VALUE})


PREFERENCE = _row({"prompt": st.one_of(TEXT, MESSAGES), "chosen": TEXT, "rejected": TEXT, "subset": TEXT})
PROMPTS = _row({"prompt": st.one_of(TEXT, MESSAGES), "messages": MESSAGES})
ITEMS = _row({"prompt": TEXT, "responses": st.lists(TEXT, max_size=4),
              "rewards": st.lists(st.one_of(st.integers(0, 1), st.floats(allow_nan=True)), max_size=4), "id": TEXT})
SFT = _row({"prompt": st.one_of(TEXT, MESSAGES), "response": TEXT, "messages": MESSAGES})
# A line that is not a JSON object: its row's error, like any other bad row.
NOT_AN_OBJECT = st.sampled_from(["{", "not json", "[1, 2]", '"text"', "null", "{\"a\": }"])


@st.composite
def _lines(draw, rows):
    """1-6 JSON lines of `rows`; in about one file in four, a line that is not an object among them."""
    lines = draw(st.lists(rows.map(json.dumps), min_size=1, max_size=6))
    bad = draw(st.one_of(st.none(), st.none(), st.none(), NOT_AN_OBJECT))
    if bad is not None:
        lines.insert(draw(st.integers(0, len(lines))), bad)
    return lines


def _write(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    if currently_in_test_context():
        event(f"{argv[0]}: exit {code}")  # pytest --hypothesis-show-statistics counts them
    assert code in (0, 2), (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        assert err.strip(), "exit 2 says why"
    return code, err


def _accounted(out: Path, n_rows: int, per_row: str = "row") -> None:
    """Every input row has a line (a result, or an error naming the row) and nothing else."""
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert sorted({x[per_row] for x in lines}) == list(range(1, n_rows + 1))
    for x in lines:
        if "error" in x:
            assert f"row {x[per_row]}" in x["error"], x


# Shrinking a failing training run takes minutes; the failing file is printed as generated.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
FUZZ = settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _case_dir(tmp_path: Path) -> Path:
    d = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    return d


@FUZZ
@given(lines=_lines(PREFERENCE))
def test_score_survives_any_preference_file(tmp_path, chat_model, capsys, lines):
    d = _case_dir(tmp_path)
    lines = lines + [json.dumps({"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"})]  # a layout to find
    data, out = _write(d / "data.jsonl", lines), d / "scores.jsonl"
    code, err = _run(["score", "--model", str(chat_model), "--data", str(data), "--out", str(out),
                      "--max-length", "64"], capsys)
    if code == 0:
        _accounted(out, len(lines))
    else:
        assert "data.jsonl" in err and _leftovers(d, {"data.jsonl"}) == [], err


@settings(FUZZ, max_examples=4)
@given(lines=_lines(PROMPTS))
def test_generate_survives_any_prompt_file(tmp_path, chat_model, capsys, lines):
    d = _case_dir(tmp_path)
    data, out = _write(d / "prompts.jsonl", lines), d / "out.jsonl"
    code, err = _run(["generate", "--model", str(chat_model), "--prompts", str(data), "--out", str(out),
                      "--max-new-tokens", "3"], capsys)
    if code == 0:
        _accounted(out, len(lines))
    else:
        assert "prompts.jsonl" in err and _leftovers(d, {"prompts.jsonl"}) == [], err


@settings(FUZZ, max_examples=4)
@given(lines=_lines(ITEMS))
def test_judge_survives_any_item_file(tmp_path, grm_model, capsys, lines):
    d = _case_dir(tmp_path)
    lines = lines + [json.dumps({"prompt": "2 + 2?", "responses": ["4", "5"], "rewards": [1, 0]})]
    data, out = _write(d / "items.jsonl", lines), d / "judged.jsonl"
    code, err = _run(["judge", "--model", str(grm_model), "--data", str(data), "--out", str(out), "--k", "1",
                      "--max-new-tokens", "3"], capsys)
    if code == 0:
        _accounted(out, len(lines))
    else:
        assert "items.jsonl" in err and _leftovers(d, {"items.jsonl"}) == [], err


@settings(FUZZ, max_examples=2)
@given(lines=_lines(SFT))
def test_sft_survives_any_data_file(tmp_path, chat_model, capsys, lines):
    d = _case_dir(tmp_path)
    data = _write(d / "sft.jsonl", lines + [json.dumps({"prompt": "What is 1 + 1?", "response": "2"})])
    code, err = _run(["sft", f"model={chat_model}", f"data={data}", f"out={d / 'run'}", "steps=1", "batch_size=1",
                      "max_length=32", "chunk=16"], capsys)
    if code == 0:
        assert (d / "run" / "final").is_dir()
    else:
        assert "sft.jsonl" in err, err


@settings(FUZZ, max_examples=2)
@given(lines=_lines(PROMPTS))
def test_grpo_survives_any_prompt_file(tmp_path, chat_model, capsys, lines):
    d = _case_dir(tmp_path)
    data = _write(d / "prompts.jsonl", lines + [json.dumps({"prompt": "Count to 3."})])
    code, err = _run(["grpo", f"model={chat_model}", f"data={data}", f"out={d / 'run'}", "reward=token_rate",
                      "reward_target=100", "steps=1", "prompts_per_step=1", "group_size=2", "max_new_tokens=3",
                      "max_prompt_length=32"], capsys)
    if code == 0:
        assert (d / "run" / "final").is_dir()
    else:
        assert "prompts.jsonl" in err, err


OPTION = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0", "-1", "inf", "nan", "1e9", "", "x", "1,2",
                                                                   "fsdp=-1,fsdp=1", "data=3"]), TEXT)


@settings(FUZZ, max_examples=40)
@given(command=st.sampled_from(["score", "generate", "judge"]),
       flag=st.sampled_from(["--batch-size", "--max-new-tokens", "--temperature", "--k", "--max-length", "--alpha",
                             "--chunk", "--top-p", "--top-k", "--num-samples", "--mesh", "--k-meta", "--reward",
                             "--vote", "--format"]),
       value=OPTION)
def test_any_option_value_is_a_usage_error_or_accepted(tmp_path, capsys, command, flag, value):
    """Against a model path that does not exist: a bad value is exit 2 before loading; a good one
    reaches the loader, which says the model is missing (exit 2); never a traceback."""
    data = {"score": "--data", "generate": "--prompts", "judge": "--data"}[command]
    _run([command, "--model", str(tmp_path / "no-model"), data, str(tmp_path / "d.jsonl"), "--out",
          str(tmp_path / "o.jsonl"), flag, value], capsys)
    assert not (tmp_path / "o.jsonl").exists()


HOSTILE = [{"prompt": "\ud800", "chosen": "a", "rejected": "b", "response": "x"}, {"prompt": "ok\u0000",
           "chosen": 3, "rejected": None}, {"prompt": "", "chosen": "", "rejected": ""},
           {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "response": "4"}]


@pytest.mark.parametrize("command", ["score", "generate"])
def test_a_hostile_file_in_a_subprocess_leaves_no_traceback(tmp_path, chat_model, command):
    data = _write(tmp_path / "data.jsonl", [json.dumps(r) for r in HOSTILE])
    out = tmp_path / "out.jsonl"
    flag = "--data" if command == "score" else "--prompts"
    extra = ["--max-new-tokens", "2"] if command == "generate" else []
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    got = subprocess.run([sys.executable, "-m", "grm_jax.cli", command, "--model", str(chat_model), flag, str(data),
                          "--out", str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr[-2000:]
    _accounted(out, len(HOSTILE))


def test_the_file_that_crashed_arrows_json_reader_is_read_row_by_row(tmp_path, chat_model, capsys):
    """tests/data/arrow_segfault.jsonl (6 lines, generated by the fuzzing above) made
    `datasets.load_dataset("json")` kill the process with a segmentation fault; grm-jax reads it
    with Python's json: its first line (null) is that row's error, the rest are validated."""
    data = ROOT / "tests" / "data" / "arrow_segfault.jsonl"
    out = tmp_path / "scores.jsonl"
    code, _ = _run(["score", "--model", str(chat_model), "--data", str(data), "--out", str(out), "--max-length", "64"],
                   capsys)
    assert code == 0
    _accounted(out, 6)
    assert "expected a JSON object, got NoneType" in json.loads(out.read_text().splitlines()[0])["error"]
