"""The judge pipeline: exact accounting on a tiny random GRM (noise texts), and known answers
through a scripted sampler that reads the shuffled prompt and writes the right boxed scores."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

import grm_jax.eval.judge as judge_mod
from grm_jax.loading import load_tokenizer
from grm_jax.cli import main
from grm_jax.data.grm_items import Item, read_items
from grm_jax.eval.judge import JudgeOptions, judge_file, judge_items, summarize
from grm_jax.eval.scaling import scaling_curve
from grm_jax.hf import load_hf
from grm_jax.models.value_head import init_value_head
from grm_jax.rewards.parse import REASONS
from grm_jax.sampling import Samples
from grm_jax.train.model_checkpoint import save_model


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ITEMS = [
    {"id": "a", "prompt": "What is 2 + 3?", "responses": ["It is 5. GOOD", "It is 4.", "It is 6."],
     "rewards": [1, 0, 0], "subset": "math"},
    {"id": "b", "messages": [{"role": "user", "content": "Say hi"}], "responses": ["bye", "hi GOOD"],
     "rewards": [0, 1], "subset": "chat"},
    {"id": "bad", "prompt": "tie", "responses": ["x", "y"], "rewards": [1, 1]},
    {"id": "c", "prompt": "Name a color.", "responses": ["Blue. GOOD", "Seven."], "rewards": [0.9, 0.1],
     "subset": "chat"},
]


def test_item_layouts(tmp_path):
    items, bad, layout = read_items(_jsonl(tmp_path / "g.jsonl", ITEMS))
    assert layout == "grm" and [i.id for i in items] == ["a", "b", "c"]
    assert bad == {3: f"{tmp_path / 'g.jsonl'}: row 3: field 'rewards' has no unique maximum (Eq. 10 needs one)"}
    rm = [{"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"], "domain": "chat"}]
    items, _, layout = read_items(_jsonl(tmp_path / "rm.jsonl", rm))
    assert layout == "rmbench" and len(items) == 9 and items[5].pair == (1, 2)
    assert items[5].responses == ("b", "f") and items[5].rewards == (1.0, 0.0)
    ppe = [{"prompt": "p", "response_1": "a", "response_2": "b", "response_3": "c", "scores": [0, 1, 1]}]
    items, _, layout = read_items(_jsonl(tmp_path / "ppe.jsonl", ppe))
    assert layout == "ppe_correctness" and items[0].responses == ("a", "b", "c")
    pref = [{"prompt": "p", "response_1": "a", "response_2": "b", "winner": "model_b"}]
    items, _, layout = read_items(_jsonl(tmp_path / "pref.jsonl", pref))
    assert layout == "ppe_preference" and items[0].rewards == (0.0, 1.0)


def test_end_to_end_accounting_on_a_tiny_random_grm(tmp_path, grm_model):
    data = _jsonl(tmp_path / "items.jsonl", ITEMS)
    out = tmp_path / "judged.jsonl"
    opts = JudgeOptions(k=4, max_new_tokens=12, batch_size=8)
    s = judge_file(grm_model, data, out, opts=opts, ks=[1, 2, 4], progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["row"] for x in lines] == [1, 2, 3, 4] and "error" in lines[2]
    for x in (lines[0], lines[1], lines[3]):
        assert len(x["samples"]) == 4 and len(x["votes"]) == x["n"] and 0 <= x["choice"] < x["n"]
        for smp in x["samples"]:
            assert sorted(smp["permutation"]) == list(range(x["n"]))
            assert (smp["scores"] is None) == (smp["reason"] in REASONS)
            assert smp["tokens"] <= 12
    samples = [smp for x in lines if "samples" in x for smp in x["samples"]]
    failures = sum(smp["scores"] is None for smp in samples)
    assert s["samples"] == 12 and s["parse_failures"] == failures
    assert s["parse_failure_rate"] == pytest.approx(failures / 12)
    assert sum(s["parse_failure_reasons"].values()) == failures
    assert [r["k"] for r in s["scaling"]] == [1, 2, 4] and s["items"] == 3 and s["bad_rows"] == 1
    assert s["scaling"][-1]["accuracy"] == s["accuracy_at_1"]  # k = K is the main result
    assert (tmp_path / "judged.scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "judged.summary.json").read_text())["parse_failures"] == failures
    assert s["prompts"] == 12 and s["prompts_per_s"] > 0


@pytest.fixture
def scripted(monkeypatch, grm_model):
    """Replace the sampler: reply 9 for the shown response marked GOOD, 2 for the others; every
    third sample writes garbage, so parse failures are known too."""
    tok = load_tokenizer(grm_model)
    calls = {"n": 0}

    def fake_generate(params, config, prompts, *, max_new_tokens, stop_tokens, **_):
        rows, lengths = [], []
        for ids in prompts:
            text = tok.decode(ids)
            shown = re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End of Response", text, re.S)
            calls["n"] += 1
            if calls["n"] % 3 == 0:
                reply = "Analysis: no idea"
            elif "Best: \\boxed{i}" in text:  # the LLM-as-judge baseline names the best response
                reply = "Analysis: \\boxed{1} is tempting.\nBest: \\boxed{%d}" % (
                    [i for i, r in enumerate(shown) if "GOOD" in r][0] + 1)
            elif "0 or 1" in text:  # the single-response format
                reply = "Scores: \\boxed{%d}" % ("GOOD" in shown[0])
            else:
                reply = "Scores: \\boxed{" + ", ".join("9" if "GOOD" in r else "2" for r in shown) + "}"
            ids_out = tok.encode(reply, add_special_tokens=False) + [stop_tokens[0]]
            rows.append(ids_out)
            lengths.append(len(ids_out))
        width = max(lengths)
        tokens = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
        return Samples(tokens, np.asarray(lengths), np.zeros(tokens.shape, np.float32), np.ones(len(rows), bool))

    monkeypatch.setattr(judge_mod, "generate", fake_generate)
    return tok


def test_known_answers_through_shuffles(scripted, tmp_path):
    items, _, _ = read_items(_jsonl(tmp_path / "i.jsonl", ITEMS))
    opts = JudgeOptions(k=6, batch_size=4)
    judged = judge_items(None, None, scripted, items, opts, progress=False)
    for r in judged["results"]:
        good = [i for i, x in enumerate(r["item"].responses) if "GOOD" in x][0]
        parsed = [smp for smp in r["samples"] if smp["scores"] is not None]
        assert all(smp["scores"][good] == 9 and smp["correct"] for smp in parsed)
        assert all(smp["reason"] == "no_box" and not smp["correct"] for smp in r["samples"] if smp["scores"] is None)
        assert r["votes"][good] == 9 * len(parsed) and r["choice"] == good and r["correct"]
        assert len({tuple(smp["permutation"]) for smp in r["samples"]}) > 1  # really shuffled
    s = summarize(judged, "grm", {})
    assert s["accuracy_at_1"] == 1.0 and s["parse_failures"] == 6 and s["sample_accuracy"] == pytest.approx(12 / 18)
    curve = scaling_curve(judged, [1, 2, 6], opts)
    # k = 6 always holds parsed samples; a single sample fails a third of the time, and a failed
    # sample votes nothing, so the tie-break among n responses is sometimes wrong.
    assert curve[2]["accuracy"] == 1.0 and curve[0]["accuracy"] < 1.0
    assert [c["draws"] for c in curve] == [6, 15, 1] and all(c["every_subset"] for c in curve)


def _random_judged(rng, n_items, k, with_meta):
    """Judged results as judge_items writes them: 1..4 responses, some samples unparsed, scores
    from a few values so that ties happen."""
    results = []
    for i in range(n_items):
        n = int(rng.integers(1, 5))
        rewards = tuple(float(x) for x in rng.permutation(n)) if n > 1 else (float(rng.integers(1, 4)),)
        item = Item(row=i + 1, prompt="p", responses=tuple("r" * (j + 1) for j in range(n)), rewards=rewards)
        samples = []
        for _ in range(k):
            scores = None if rng.random() < 0.15 else [int(x) for x in rng.integers(1, 4, size=n)]
            sample = {"scores": scores}
            if with_meta:
                sample["meta"] = float(rng.integers(0, 3))  # ties in the meta RM's values too
            samples.append(sample)
        results.append({"index": i, "item": item, "samples": samples, "correct": True})
    return {"results": results, "k_meta": 2 if with_meta else None}


def _brute_force_curve(judged, ks, opts):
    """The expected accuracy of voting over each k-subset, by enumeration: every subset, the
    public meta_keep and vote, and every response a random tie-break could choose."""
    from itertools import combinations

    from grm_jax.rewards.voting import meta_keep, vote

    out = []
    for k in ks:
        k_meta = None if judged["k_meta"] is None else min(judged["k_meta"], max(1, k // 2))
        per_item = []
        for r in judged["results"]:
            item, samples, hits = r["item"], r["samples"], []
            for subset in combinations(range(opts.k), k):
                keep = list(subset)
                if k_meta is not None:
                    keep = [keep[j] for j in meta_keep([samples[j]["meta"] for j in keep], min(k_meta, k))]
                parsed = [samples[j]["scores"] for j in keep if samples[j]["scores"] is not None]
                if not parsed:
                    hits.append(0.0)
                elif len(item.responses) == 1:
                    hits.append(float(round(float(np.mean([p[0] for p in parsed]))) == item.rewards[0]))
                else:
                    v = vote(parsed, len(item.responses), opts.vote)
                    tied = np.flatnonzero(v == v.max())
                    hits.append(np.mean([item.rewards[t] == max(item.rewards) for t in tied]))
            per_item.append(np.mean(hits))
        out.append(float(np.mean(per_item)))
    return out


@pytest.mark.parametrize("method,with_meta", [("sum", False), ("sum", True), ("mean", False), ("majority", True)])
def test_scaling_curve_is_the_expected_accuracy_over_every_subset(method, with_meta):
    """With at most `scaling_draws` k-subsets the curve enumerates them all and counts each random
    tie-break at its expected value: equal to a brute-force enumeration with the public vote and
    meta_keep. With fewer draws than subsets, a random sample of them lands within 4 standard
    errors of the exact value."""
    rng = np.random.default_rng(11)
    judged = _random_judged(rng, 40, 6, with_meta)
    opts = JudgeOptions(k=6, vote=method, scaling_draws=20)  # C(6, 3) = 20: k = 1, 2, 3, 5, 6 exact
    ks = [1, 2, 3, 5, 6]
    curve = scaling_curve(judged, ks, opts)
    assert all(c["every_subset"] for c in curve) and [c["draws"] for c in curve] == [6, 15, 20, 6, 1]
    assert [c["accuracy"] for c in curve] == pytest.approx(_brute_force_curve(judged, ks, opts), abs=1e-12)
    sampled = scaling_curve(judged, [3], dataclasses.replace(opts, scaling_draws=8))[0]
    assert sampled["draws"] == 8 and not sampled["every_subset"]
    exact = curve[2]["accuracy"]
    se = np.sqrt(0.25 / (8 * len(judged["results"])))
    assert sampled["accuracy"] != exact and abs(sampled["accuracy"] - exact) < 4 * se


def test_two_votes_choose_as_often_as_one_when_samples_never_tie():
    """Two responses, every sample scores them 9 / 2 one way or the other: two samples agree
    (same choice as either alone) or tie (a coin flip), so Voting@2 equals Voting@1 exactly; the
    curve shows it (an estimate from a few random subsets would not)."""
    rng = np.random.default_rng(3)
    results = []
    for i in range(30):
        right = rng.random(16) < rng.random()
        samples = [{"scores": [9, 2] if ok else [2, 9]} for ok in right]
        results.append({"index": i, "item": Item(row=i + 1, prompt="p", responses=("a", "b"), rewards=(1.0, 0.0)),
                        "samples": samples, "correct": True})
    curve = scaling_curve({"results": results, "k_meta": None}, [1, 2, 4], JudgeOptions(k=16))
    assert curve[0]["accuracy"] == pytest.approx(curve[1]["accuracy"], abs=1e-12)
    assert curve[2]["accuracy"] != pytest.approx(curve[1]["accuracy"], abs=1e-3)


@pytest.mark.parametrize("reply,wrong,ties", [("Analysis: no idea", 8, 0), ("Scores: \\boxed{5, 5}", 0, 8)])
def test_unparsed_items_count_wrong_and_tie_breaks_are_counted(reply, wrong, ties, scripted, tmp_path, monkeypatch):
    """Every sample unparseable: the random tie-break would guess right about half the time, but an
    item with nothing to vote on is wrong. Equal boxed scores are a real tie: still broken at
    random (the paper's rule), and counted."""
    items, _, _ = read_items(_jsonl(tmp_path / "i.jsonl", [ITEMS[1]] * 4 + [ITEMS[3]] * 4))

    def fixed(params, config, prompts, *, max_new_tokens, stop_tokens, **_):
        ids = scripted.encode(reply, add_special_tokens=False) + [stop_tokens[0]]
        tokens = np.asarray([ids] * len(prompts), np.int32)
        return Samples(tokens, np.full(len(prompts), len(ids)), np.zeros(tokens.shape, np.float32),
                       np.ones(len(prompts), bool))
    monkeypatch.setattr(judge_mod, "generate", fixed)
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=2, batch_size=8), progress=False)
    s = summarize(judged, "grm", {})
    assert s["items_without_parsed_sample"] == wrong and s["items_decided_by_tie_break"] == ties
    if wrong:
        assert s["accuracy_at_1"] == 0.0 and not any(r["correct"] for r in judged["results"])
    else:
        assert 0.0 < s["accuracy_at_1"] < 1.0  # 8 coin flips between two responses, seeded


