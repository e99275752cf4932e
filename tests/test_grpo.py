"""GRPO end to end on a tiny model, its batch layout, and the rule rewards."""

import json

import numpy as np
import pytest

from grm_jax.config import load_config
from grm_jax.rewards.grm import MULTI
from grm_jax.rewards.rules import final_answer, grm_rule_reward, math_answer_reward, token_rate_reward
from grm_jax.sampling import Samples
from grm_jax.train.grpo import GRPOConfig, build_batch, build_shared_batch
from grm_jax.train.grpo_run import run_grpo
from grm_jax.train.optim import OptimConfig


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


def test_shared_batch_holds_each_prompt_once_left_padded():
    s = Samples(tokens=np.asarray([[7, 8, 2], [9, 2, 0], [4, 2, 0], [5, 6, 2]]), lengths=np.asarray([3, 2, 2, 3]),
                logprobs=np.asarray([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0], [-6.0, -7.0, 0.0], [-8.0, -9.0, -1.5]],
                                    np.float32), stopped=np.asarray([True, True, True, True]))
    b = build_shared_batch([[1, 5, 6], [3, 4]], s, group_size=2)
    assert b["prompt_tokens"].shape == (2, 16) and b["tokens"].shape == (4, 16)
    np.testing.assert_array_equal(b["prompt_tokens"][1, -3:], [0, 3, 4])
    np.testing.assert_array_equal(b["prompt_positions"][1, -3:], [-1, 0, 1])
    np.testing.assert_array_equal(b["prompt_positions"][0, -3:], [0, 1, 2])
    np.testing.assert_array_equal(b["tokens"][1, :3], [9, 2, 0])
    np.testing.assert_array_equal(b["positions"][1, :3], [3, 4, -1])   # continuing prompt 0 (3 tokens)
    np.testing.assert_array_equal(b["positions"][3, :4], [2, 3, 4, -1])  # continuing prompt 1 (2 tokens)
    np.testing.assert_array_equal(b["mask"][2, :3], [1, 1, 0])
    np.testing.assert_array_equal(b["old_logp"][3, :3], [-8.0, -9.0, -1.5])
    with pytest.raises(ValueError, match="2 per prompt"):
        build_shared_batch([[1, 5, 6]], s, group_size=2)


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_shared_prompt_logprobs_equal_prompt_plus_response_rows(family, hf_models):
    """Each prompt run once, its G responses over a copy of its KV cache: the log-probs and their
    gradients of the G rows prompt + response (Gemma 3: sliding windows of 8 across the prompt's
    end), scanned and unrolled."""
    import jax
    import jax.numpy as jnp

    from grm_jax.loading import load_any
    from grm_jax.models.logprobs import shared_prompt_logprobs, token_logprobs

    cfg, params, _ = load_any(hf_models(family)[0], progress=False)
    rng = np.random.default_rng(1)
    P, G = 3, 4
    prompts = [list(rng.integers(3, cfg.vocab_size, n)) for n in (5, 11, 8)]
    responses = [rng.integers(3, cfg.vocab_size, n) for n in rng.integers(1, 10, P * G)]
    s = Samples(tokens=np.stack([np.pad(r, (0, 10 - len(r))) for r in responses]),
                lengths=np.asarray([len(r) for r in responses]),
                logprobs=np.zeros((P * G, 10), np.float32), stopped=np.ones(P * G, bool))
    rows, shared = build_batch(prompts, s, G), build_shared_batch(prompts, s, G)
    weights = rng.normal(size=shared["tokens"].shape).astype(np.float32) * shared["mask"]
    at = [(r, len(prompts[r // G]) + j, j) for r in range(P * G) for j in range(len(responses[r]))]
    r_i, t_i, j_i = (np.asarray(x) for x in zip(*at))

    for unrolled in (False, True):
        def of_rows(p):
            lp = token_logprobs(p, cfg, rows["tokens"], rows["positions"], unrolled=unrolled)
            return (lp[r_i, t_i] * weights[r_i, j_i]).sum(), lp[r_i, t_i]

        def of_shared(p):
            lp = shared_prompt_logprobs(p, cfg, shared["prompt_tokens"], shared["prompt_positions"],
                                        shared["tokens"], shared["positions"], G, unrolled=unrolled)
            return (lp * weights).sum(), lp[r_i, j_i]

        (_, want), g_want = jax.jit(jax.value_and_grad(of_rows, has_aux=True))(params)
        (_, got), g_got = jax.jit(jax.value_and_grad(of_shared, has_aux=True))(params)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
            scale = float(jnp.abs(b).max()) + 1e-6
            assert float(jnp.abs(a - b).max()) <= 1e-5 * max(1.0, scale), (family, unrolled)


def test_grpo_with_shared_prompts_takes_the_steps_of_prompt_plus_response_rows(tmp_path, chat_model):
    """`shared_prompt` changes how the log-probs are computed, not what they are: one step from the
    same state draws the same samples and gives the same loss, gradient norm and entropy as the
    default layout, and the reference forward (the KL of step 2) agrees too."""
    data = _prompts(tmp_path / "p.jsonl")
    args = ("reward=token_rate", "reward_target=160", "steps=2", "optim.lr=1e-3", "max_new_tokens=12")
    _, rows = run_grpo(_cfg(chat_model, data, tmp_path / "rows", *args), progress=False, log=lambda *_: None)
    _, shared = run_grpo(_cfg(chat_model, data, tmp_path / "shared", *args, "shared_prompt=true"), progress=False,
                         log=lambda *_: None)
    for a, b in zip(rows, shared):
        assert a["reward_mean"] == b["reward_mean"] and a["response_length"] == b["response_length"]
        for key in ("loss", "grad_norm", "entropy_estimate", "kl", "ratio_mean"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-7, err_msg=key)
    assert shared[1]["kl"] > 0


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
    with pytest.raises(ValueError, match="sequence_sum"):
        GRPOConfig(model="m", data="d", out="o", shared_prompt=True, aggregation="sequence_sum")
    with pytest.raises(ValueError, match="prompts_per_step must split"):
        GRPOConfig(model="m", data="d", out="o", shared_prompt=True, prompts_per_step=3, group_size=4,
                   optim=OptimConfig(grad_accum=4))


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
