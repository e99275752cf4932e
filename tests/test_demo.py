"""`grm-jax demo` (the main job) at smoke-test size: every stage runs and the report is written.

The fast config trains far too little for the method's claims to show; what is checked here is
that the pipeline runs end to end, writes its table, plots and HF export, is deterministic
where cheap to check, and refuses to overwrite a finished run.
"""

import json
from pathlib import Path

import pytest

from grm_jax.cli import main
from grm_jax.config import load_config
from grm_jax.demo import DemoConfig, run_demo
from grm_jax.demo.data import corpus_rows, split_items
from grm_jax.demo.report import claims, mean_table
from grm_jax.synthetic import TaskConfig

FAST = Path(__file__).resolve().parents[1] / "configs" / "demo" / "fast.yaml"
STAGES = ["data", "tokenizer and model", "pretrain", "rft", "grpo", "meta_rm", "eval", "baselines",
          "endogenous", "export", "report"]


def _run_fast(out: Path) -> dict:
    cfg = load_config(DemoConfig, FAST, [f"out={out}"])
    return run_demo(cfg, progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, _run_fast(out)


def test_fast_demo_runs_end_to_end_and_writes_the_report(fast_run):
    out, results = fast_run
    assert list(results["timings"]["stages"]) == STAGES
    written = json.loads((out / "results.json").read_text())
    assert written["greedy"].keys() == {"pretrained", "rft", "grpo", "llm_as_judge"}
    assert written["validation"].keys() == {"pretrained", "rft", "grpo"}  # fast.yaml: val_items 8
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in written["validation"].values())
    assert [r["k"] for r in written["voting"]] == [1, 2, 4] == [r["k"] for r in written["meta_voting"]]
    vs = written["validation_scaling"]  # the same curves on the 8 validation items
    assert [r["k"] for r in vs["voting"]] == [1, 2, 4] == [r["k"] for r in vs["meta_voting"]]
    assert all(r["items"] == 8 and 0.0 <= r["accuracy"] <= 1.0 for r in [*vs["voting"], *vs["meta_voting"]])
    for row in [*written["voting"], *written["meta_voting"], *written["greedy"].values()]:
        assert 0.0 <= row["accuracy"] <= 1.0
    assert written["export"]["max_abs_logits_diff"] < 1e-4 and written["export"]["tokenizer_round_trip"]
    e = written["endogenous"]
    assert 0 < e["chance"] < 1 and set(e["task_accuracy"]) == {"before", "after"}
    g = written["grpo_runs"]["grpo"]
    assert g["steps_per_quarter"] == 1 and g["rise"] == pytest.approx(g["last_quarter"] - g["first_quarter"])
    table = (out / "results.md").read_text()
    for needle in ("GRM pretrained (greedy)", "Voting@4", "MetaRM@4", "Scalar Bradley-Terry RM",
                   "LLM-as-judge", "Endogenous reward", "max |logits diff|", "| Claim | holds |",
                   "| RFT > pretrained (greedy) |", "| Stage | seconds |", "on the validation items",
                   "| k, on the validation items (for searches) |",
                   "| pretrain |", "| total |"):
        assert needle in table
    for name in ("scaling.png", "training.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "hf_export" / "config.json").is_file()
    means = mean_table([written, written])
    pre = written["greedy"]["pretrained"]["accuracy"]
    assert f"| GRM pretrained (greedy) | {100 * pre:.1f} | 0.0 | {100 * pre:.1f} | {100 * pre:.1f} |" in means
    holds = claims(written)["RFT > pretrained (greedy)"]
    assert f"| RFT > pretrained (greedy) | {'yes' if holds else 'no'} |" in means
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(load_config(DemoConfig, FAST, [f"out={out}"]), progress=False, log=lambda *a: None)


def test_same_seed_same_results(fast_run, tmp_path):
    """Two runs of one seed on one machine: the same results.json, the timings aside."""
    first, _ = fast_run
    _run_fast(tmp_path / "again")
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, tmp_path / "again"))
    assert a.pop("timings") and b.pop("timings")
    assert a == b
    for name in ("data/corpus.jsonl", "data/eval_items.jsonl", "tokenizer/tokenizer.json"):
        assert (first / name).read_text() == (tmp_path / "again" / name).read_text(), name