def test_meta_rm_keeps_the_samples_it_rates_highest(scripted, tmp_path, monkeypatch, grm_model):
    items, _, _ = read_items(_jsonl(tmp_path / "i.jsonl", ITEMS[:1]))
    # The meta RM (faked) rates the failed samples highest: with k_meta = 2 of 6 only failures are
    # kept, so the votes are all zero and the choice is a seeded tie-break.
    monkeypatch.setattr(judge_mod, "meta_values",
                        lambda meta, texts, **_: np.asarray([5.0 if "no idea" in t else -5.0 for t in texts]))
    meta = judge_mod.MetaRM(None, None, None, None, judge_mod.load_template("meta_rm"))
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=6, k_meta=2), meta=meta, progress=False)
    r = judged["results"][0]
    assert [r["samples"][j]["scores"] for j in r["kept"]] == [None, None]
    assert r["votes"] == [0.0, 0.0, 0.0] and judged["k_meta"] == 2
    # Rating the parsed samples highest keeps two good ones.
    monkeypatch.setattr(judge_mod, "meta_values",
                        lambda meta, texts, **_: np.asarray([-5.0 if "no idea" in t else 5.0 for t in texts]))
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=6, k_meta=2), meta=meta, progress=False)
    assert judged["results"][0]["votes"] == [18.0, 4.0, 4.0]


