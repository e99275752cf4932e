"""The synthetic judging task: checkable items and imperfect, well-formatted teacher replies."""

import random

import numpy as np
import pytest

from grm_jax.rewards.grm import JUDGE, MULTI, SINGLE
from grm_jax.rewards.parse import parse_scores
from grm_jax.rewards.voting import is_correct, unshuffle
from grm_jax.synthetic import OPS, TaskConfig, all_queries, make_item, make_items, misconceptions, teacher_reply


def test_items_are_checkable_and_have_a_unique_right_response():
    items = make_items(300, seed=1)
    assert items == make_items(300, seed=1) and items != make_items(300, seed=2)
    for it in items:
        a, op, b = it["parts"]
        assert it["answer"] == OPS[op](a, b) and it["prompt"] == f"What is {a} {op} {b}?"
        assert 2 <= len(it["responses"]) <= 4 and sum(it["rewards"]) == 1
        for claim, reward, text in zip(it["claims"], it["rewards"], it["responses"]):
            assert (claim == it["answer"]) == bool(reward) and text == f"{a} {op} {b} = {claim}."
        assert len(set(it["claims"])) == len(it["claims"])


def test_single_response_items():
    rng = random.Random(0)
    items = [make_item(rng, TaskConfig(), n=1) for _ in range(200)]
    assert {tuple(it["rewards"]) for it in items} == {(0,), (1,)}


def _teacher_accuracy(error, count=400):
    cfg = TaskConfig(teacher_error=error)
    rng = random.Random(3)
    right, truthful_count = [], 0
    for k, it in enumerate(make_items(count, seed=3, cfg=cfg)):
        perm = np.random.default_rng(k).permutation(len(it["responses"]))
        text, truthful = teacher_reply(it, perm, rng, cfg)
        parsed = parse_scores(text, len(perm), MULTI.low, MULTI.high)
        assert parsed.ok, text
        ok = is_correct(unshuffle(parsed.scores, perm), it["rewards"])
        if truthful:
            assert ok  # built on the true result, the teacher is always right
        right.append(ok)
        truthful_count += truthful
    return float(np.mean(right)), truthful_count / count


def test_teacher_replies_parse_and_are_right_at_the_set_rate():
    acc0, t0 = _teacher_accuracy(0.0)
    acc25, t25 = _teacher_accuracy(0.25)
    acc100, t100 = _teacher_accuracy(1.0)
    assert (t0, t100) == (1.0, 0.0) and abs(t25 - 0.75) < 0.06
    # A miscomputing teacher is right only when its random low scores happen to favour the right
    # response, so accuracy falls with the error rate.
    assert acc0 == 1.0 > acc25 >= t25 > acc100


def test_single_format_teacher():
    rng = random.Random(5)
    it = make_item(rng, TaskConfig(teacher_error=0.0), n=1)
    text, _ = teacher_reply(it, [0], rng, TaskConfig(teacher_error=0.0), style="single")
    assert parse_scores(text, 1, SINGLE.low, SINGLE.high).scores == (it["rewards"][0],)


def test_judge_format_teacher_names_the_response_its_result_matches():
    cfg = TaskConfig(teacher_error=0.0)
    rng = random.Random(7)
    for k, it in enumerate(make_items(50, seed=7, cfg=cfg)):
        perm = np.random.default_rng(k).permutation(len(it["responses"]))
        text, truthful = teacher_reply(it, perm, rng, cfg, style="judge")
        (best,) = parse_scores(text, 1, 1, len(perm), marker=JUDGE.marker).scores
        assert truthful and it["rewards"][perm[best - 1]] == 1
    with pytest.raises(ValueError, match="style"):
        teacher_reply(it, perm, rng, cfg, style="pairwise")


def test_misconceptions_are_fixed_wrong_beliefs_used_at_their_rate():
    cfg = TaskConfig(max_operand=5, misconceived=0.5, misconception_rate=0.6)
    beliefs = misconceptions(cfg, seed=4)
    assert beliefs == misconceptions(cfg, seed=4) and beliefs != misconceptions(cfg, seed=5)
    assert len(beliefs) == round(0.5 * len(all_queries(cfg)))
    assert all(wrong != OPS[op](a, b) for (a, op, b), wrong in beliefs.items())
    assert misconceptions(TaskConfig(max_operand=5), seed=4) == {}
    rng = random.Random(0)
    used = []
    for k, it in enumerate(make_items(600, seed=9, cfg=cfg)):
        wrong = beliefs.get(tuple(it["parts"]))
        if wrong is None:
            continue
        perm = np.random.default_rng(k).permutation(len(it["responses"]))
        text, truthful = teacher_reply(it, perm, rng, cfg, misconception=wrong)
        a, op, b = it["parts"]
        used.append(f"Analysis: {a} {op} {b} = {wrong}." in text)
        assert not (truthful and used[-1])
    assert abs(np.mean(used) - 0.6) < 0.08
    with pytest.raises(ValueError, match="misconceived"):
        TaskConfig(misconceived=1.5)