def test_claims_are_checked_against_the_figures():
    r = {"greedy": {"pretrained": {"accuracy": 0.5}, "rft": {"accuracy": 0.6}, "grpo": {"accuracy": 0.55}},
         "grpo_runs": {"grpo": {"rise": 0.1, "rise_se": 0.04}},
         "voting": [{"k": 1, "accuracy": 0.5}, {"k": 2, "accuracy": 0.6}, {"k": 8, "accuracy": 0.6},
                    {"k": 16, "accuracy": 0.7}],
         "meta_voting": [{"k": 1, "accuracy": 0.5}, {"k": 2, "accuracy": 0.5}, {"k": 8, "accuracy": 0.6},
                         {"k": 16, "accuracy": 0.69}]}
    c = claims(r)
    assert c["RFT > pretrained (greedy)"] and not c["GRPO > RFT (greedy)"]
    assert c["GRPO reward rises: last quarter - first quarter > 2 standard errors"]
    assert c["Voting@k rises with k (each k >= k/2, Voting@16 > Voting@1)"]
    assert not c["MetaRM@k >= Voting@k for k >= 8"]
    r["grpo_runs"]["grpo"]["rise_se"] = 0.06
    r["voting"][2]["accuracy"] = 0.55
    c = claims(r)
    assert not c["GRPO reward rises: last quarter - first quarter > 2 standard errors"]
    assert not c["Voting@k rises with k (each k >= k/2, Voting@16 > Voting@1)"]


def test_demo_data_is_deterministic_and_held_out():
    task = TaskConfig(max_operand=5)
    train, held, val = split_items(300, 40, seed=3, cfg=task, n_val=50)
    assert (train, held, val) == split_items(300, 40, seed=3, cfg=task, n_val=50)
    assert (train, held, []) == split_items(300, 40, seed=3, cfg=task)  # val_items changes no other split
    assert len(val) == 50
    keys = [{(it["prompt"], tuple(sorted(it["claims"]))) for it in split} for split in (train, held, val)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert len(keys[1]) == 40 and len(keys[2]) == 50
    with pytest.raises(ValueError, match="too few distinct items"):
        split_items(300, 40, seed=3, cfg=TaskConfig(max_operand=1, ops=("+",)), n_val=50)
    kw = dict(seed=3, qa_repeats=1, qa_error=0.2, plus_one_repeats=1, grm_shuffles=1, judge_shuffles=1,
              grm_template="grm_compact", judge_template="judge_compact")
    rows = corpus_rows(train, task, **kw)
    assert rows == corpus_rows(train, task, **kw)
    assert len(rows) == 2 * 108 + 2 * len(train)
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)


def test_default_yaml_is_the_dataclass_default():
    """`grm-jax demo` with no --config runs DemoConfig(); configs/demo/default.yaml documents it."""
    assert load_config(DemoConfig, FAST.parent / "default.yaml", []) == DemoConfig()


def test_demo_cli_help_and_bad_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0 and "embedded default" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "x"), "k=3"]) == 2
    assert "power of two" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "no_such_field=1"]) == 2


def test_grpo_mixed_items_are_those_with_a_right_and_a_wrong_first_n_sample():
    from grm_jax.demo.grpo import mixed_items

    def item(index, labels):  # None = unparsed (no label; GRPO's reward gives it -1, so it counts as wrong)
        return {"index": index, "samples": [{} if c is None else {"correct": c} for c in labels]}

    judged = {"results": [item(0, [True, True, True, False]),  # the 4th is the hinted sample: left out
                          item(2, [True, None, True]), item(3, [False, False, False]), item(5, [None, False, True]),
                          item(7, [True, True])]}
    assert mixed_items(judged, 3) == [2, 5]  # indices as judged (item 1 was skipped by the judge)
    assert mixed_items(judged, 1) == []


