"""GRPO end to end on a tiny model, its batch layout, and the rule rewards."""

import json

import numpy as np
import pytest

from grm_jax.config import load_config
from grm_jax.rewards.grm import MULTI
from grm_jax.rewards.rules import final_answer, grm_rule_reward, math_answer_reward, token_rate_reward
from grm_jax.sampling import Samples
from grm_jax.train.grpo import GRPOConfig, build_batch
from grm_jax.train.grpo_run import run_grpo


def _prompts(path, n=8, answer=False):
    rows = [{"prompt": f"Count to {i}.", **({"answer": str(i)} if answer else {})} for i in range(n)]
    rows.append({"messages": []})  # bad: reported and skipped
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(model, data, out, *extra):
    return load_config(GRPOConfig, None, [f"model={model}", f"data={data}", f"out={out}", "prompts_per_step=4",
                                          "group_size=4", "max_new_tokens=16", "save_every=100", *extra])


def test_grpo_raises_the_mean_of_a_toy_rule_reward(tmp_path, chat_model):
    """A real learning signal: the reward is the fraction of response tokens with ids below 160
    (half the vocabulary); nothing is mocked."""
    logs = []
    cfg = _cfg(chat_model, _prompts(tmp_path / "p.jsonl"), tmp_path / "run", "reward=token_rate",
               "reward_target=160", "steps=12", "beta=0.01", "optim.lr=1e-2", "optim.schedule=constant")
    summary, history = run_grpo(cfg, progress=False, log=logs.append)
    rewards = [h["reward_mean"] for h in history]
    assert summary["status"] == "done" and len(history) == 12
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards
    assert any("row 9" in m for m in logs)  # the bad row was reported
    for h in history:  # one inner iteration: the sampler's log-probs are the trainer's (ρ = 1)
        assert abs(h["ratio_mean"] - 1.0) < 1e-4 and h["clip_fraction"] == 0.0
        for key in ("kl", "entropy_estimate", "response_length", "tokens_per_s", "update_mfu",
                    "sampling_s", "reward_s", "reference_s", "update_s"):
            assert np.isfinite(h[key])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 13))
    assert (tmp_path / "run" / "final" / "model_config.json").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_grpo_on_the_endogenous_reward_of_the_frozen_initial_policy(tmp_path, chat_model):
    cfg = _cfg(chat_model, _prompts(tmp_path / "p.jsonl"), tmp_path / "run", "reward=endogenous", "steps=2",
               "inner_iters=2", "optim.lr=1e-3")
    summary, history = run_grpo(cfg, progress=False, log=lambda *_: None)
    assert summary["status"] == "done" and len(history) == 2
    assert all(np.isfinite(h["reward_mean"]) and h["reward_std"] > 0 for h in history)


def test_batch_aligns_old_logprobs_with_the_response_tokens():
    s = Samples(tokens=np.asarray([[7, 8, 2], [9, 2, 0]]), lengths=np.asarray([3, 2]),
                logprobs=np.asarray([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]], np.float32),
                stopped=np.asarray([True, True]))
    b = build_batch([[1, 5, 6]], s, group_size=2)
    assert b["tokens"].shape[1] == 16
    np.testing.assert_array_equal(b["tokens"][0, :6], [1, 5, 6, 7, 8, 2])
    np.testing.assert_array_equal(b["mask"][1, :6], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(b["old_logp"][0, :6], [0, 0, 0, -1, -2, -3])
    np.testing.assert_array_equal(b["positions"][1, :6], [0, 1, 2, 3, 4, -1])


def test_rule_rewards():
    assert math_answer_reward("so the answer is \\boxed{1/2}", "0.5") == 1.0
    assert math_answer_reward("2 + 3 = 5", "5") == 1.0 and math_answer_reward("it is 1,000", "1000") == 1.0
    assert math_answer_reward("no number here", "5") == -1.0 and math_answer_reward("\\boxed{6}", "5") == -1.0
    assert math_answer_reward("\\boxed{x + 1}", "x+1") == 1.0
    assert final_answer("\\boxed{3} then \\boxed{4}") == "4"
    # The shown order is perm = (2, 0, 1): shown response 1 is original 2, and so on.
    assert grm_rule_reward("Scores: \\boxed{3, 9, 2}", [1, 0, 0], (2, 0, 1), MULTI) == 1.0
    assert grm_rule_reward("Scores: \\boxed{9, 3, 2}", [1, 0, 0], (2, 0, 1), MULTI) == -1.0
    assert grm_rule_reward("Scores: \\boxed{9, 9, 2}", [0, 1, 0], (0, 1, 2), MULTI) == -1.0  # tie at the top
    assert grm_rule_reward("Analysis only", [1, 0], (0, 1), MULTI) == -1.0
    assert token_rate_reward([1, 200, 3, 150], 160) == 0.75 and token_rate_reward([], 5) == 0.0


def test_bad_grpo_configs():
    with pytest.raises(ValueError, match="reward must be"):
        GRPOConfig(model="m", data="d", out="o", reward="bleu")
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(model="m", data="d", out="o", group_size=1)


def test_grpo_on_grm_items_with_the_eq10_rule(tmp_path, grm_model):
    items = [{"prompt": f"What is {i} + {i}?", "responses": [f"{2 * i}", f"{2 * i + 1}"], "rewards": [1, 0]}
             for i in range(4)]
    items.append({"prompt": "no truth", "responses": ["a", "b"]})  # no rewards: reported, skipped
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in items))
    logs = []
    cfg = _cfg(grm_model, data, tmp_path / "run", "reward=grm", "steps=1", "max_new_tokens=8",
               "max_prompt_length=2048", "rollouts=true")
    summary, history = run_grpo(cfg, progress=False, log=logs.append)
    assert summary["status"] == "done" and any("row 5" in m and "rewards" in m for m in logs)
    # Noise replies never parse: every reward is -1, every group all-equal, so no advantage.
    assert history[0]["reward_mean"] == -1.0 and history[0]["accuracy"] == 0.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["row"] for r in rows} <= {1, 2, 3, 4}
    assert all(r["reward"] == -1.0 and sorted(r["permutation"]) == [0, 1] for r in rows)