def test_judge_cli_with_a_real_meta_rm(tmp_path, grm_model, capsys):
    cfg, params = load_hf(grm_model, progress=False)
    tok_files = [p for p in grm_model.iterdir() if p.name.startswith(("tokenizer", "special", "chat"))]
    save_model(tmp_path / "meta", params, cfg, tokenizer_files=tok_files,
               extra_arrays={"value_head": init_value_head(cfg, jax.random.key(0))})
    data = _jsonl(tmp_path / "items.jsonl", ITEMS[:2])
    out = tmp_path / "j.jsonl"
    assert main(["judge", "--model", str(grm_model), "--data", str(data), "--out", str(out), "--k", "1,2",
                 "--max-new-tokens", "6", "--meta-rm", str(tmp_path / "meta")]) == 0
    text = capsys.readouterr().out
    assert "| k | accuracy |" in text and "prompts/s" in text
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(len(x["kept"]) == 1 and all("meta" in smp for smp in x["samples"]) for x in lines)
    assert main(["judge", "--model", str(grm_model), "--data", str(data), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_single_response_and_judge_baseline_formats(scripted, tmp_path):
    items, _, _ = read_items(_jsonl(tmp_path / "i.jsonl", ITEMS[:2]))
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=6, format="judge"), progress=False)
    for r in judged["results"]:
        good = [i for i, x in enumerate(r["item"].responses) if "GOOD" in x][0]
        assert r["votes"][good] == 4 and sum(r["votes"]) == 4 and r["choice"] == good  # 4 of 6 parsed
    single = [{"prompt": "Is 17 prime?", "responses": ["Yes. GOOD"], "rewards": [1]},
              {"prompt": "Is 15 prime?", "responses": ["Yes."], "rewards": [0]}]
    items, _, _ = read_items(_jsonl(tmp_path / "s.jsonl", single))
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=3, format="single"), progress=False)
    assert [r["votes"] for r in judged["results"]] == [[2.0], [0.0]]
    assert [r["correct"] for r in judged["results"]] == [True, True]
    with pytest.raises(ValueError, match="scores one response"):
        judge_items(None, None, scripted, read_items(_jsonl(tmp_path / "t.jsonl", ITEMS[:1]))[0],
                    JudgeOptions(k=1, format="single"), progress=False)


