"""GRM score parsing, Eq. 10, shuffling, voting, meta filtering and templates."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grm_jax.rewards.grm import (JUDGE, MULTI, SINGLE, load_template, meta_verdict, render, render_meta,
                                 split_conversation)
from grm_jax.rewards.parse import Parsed, parse_scores
from grm_jax.rewards.voting import choose, is_correct, meta_keep, permutation, unshuffle, vote

scores_lists = st.lists(st.integers(1, 10), min_size=1, max_size=8)
spaces = st.text(" \t\n\u00a0\u2003", max_size=3)
noise = st.text(st.characters(blacklist_characters="\\", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(scores=scores_lists, pad=spaces, before=noise)
def test_round_trip_of_any_well_formed_reply(scores, pad, before):
    body = ",".join(f"{pad}{s}{pad}" for s in scores)
    text = f"Specific Criteria: {before}\nAnalysis: ...\nScores: \\boxed{{{body}}}"
    assert parse_scores(text, len(scores)) == Parsed(tuple(scores))


@settings(max_examples=100, deadline=None)
@given(scores=scores_lists, decoy=scores_lists)
def test_boxes_inside_the_analysis_are_ignored(scores, decoy):
    decoy_box = "\\boxed{" + ", ".join(map(str, decoy)) + "}"
    text = (f"Analysis: response 1 would get {decoy_box} under a lenient reading.\n"
            f"Scores: \\boxed{{{', '.join(map(str, scores))}}}")
    assert parse_scores(text, len(scores)).scores == tuple(scores)


@settings(max_examples=100, deadline=None)
@given(scores=scores_lists, extra=st.integers(1, 3))
def test_wrong_count(scores, extra):
    text = "Scores: \\boxed{" + ", ".join(map(str, scores)) + "}"
    assert parse_scores(text, len(scores) + extra).reason == "wrong_count"


@settings(max_examples=100, deadline=None)
@given(good=scores_lists, bad=st.integers().filter(lambda v: not 1 <= v <= 10))
def test_out_of_range_including_negative(good, bad):
    text = "Scores: \\boxed{" + ", ".join(map(str, good + [bad])) + "}"
    assert parse_scores(text, len(good) + 1).reason == "out_of_range"


@pytest.mark.parametrize("text, n, reason", [
    ("Scores: 7, 3", 2, "no_box"),
    ("", 1, "no_box"),
    ("Scores: \\boxed{7, 3} and \\boxed{2, 9}", 2, "several_boxes"),
    ("no marker \\boxed{7} \\boxed{3}", 1, "several_boxes"),
    ("Scores: \\boxed{7, 3", 2, "truncated"),
    ("Scores: \\boxed{7.5, 3}", 2, "non_integer"),
    ("Scores: \\boxed{seven, 3}", 2, "non_integer"),
    ("Scores: \\boxed{\uff17, 3}", 2, "non_integer"),      # fullwidth 7
    ("Scores: \\boxed{\u0667, 3}", 2, "non_integer"),      # Arabic-Indic 7
    ("Scores: \\boxed{{7}, 3}", 2, "non_integer"),         # nested braces
    ("Scores: \\boxed{\\text{7}, 3}", 2, "non_integer"),
    ("Scores: \\boxed{7,, 3}", 2, "wrong_count"),
    ("Scores: \\boxed{0, 3}", 2, "out_of_range"),
    ("Scores: \\boxed{-3, 3}", 2, "out_of_range"),
    ("Scores: \\boxed{11, 3}", 2, "out_of_range"),
    ("Specific Criteria: clarity (weight 0.5), Analysis: the first resp", 2, "no_box"),
])
def test_failure_reasons(text, n, reason):
    assert parse_scores(text, n) == Parsed(None, reason)


def test_truncated_by_length_and_single_and_judge_formats():
    assert parse_scores("Analysis: the first response is", 2, truncated=True).reason == "truncated"
    assert parse_scores("Scores: \\boxed{7, 3}", 2, truncated=True).scores == (7, 3)  # box complete
    assert parse_scores("Scores: \\boxed{1}", 1, SINGLE.low, SINGLE.high).scores == (1,)
    assert parse_scores("Scores: \\boxed{2}", 1, SINGLE.low, SINGLE.high).reason == "out_of_range"
    text = "Analysis: \\boxed{1} looks fine.\nBest: \\boxed{2}"
    assert parse_scores(text, 1, 1, 2, marker=JUDGE.marker).scores == (2,)


def test_eq10_strict_unique_maximum_and_n1():
    assert is_correct([9, 3, 5], [1, 0, 0])
    assert not is_correct([9, 9, 5], [1, 0, 0])       # a tie at the top is wrong
    assert not is_correct([3, 9, 5], [1, 0, 0])
    assert is_correct([2, 8], [0.1, 0.7])
    assert not is_correct(None, [1, 0])                # a parse failure is wrong
    assert is_correct([1], [1]) and not is_correct([0], [1]) and is_correct([0], [0])
    with pytest.raises(ValueError, match="unique maximum"):
        is_correct([9, 3], [1, 1])
    with pytest.raises(ValueError, match="2 scores for 3"):
        is_correct([9, 3], [1, 0, 0])


@settings(max_examples=100, deadline=None)
@given(scores=st.lists(st.integers(1, 10), min_size=2, max_size=8), seed=st.integers(0, 2**32 - 1))
def test_shuffle_then_unshuffle_is_identity(scores, seed):
    perm = permutation(np.random.default_rng(seed), len(scores))
    shown = [scores[i] for i in perm]               # what the model scores at each position
    assert unshuffle(shown, perm) == scores


def test_voting_sum_mean_majority_skip_failures():
    samples = [(7, 3, 5), None, (6, 8, 5), (9, 2, 9)]
    np.testing.assert_array_equal(vote(samples, 3, "sum"), [22, 13, 19])
    np.testing.assert_allclose(vote(samples, 3, "mean"), [22 / 3, 13 / 3, 19 / 3])
    np.testing.assert_array_equal(vote(samples, 3, "majority"), [1, 1, 0])  # (9,2,9) has no sole top
    np.testing.assert_array_equal(vote([None, None], 2), [0, 0])
    with pytest.raises(ValueError, match="vote must be"):
        vote(samples, 3, "max")


def test_ties_are_broken_by_a_seeded_random_choice():
    picks = {choose([5, 9, 9, 1], np.random.default_rng(s)) for s in range(50)}
    assert picks == {1, 2}
    assert choose([5, 9, 9, 1], np.random.default_rng(3)) == choose([5, 9, 9, 1], np.random.default_rng(3))
    assert choose([5, 9, 2], np.random.default_rng(0)) == 1


def test_meta_filter_keeps_the_top_k_meta():
    np.testing.assert_array_equal(meta_keep([0.1, 0.9, 0.5, 0.7], 2), [1, 3])
    samples = [(9, 1), (1, 9), (2, 8), (8, 2)]
    keep = meta_keep([0.9, 0.1, 0.2, 0.8], 2)
    np.testing.assert_array_equal(vote([samples[i] for i in keep], 2), [17, 3])
    with pytest.raises(ValueError, match="k_meta"):
        meta_keep([0.1, 0.2], 3)


def test_meta_verdict_names_the_top_responses_as_the_prompt_numbers_them():
    responses = ["2 + 2 = 4.", "2 + 2 = 5.", "2 + 2 = 3."]
    # shown order [orig 2, orig 0, orig 1]; scores are in the original order
    assert meta_verdict(responses, [9, 2, 1], [2, 0, 1]) == "Highest score: Response 2: 2 + 2 = 4."
    assert meta_verdict(responses, [1, 8, 8], [2, 0, 1]) == \
        "Highest score: Response 3: 2 + 2 = 5. Response 1: 2 + 2 = 3."  # a tie names both
    assert meta_verdict(responses, None, [0, 1, 2]) == "Highest score: none (the scores do not parse)."
    template = load_template("meta_rm")
    text = render_meta(template, "PROMPT", "JUDGMENT", meta_verdict(responses, [1, 8, 8], [0, 1, 2]))
    assert text.index("PROMPT") < text.index("JUDGMENT") < text.index("#### Question ####") < \
        text.index("#### Verdict ####\nHighest score: Response 2: 2 + 2 = 5. Response 3: 2 + 2 = 3.")
    assert "Verdict" not in render_meta(template, "PROMPT", "JUDGMENT")  # no verdict, no section


def test_templates_render_the_published_layout():
    text = render(load_template(MULTI.template),
                  [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                   {"role": "user", "content": "Q2"}], ["first", "second", "third"])
    for part in ("#### Conversation Context ####", "#### Responses to be Scored ####",
                 "#### Output Format Requirements ####", "[The Begin of Response 3]\nthird\n[The End of Response 3]",
                 "Specific Criteria:", "Analysis:", "Scores: \\boxed{x, x, x}", "User: Q1\nAssistant: A1\nUser: Q2"):
        assert part in text
    assert text.index("Response 1]\nfirst") < text.index("Response 2]\nsecond")
    single = render(load_template(SINGLE.template), "Is 2+2=4?", ["yes"])
    assert "\\boxed{x}" in single and "0 or 1" in single
    assert "\\boxed{i}" in render(load_template(JUDGE.template), "q", ["a", "b"])
    assert split_conversation("plain") == ([], "plain")
    compact = render(load_template("grm_compact"), "q", ["a", "b"])  # the same layout, few words
    for part in ("#### Conversation Context ####", "[The Begin of Response 2]\nb\n[The End of Response 2]",
                 "#### Output Format Requirements ####", "Scores: \\boxed{x, x}"):
        assert part in compact


def test_user_template_file_and_errors(tmp_path):
    (tmp_path / "mine.jinja").write_text("Q={{ query }} N={{ responses | length }}")
    assert render(load_template(tmp_path / "mine.jinja"), "hi", ["a", "b"]) == "Q=hi N=2"
    (tmp_path / "bad.jinja").write_text("{% for x in %}")
    with pytest.raises(ValueError, match="bad.jinja: line 1"):
        load_template(tmp_path / "bad.jinja")
    with pytest.raises(FileNotFoundError, match="no template 'nope'"):
        load_template("nope")