def test_grpo_resume_is_exact(tmp_path, chat_model):
    import jax

    from grm_jax.train.model_checkpoint import load_model

    data = _prompts(tmp_path / "p.jsonl")
    args = ("reward=token_rate", "reward_target=160", "steps=4", "optim.lr=1e-2", "max_new_tokens=8",
            "rollouts=true")
    run_grpo(_cfg(chat_model, data, tmp_path / "a", *args), progress=False, log=lambda *_: None)
    run_grpo(_cfg(chat_model, data, tmp_path / "b", *args), progress=False, stop_after=2, log=lambda *_: None)
    with (tmp_path / "b" / "rollouts.jsonl").open("a") as f:  # what a run killed after its checkpoint leaves
        f.write(json.dumps({"step": 3, "row": 1, "text": "from the killed run", "reward": 0.0}) + "\n")
    run_grpo(_cfg(chat_model, data, tmp_path / "b", *args), progress=False, log=lambda *_: None)
    for x, y in zip(jax.tree.leaves(load_model(tmp_path / "a" / "final")[1]),
                    jax.tree.leaves(load_model(tmp_path / "b" / "final")[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ra = [json.loads(x)["reward_mean"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x)["reward_mean"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert ra == rb and len(ra) == 4
    # rollouts.jsonl: every sample of every step once (the killed run's row dropped on resume),
    # each step's rewards averaging to its metrics row
    text = (tmp_path / "a" / "rollouts.jsonl").read_text()
    assert (tmp_path / "b" / "rollouts.jsonl").read_text() == text
    rows = [json.loads(x) for x in text.splitlines()]
    assert len(rows) == 4 * 4 * 4 and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    for step, mean in enumerate(ra, 1):
        mine = [r for r in rows if r["step"] == step]
        assert sorted(r["sample"] for r in mine) == sorted(list(range(4)) * 4)
        assert np.isclose(np.mean([r["reward"] for r in mine]), mean, atol=1e-6)
        assert all(r["finish"] in ("stop", "length") and 1 <= r["row"] <= 8 for r in mine)


def test_forwards_in_microbatches_equal_one_pass(chat_model):
    """GRPO's reference log-probs over the whole batch, run in 4 microbatches (optim.grad_accum)."""
    import jax
    import jax.numpy as jnp

    from grm_jax.loading import load_any
    from grm_jax.models.logprobs import token_logprobs
    from grm_jax.train.grpo_run import in_microbatches

    cfg, params, _ = load_any(chat_model, progress=False)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (8, 20)))
    positions = jnp.broadcast_to(jnp.arange(20), (8, 20))

    def fn(p, t, pos):
        return token_logprobs(p, cfg, t, pos)

    whole = jax.jit(fn)(params, tokens, positions)
    parts = jax.jit(in_microbatches(fn, 4))(params, tokens, positions)
    assert parts.shape == whole.shape
    np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=1e-5, atol=1e-5)