def test_rft_keeps_correct_trajectories_and_drops_too_easy_items(scripted, tmp_path):
    from grm_jax.train.rft import select_trajectories

    items, _, _ = read_items(_jsonl(tmp_path / "i.jsonl", ITEMS))
    judged = judge_items(None, None, scripted, items, JudgeOptions(k=3, temperature=1.0), progress=False,
                         hinted=True)
    rows, counts = select_trajectories(judged, 3)
    # The scripted GRM fails every third call and is right otherwise; the hinted sample is the
    # 4th call per item (items of 4 calls: calls 3, 6, 9, 12 fail).
    per_item = [[s["scores"] is not None for s in r["samples"]] for r in judged["results"]]
    assert all(len(p) == 4 for p in per_item)
    too_easy = sum(all(p[:3]) for p in per_item)
    assert counts["too_easy"] == too_easy and counts["items"] == 3
    kept_plain = sum(sum(p[:3]) for p in per_item if not all(p[:3]))
    kept_hint = sum(p[3] for p in per_item if not all(p[:3]))
    assert counts["kept"] == kept_plain + kept_hint == len(rows) and counts["kept_hinted"] == kept_hint
    assert counts["parse_failures"] == sum(not x for p in per_item for x in p)
    for row in rows:
        user, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        assert "Hint:" not in user and reply.startswith("Scores: \\boxed{")
        assert "#### Responses to be Scored ####" in user


def test_rft_cli_on_a_tiny_random_grm(tmp_path, grm_model, capsys):
    data = _jsonl(tmp_path / "items.jsonl", ITEMS)
    out = tmp_path / "rft.jsonl"
    assert main(["rft", "--model", str(grm_model), "--data", str(data), "--out", str(out), "--n", "2",
                 "--max-new-tokens", "6", "--hint"]) == 0
    counts = json.loads((tmp_path / "rft.summary.json").read_text())
    assert counts["items"] == 3 and counts["bad_rows"] == 1 and counts["samples"] == 9  # 3 x (2 + hint)
    assert counts["kept"] == len(out.read_text().splitlines())
    assert counts["too_easy"] + counts["all_wrong"] <= counts["items"]
    assert "row 3" in capsys.readouterr().out