def test_meta_rm_batches_are_class_balanced_and_group_rows_of_like_length():
    import numpy as np

    from grm_jax.demo.meta_rm import length_grouped_batches, padded_length

    rng = np.random.default_rng(3)
    lengths = rng.integers(40, 200, 300)
    labels = (rng.random(300) < 0.3).astype(int)  # 90-odd correct rows, the rest incorrect
    pool = length_grouped_batches(lengths, labels, 16, np.random.default_rng(0), pool=4)
    assert len(pool) == 4 and all(len(b) == 16 and labels[b].sum() == 8 for b in pool)
    rows = np.concatenate(pool)
    assert len(set(rows.tolist())) == 64  # each class has >= 32 rows: drawn without replacement
    # Sorted by length within each class, cut into runs: the longest of a batch's correct rows is
    # no longer than the shortest correct row of any batch after it in length order.
    by_len = sorted(pool, key=lambda b: lengths[b[:8]].max())
    for a, b in zip(by_len, by_len[1:]):
        assert lengths[a[:8]].max() <= lengths[b[:8]].min() and lengths[a[8:]].max() <= lengths[b[8:]].min()
    padding = sum(padded_length(int(lengths[b].max())) * 16 - lengths[b].sum() for b in pool)
    one_by_one = [np.concatenate([rng.choice(np.flatnonzero(labels == c), 8, replace=False) for c in (1, 0)])
                  for _ in range(4)]
    assert padding < sum(padded_length(int(lengths[b].max())) * 16 - lengths[b].sum() for b in one_by_one)
    # Same generator state, same batches; a class with too few rows is drawn with replacement.
    again = length_grouped_batches(lengths, labels, 16, np.random.default_rng(0), pool=4)
    assert all((a == b).all() for a, b in zip(pool, again))
    few = np.zeros(300, int)
    few[:3] = 1
    assert all(few[b].sum() == 8 for b in length_grouped_batches(lengths, few, 16, rng, pool=4))
    assert all(len(b) == 16 for b in length_grouped_batches(lengths, np.zeros(300, int), 16, rng, pool=4))
    assert [padded_length(n) for n in (1, 32, 33, 150)] == [32, 32, 64, 160]


def test_meta_trajectories_leave_out_hinted_unparsed_and_with_mixed_only_unanimous_items():
    from grm_jax.demo.meta_rm import first_items, meta_trajectories

    def item(name, labels, hinted=None):  # one judged item: its samples' labels (None = unparsed), then the hinted one
        samples = [{"text": f"t{j}"} | ({} if c is None else {"correct": c}) for j, c in enumerate(labels)]
        samples.append({"text": "hinted", "correct": True} if hinted is None else hinted)
        return {"item": name, "prompts": [f"p{j}" for j in range(len(samples))], "samples": samples}

    def flat(rows):  # (item, prompt, sample text, label)
        return [(it, p, s["text"], label) for it, p, s, label in rows]

    judged = {"results": [item("a", [True, False, None]), item("b", [False, False, False]),
                          item("c", [True, None, True])]}
    rows, skipped = meta_trajectories([(judged, 3)], mixed_only=False)
    assert flat(rows) == [("a", "p0", "t0", 1), ("a", "p1", "t1", 0), ("b", "p0", "t0", 0), ("b", "p1", "t1", 0),
                          ("b", "p2", "t2", 0), ("c", "p0", "t0", 1), ("c", "p2", "t2", 1)] and skipped == 0
    rows, skipped = meta_trajectories([(judged, 3)], mixed_only=True)
    assert flat(rows) == [("a", "p0", "t0", 1), ("a", "p1", "t1", 0)] and skipped == 5
    assert meta_trajectories([(judged, 1)], mixed_only=True) == ([], 3)  # one sample an item never disagrees
    indexed = {"results": [dict(r, index=i) for i, r in zip((0, 2, 3), judged["results"])], "k_meta": None}
    assert [r["index"] for r in first_items(indexed, 3)["results"]] == [0, 2] and first_items(indexed, 0)["results"] == []
